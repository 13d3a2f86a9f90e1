"""train.profile_start / profile_steps: a profiler trace of exactly those training steps."""

import glob

import jax

from predvdm_jax.training import loop

from .tiny_setup import StreamIterator, init_fn, make_config, make_loss_fn


def test_the_trace_covers_the_configured_steps(tmp_path):
    config = make_config(num_steps=6, save_every=6, log_every=6)
    config.train.profile_start, config.train.profile_steps = 3, 2
    stream = StreamIterator(config.seed, config.data.batch_size)
    loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(), stream)

    (trace,) = glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)
    steps, calls = {}, []
    for plane in jax.profiler.ProfileData.from_file(trace).planes:
        for line in plane.lines:
            for event in line.events:
                span = (event.start_ns, event.start_ns + event.duration_ns)
                if event.name == "train":
                    steps[dict(event.stats)["step_num"]] = span
                if event.name == "PjitFunction(step)":  # a call of the jitted train step
                    calls.append(span)
    assert sorted(steps) == [3, 4]
    for start, end in steps.values():  # each step's call is inside its annotation
        assert any(start <= s and e <= end for s, e in calls)
    assert all(any(lo <= s and e <= hi for lo, hi in steps.values()) for s, e in calls)

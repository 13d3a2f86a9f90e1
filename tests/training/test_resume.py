"""Resume after SIGKILL equals an uninterrupted run; NaN stops without saving.

The killed run uses 1 device and the resumed run 4 simulated devices with
the hidden kernel split over fsdp, so the resume also restores a 1-device
checkpoint onto a different device count.
"""

import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from predvdm_jax.training import loop
from predvdm_jax.training.checkpoint import Checkpointer
from predvdm_jax.training.metric_writers import JSONL_NAME

from .tiny_setup import (
    train_in_process,
    StreamIterator,
    best_bundle_evaluation,
    init_fn,
    make_config,
    make_loss_fn,
    read_jsonl,
    run_subprocess,
)

TOTAL_STEPS, SAVE_EVERY = 8, 2


def finished_steps(checkpoint_dir):
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit())


def ldm_lr(n, peak, warm_up):
    return peak * ((1.0 - 1e-6) / warm_up * n + 1e-6 if n < warm_up else 1.0)


def test_resume_after_sigkill_on_other_device_count_equals_uninterrupted(tmp_path):
    config_args = dict(num_steps=TOTAL_STEPS, save_every=SAVE_EVERY, log_every=1)
    killed_dir = tmp_path / "killed"
    checkpoint_dir = killed_dir / "checkpoints"
    proc = run_subprocess(
        {
            "mode": "train",
            "config": config_args,
            "workdir": str(killed_dir),
            "out": str(tmp_path / "unused.npz"),
            "hang_after_step": 4,
        },
        wait=False,
    )
    try:
        straight_dir = tmp_path / "straight"  # runs while the subprocess starts up
        config = make_config(**config_args)
        expected = train_in_process(config, str(straight_dir))

        deadline = time.time() + 150
        while time.time() < deadline and not any(s >= 4 for s in finished_steps(checkpoint_dir)):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    survived = finished_steps(checkpoint_dir)
    assert survived[-1] == 4, f"unexpected checkpoints at the kill: {survived}"
    last_good = survived[-1]

    # A save killed half-way leaves a temporary directory: it must be ignored.
    fake_unfinished = checkpoint_dir / "100.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(checkpoint_dir / str(last_good), fake_unfinished)
    for marker in fake_unfinished.glob("commit_success*"):
        marker.unlink()
    assert Checkpointer(checkpoint_dir).latest_step() == last_good

    resumed = tmp_path / "resumed.npz"
    run_subprocess(
        {
            "mode": "train",
            "config": dict(config_args, data=1, fsdp=4),
            "workdir": str(killed_dir),
            "out": str(resumed),
        },
        devices=4,
    )

    got = np.load(resumed)
    assert int(got["_device_count"]) == 4
    assert str(got["_hidden_spec"]) == str(PartitionSpec(None, "fsdp"))
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)

    straight_log = read_jsonl(straight_dir / JSONL_NAME)
    resumed_log = read_jsonl(killed_dir / JSONL_NAME)
    assert [r["step"] for r in straight_log] == list(range(1, TOTAL_STEPS + 1))
    assert [r["step"] for r in resumed_log] == list(range(1, TOTAL_STEPS + 1))
    np.testing.assert_allclose(
        [r["loss"] for r in resumed_log], [r["loss"] for r in straight_log], rtol=1e-5
    )
    peak = config.optimizer.base_learning_rate * config.data.batch_size
    np.testing.assert_allclose(
        [r["lr"] for r in straight_log],
        [ldm_lr(s - 1, peak, config.optimizer.warmup_steps) for s in range(1, TOTAL_STEPS + 1)],
        rtol=1e-5,
    )


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = make_config(num_steps=8, save_every=2, log_every=3)
    assert Checkpointer(tmp_path / "checkpoints").restore_latest(None) is None
    stream = StreamIterator(config.seed, config.data.batch_size)
    with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at step 5;.*step 4"):
        loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(nan_at_step=5), stream)
    assert finished_steps(tmp_path / "checkpoints") == [2, 4]
    _, data_state = Checkpointer(tmp_path / "checkpoints").restore(4, _abstract_state(config))
    assert data_state == {"seed": config.seed, "position": 4}
    logged = read_jsonl(tmp_path / JSONL_NAME)
    assert [r["step"] for r in logged] == [3]
    assert all(np.isfinite(r["loss"]) for r in logged)


def test_weights_made_nan_by_a_finite_loss_step_are_not_saved(tmp_path):
    """Step 4's loss is finite but its gradients are NaN: the weights saved after it would be
    NaN, and step 4 is the save step, so no later loss would reveal it first."""
    config = make_config(num_steps=8, save_every=2, log_every=8)
    stream = StreamIterator(config.seed, config.data.batch_size)
    message = r"weights after step 4 are NaN or Inf \(its loss was finite\);.*step 2 in"
    with pytest.raises(loop.NonFiniteLossError, match=message):
        loop.train_loop(
            config, str(tmp_path), init_fn, make_loss_fn(nan_gradient_at_step=4), stream
        )
    assert finished_steps(tmp_path / "checkpoints") == [2]


def test_no_evaluation_runs_on_weights_made_nan_before_its_loss_is_checked(tmp_path):
    """Step 5's gradients are NaN and step 6 evaluates (keeping best bundles) before any log
    step checks a loss: the run stops there, and the best bundle of step 4 stays."""
    config = make_config(num_steps=8, save_every=8, log_every=4)
    stream = StreamIterator(config.seed, config.data.batch_size)
    message = r"(loss is nan at step 6|weights after step 6 are NaN or Inf)"
    with pytest.raises(loop.NonFiniteLossError, match=message):
        loop.train_loop(
            config,
            str(tmp_path),
            init_fn,
            make_loss_fn(nan_gradient_at_step=5),
            stream,
            evaluations=[best_bundle_evaluation(str(tmp_path))],
        )
    assert sorted(os.listdir(tmp_path / "best")) == ["step_00000004"]


def test_a_failed_background_save_stops_the_run_at_the_next_log_step(tmp_path, monkeypatch):
    """A save that fails after it started (a full disk) is named with its step, the last good
    checkpoint and the fix at the next log step, not at the next save."""
    from predvdm_jax.training import checkpoint

    config = make_config(num_steps=9, save_every=3, log_every=1)
    started = checkpoint.Checkpointer.save

    def failing_from_step_6(self, step, *args, **kwargs):
        if step < 6:
            return started(self, step, *args, **kwargs)
        self.wait_until_finished()
        self._writing = step  # started in the background, then the disk filled up

        def background_error():  # as Orbax reports it, on every call from then on
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(self._manager, "check_for_errors", background_error)
        monkeypatch.setattr(self._manager, "wait_until_finished", background_error)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", failing_from_step_6)
    stream = StreamIterator(config.seed, config.data.batch_size)
    message = (
        r"^checkpoint step 6 could not be written in .*checkpoints \(OSError: \[Errno 28\] No "
        r"space left on device\); step 3 is the last good checkpoint: free disk space or fix "
        r"the folder, then run the same command to resume$"
    )
    with pytest.raises(checkpoint.CheckpointWriteError, match=message):
        loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(), stream)
    assert [r["step"] for r in read_jsonl(tmp_path / JSONL_NAME)] == list(range(1, 7))


def _abstract_state(config):
    from predvdm_jax.mesh import make_mesh
    from predvdm_jax.training.optim import make_optimizer
    from predvdm_jax.training.train_state import abstract_train_state

    optimizer, _ = make_optimizer(config)
    abstract, _ = abstract_train_state(
        init_fn,
        optimizer,
        jax.random.PRNGKey(config.seed),
        make_mesh(),
        min_size=config.mesh.min_shard_size,
    )
    return abstract


def test_restoring_onto_other_parameter_shapes_is_one_clear_error(tmp_path):
    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.save(1, {"kernel": jax.numpy.zeros((3, 3, 4, 8))}, data_state={})
    checkpointer.wait_until_finished()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    ohwi = {"kernel": jax.ShapeDtypeStruct((8, 3, 3, 4), np.float32, sharding=device)}
    message = r"step 1 .* does not fit .*stored shape: \(3, 3, 4, 8\)\)\. .*start a new workdir\.$"
    with pytest.raises(ValueError, match=message):
        checkpointer.restore(1, ohwi)
    checkpointer.close()


def test_nan_loss_before_any_checkpoint_says_none_was_saved(tmp_path):
    config = make_config(num_steps=4, save_every=4, log_every=1)
    stream = StreamIterator(config.seed, config.data.batch_size)
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 2;.*no checkpoint was saved yet"):
        loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(nan_at_step=2), stream)


def test_fresh_start_drops_the_metrics_of_a_run_killed_before_its_first_save(tmp_path):
    with open(tmp_path / JSONL_NAME, "w") as f:
        f.writelines(f'{{"step": {step}, "loss": 9.0}}\n' for step in (2, 4, 6))
    train_in_process(make_config(num_steps=2, save_every=2, log_every=1), str(tmp_path))
    assert [r["step"] for r in read_jsonl(tmp_path / JSONL_NAME)] == [1, 2]


def test_resuming_below_the_checkpoint_step_says_so(tmp_path, caplog):
    train_in_process(make_config(num_steps=4, save_every=2), str(tmp_path))
    caplog.clear()
    train_in_process(make_config(num_steps=2, save_every=2), str(tmp_path))
    assert "already at step 4 (train.num_steps=2)" in caplog.text
    assert finished_steps(tmp_path / "checkpoints") == [2, 4]


def test_reading_a_missing_checkpoint_folder_does_not_create_it(tmp_path):
    missing = tmp_path / "nowhere" / "checkpoints"
    checkpointer = Checkpointer(missing)
    assert checkpointer.latest_step() is None
    checkpointer.close()
    assert not (tmp_path / "nowhere").exists()

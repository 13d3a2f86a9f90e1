"""SIGTERM or a first Ctrl-C saves the running step and stops; a rerun resumes to the same
result. A second Ctrl-C stops at once without saving.

In one process the loop's own handlers notice the signal; in two processes JAX's
preemption service must make both stop and save at one step, although only one of them
got the signal.
"""

import json
import os
import signal

import numpy as np
import pytest

from predvdm_jax.training import loop
from predvdm_jax.training.checkpoint import Checkpointer
from predvdm_jax.training.metric_writers import JSONL_NAME
from predvdm_jax.training.preemption import CTRL_C_LINE

from .test_resume import finished_steps
from .tiny_setup import (
    StreamIterator,
    flat_params,
    init_fn,
    make_config,
    make_loss_fn,
    read_jsonl,
    run_subprocess,
    run_two_processes,
    train_in_process,
)


def sigterm_at(step_to_signal):
    def hook(step, state, metrics):
        if step == step_to_signal:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def test_sigterm_saves_the_running_step_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
    config = make_config(num_steps=8, save_every=4, log_every=1)
    expected = train_in_process(config, str(tmp_path / "straight"))

    handler_before = signal.getsignal(signal.SIGTERM)
    workdir = tmp_path / "preempted"
    stream = StreamIterator(config.seed, config.data.batch_size)
    with pytest.raises(loop.TrainingPreempted, match=r"SIGTERM after step 5 of 8; saved it in "):
        loop.train_loop(
            config, str(workdir), init_fn, make_loss_fn(), stream, hooks=[sigterm_at(5)]
        )
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert finished_steps(workdir / "checkpoints") == [4, 5]

    state = loop.train_loop(
        config,
        str(workdir),
        init_fn,
        make_loss_fn(),
        StreamIterator(config.seed, config.data.batch_size),
    )
    for name, value in flat_params(state.params).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert [r["step"] for r in read_jsonl(workdir / JSONL_NAME)] == list(range(1, 9))


def test_sigterm_after_the_last_step_just_finishes(tmp_path):
    config = make_config(num_steps=3, save_every=2, log_every=1)
    stream = StreamIterator(config.seed, config.data.batch_size)
    loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(), stream, hooks=[sigterm_at(3)])
    assert finished_steps(tmp_path / "checkpoints") == [2, 3]


def _one_of_two_processes_signalled(tmp_path, **signal_at_step):
    """Two processes training 1000 steps, process 1 signalled at step 3
    (``sigterm_at_step`` / ``sigint_at_step``): their (returncode, output), and the one step
    they saved."""
    config_args = dict(num_steps=1000, save_every=2000, log_every=2000, data=1, fsdp=2)
    runs = run_two_processes(
        {
            "mode": "train",
            "config": config_args,
            "workdir": str(tmp_path),
            "out": str(tmp_path / "unused.npz"),
            **signal_at_step,
        }
    )
    saved = finished_steps(tmp_path / "checkpoints")
    assert len(saved) == 1 and 3 <= saved[0] < 1000, (saved, runs[1][1][-4000:])
    return runs, saved[0]


def test_sigterm_to_one_of_two_processes_stops_both_at_one_saved_step(tmp_path):
    runs, step = _one_of_two_processes_signalled(tmp_path, sigterm_at_step={"1": 3})
    for returncode, output in runs:
        assert returncode == loop.TrainingPreempted.exit_code, output[-4000:]
    for _, output in runs:
        assert f"after step {step} of 1000" in output, output[-2000:]
    data_item = json.loads((tmp_path / "checkpoints" / str(step) / "data" / "metadata").read_text())
    assert data_item["states"] == {
        "0": {"seed": 0, "position": step},
        "1": {"seed": 0, "position": step},
    }
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == step


def test_ctrl_c_saves_the_running_step_and_exits_130_without_a_traceback(tmp_path):
    config_args = dict(num_steps=1000, save_every=2000, log_every=1)
    proc = run_subprocess(
        {
            "mode": "train",
            "config": config_args,
            "workdir": str(tmp_path),
            "out": str(tmp_path / "unused.npz"),
            "sigint_at_step": {"0": [3]},
        },
        wait=False,
    )
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output[-4000:]
    assert output.count(CTRL_C_LINE) == 1, output[-4000:]
    assert "preempted: stopped by Ctrl-C (SIGINT) after step 3 of 1000; saved it in " in output
    assert "Traceback" not in output, output[-4000:]
    assert finished_steps(tmp_path / "checkpoints") == [3]
    assert [r["step"] for r in read_jsonl(tmp_path / JSONL_NAME)] == [1, 2, 3]


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, capfd):
    def ctrl_c_twice_at(step, state, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    config = make_config(num_steps=8, save_every=4, log_every=1)
    stream = StreamIterator(config.seed, config.data.batch_size)
    with pytest.raises(KeyboardInterrupt):
        loop.train_loop(
            config, str(tmp_path), init_fn, make_loss_fn(), stream, hooks=[ctrl_c_twice_at]
        )
    assert capfd.readouterr().err.count(CTRL_C_LINE) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert finished_steps(tmp_path / "checkpoints") == []


def test_ctrl_c_to_one_of_two_processes_stops_both_at_one_saved_step(tmp_path):
    runs, step = _one_of_two_processes_signalled(tmp_path, sigint_at_step={"1": [3]})
    (code_0, output_0), (code_1, output_1) = runs
    assert (code_0, code_1) == (143, 130), output_1[-4000:]
    assert CTRL_C_LINE not in output_0 and output_1.count(CTRL_C_LINE) == 1, output_1[-4000:]
    assert f"stopped by Ctrl-C (SIGINT) after step {step} of 1000" in output_1
    assert f"(SIGTERM or Ctrl-C to one of the processes) after step {step} of" in output_0

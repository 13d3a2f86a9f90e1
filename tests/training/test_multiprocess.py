"""Two JAX processes on this machine (1 CPU device each, gloo collectives, mesh
data=1 x fsdp=2 so parameters are split across the processes) train like one
process: each feeds its half of every global batch in 2 accumulated microbatches (two
processes in one pass: the two-slices test). The best-model bundle (``train.keep_best``)
gathers the split EMA weights onto process 0, which writes the same bundle as one process.

The single-process reference runs first, so the two processes do not compete
with it for the CPU: gloo gives up on a peer that lags by more than its
connect timeout."""

import json
import os

import jax
import numpy as np
import pytest

from predvdm_jax.interop.bundle import read_bundle_files
from predvdm_jax.training.checkpoint import Checkpointer
from predvdm_jax.training.metric_writers import JSONL_NAME

from .test_resume import _abstract_state
from .tiny_setup import (
    best_bundle_evaluation,
    train_in_process,
    make_config,
    read_jsonl,
    run_two_processes,
)


def test_two_process_run_matches_single_process(tmp_path):
    config_args = dict(num_steps=4, save_every=4, log_every=2, data=1, fsdp=2, grad_accum_steps=2)
    single_dir = tmp_path / "single"
    single_args = dict(config_args, data=1, fsdp=1)
    config = make_config(**single_args)
    expected = train_in_process(config, str(single_dir), [best_bundle_evaluation(str(single_dir))])

    multi_dir = tmp_path / "multi"
    out = tmp_path / "multi.npz"
    runs = run_two_processes(
        {
            "mode": "train",
            "config": config_args,
            "workdir": str(multi_dir),
            "out": str(out),
            "keep_best": True,
        }
    )
    for returncode, output in runs:
        assert returncode == 0, output[-4000:]

    got = np.load(out)
    assert int(got["_device_count"]) == 2
    assert str(got["_hidden_spec"]) == str(jax.sharding.PartitionSpec(None, "fsdp"))
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
    logs = [read_jsonl(d / JSONL_NAME) for d in (multi_dir, single_dir)]
    multi_log, single_log = ([r for r in log if "loss" in r] for log in logs)
    assert [r["step"] for r in multi_log] == [2, 4]
    np.testing.assert_allclose(
        [r["loss"] for r in multi_log], [r["loss"] for r in single_log], rtol=1e-5
    )

    data_item = json.loads((multi_dir / "checkpoints" / "4" / "data" / "metadata").read_text())
    assert data_item == {
        "process_count": 2,
        "states": {"0": {"seed": 0, "position": 4}, "1": {"seed": 0, "position": 4}},
    }
    best = [read_bundle_files(str(d / "best" / "step_00000004")) for d in (single_dir, multi_dir)]
    assert os.listdir(multi_dir / "best") == ["step_00000004"]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
        best[1].params,
        best[0].params,
    )
    assert [(r["step"], r["kept"]) for r in logs[0] if "kept" in r] == [(2, 1.0), (4, 1.0)]

    # Both loaders served 4 global batches: the checkpoint resumes in one process too.
    state, data_state = Checkpointer(multi_dir / "checkpoints").restore(4, _abstract_state(config))
    assert data_state == {"seed": 0, "position": 4}
    np.testing.assert_allclose(
        np.asarray(state.params["hidden"]["kernel"]), got["hidden/kernel"], rtol=1e-6
    )
    data_item["states"]["1"]["position"] = 3
    (multi_dir / "checkpoints" / "4" / "data" / "metadata").write_text(json.dumps(data_item))
    with pytest.raises(ValueError, match="differing data iterator states of 2 processes"):
        Checkpointer(multi_dir / "checkpoints").restore(4, _abstract_state(config))


def test_two_processes_as_two_slices_train_like_one_process(tmp_path):
    """``mesh.slices=2`` over two processes of two devices each (CPU devices carry
    ``slice_index`` 0, so each process is a slice): each fsdp row stays in one process."""
    config_args = dict(num_steps=2, save_every=2, log_every=1, data=2, fsdp=2, slices=2)
    expected = train_in_process(
        make_config(**dict(config_args, data=1, fsdp=1, slices=1)), str(tmp_path / "single")
    )
    out = tmp_path / "multi.npz"
    runs = run_two_processes(
        {
            "mode": "train",
            "config": config_args,
            "workdir": str(tmp_path / "multi"),
            "out": str(out),
        },
        devices=2,
    )
    for returncode, output in runs:
        assert returncode == 0, output[-4000:]
    got = np.load(out)
    np.testing.assert_array_equal(got["_mesh_processes"], [[0, 0], [1, 1]])
    assert str(got["_hidden_spec"]) == str(jax.sharding.PartitionSpec(None, "fsdp"))
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=2e-5, atol=2e-6, err_msg=name)

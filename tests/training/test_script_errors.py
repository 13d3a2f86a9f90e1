"""Script errors are one ``error:`` line: bad ``--config`` flags, a workdir of another model, VQ
params of another VQ, a NaN loss, an export over its own workdir; reading a missing workdir
leaves no trace."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predvdm_jax import config as config_lib
from predvdm_jax.data.hdf5 import write_split
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors
from predvdm_jax.training import checkpoint, loop, vq_trainer
from predvdm_jax.cli import one_line_errors

from .tiny_setup import REPO_ROOT

DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "digits_demo.py")
VQ_CONFIG = os.path.join(REPO_ROOT, "configs", "vq_digits_demo.py")


def _save_run(workdir, config):
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, checkpoint.CHECKPOINT_DIR), async_save=False
    )
    checkpointer.save(3, {"w": jnp.zeros(2)}, data_state={}, config=config)
    checkpointer.close()


def _with(config, **changes):
    changed = config.copy_and_resolve_references()
    for dotted, value in changes.items():
        *section, field = dotted.split("__")
        (changed[section[0]] if section else changed)[field] = value
    return changed


def test_a_checkpoint_of_another_model_is_refused_naming_the_fields(tmp_path):
    config = config_lib.load_config_file(DEMO_CONFIG)
    checkpoint.check_saved_config(str(tmp_path / "new"), config)  # no checkpoint: nothing to check
    assert not (tmp_path / "new").exists()
    _save_run(tmp_path, config)

    # Settings that leave the parameters as they are resume.
    checkpoint.check_saved_config(
        str(tmp_path), _with(config, train__num_steps=10, model__dtype="bfloat16")
    )
    other = _with(config, unet__channel_mult=(1, 2), model__mode="tc_attn")
    with pytest.raises(config_lib.ConfigError) as err:
        checkpoint.check_saved_config(str(tmp_path), other)
    message = str(err.value)
    assert (
        f"step 3) of another model: unet.channel_mult {list(config.unet.channel_mult)}" in message
    )
    assert (
        "in the checkpoint, [1, 2] now; model.mode 'tc' in the checkpoint, 'tc_attn' now" in message
    )
    assert "original config, or pass a new --workdir" in message

    # So are a model whose outputs or inputs mean something else.
    with pytest.raises(config_lib.ConfigError) as err:
        checkpoint.check_saved_config(
            str(tmp_path), _with(config, diffusion__parameterization="eps", scale_factor=0.25)
        )
    assert "scale_factor 1.0 in the checkpoint, 0.25 now" in str(err.value)
    assert "diffusion.parameterization 'x0' in the checkpoint, 'eps' now" in str(err.value)


def test_a_checkpoint_whose_saved_config_has_an_unknown_field_is_refused_naming_the_step(tmp_path):
    config = config_lib.load_config_file(DEMO_CONFIG)
    raw = checkpoint.config_to_json(config)
    raw["diffusion"]["parametrisation"] = "v"  # a field no version of the schema has
    _save_run(tmp_path, raw)
    directory = tmp_path / checkpoint.CHECKPOINT_DIR
    start = (
        f"the config saved with checkpoint step 3 in {directory} does not load (invalid config: "
        f"unknown config field 'diffusion.parametrisation' (check the spelling; known fields "
        f"here: "
    )
    with pytest.raises(config_lib.ConfigError) as err:
        checkpoint.check_saved_config(str(tmp_path), config)
    assert str(err.value).startswith(start)
    assert str(err.value).endswith(")); pass a new --workdir to start over.")
    with pytest.raises(config_lib.ConfigError) as err:
        checkpoint.load_train_state(str(tmp_path))
    assert str(err.value).startswith(start) and "\n" not in str(err.value)
    assert str(err.value).endswith(")); train a new run (scripts/train.py --workdir=<new folder>).")


def test_a_vq_checkpoint_with_the_discriminator_switched_is_refused(tmp_path):
    config = config_lib.load_config_file(VQ_CONFIG)  # discriminator off
    _save_run(tmp_path, config)

    def check(**changes):
        checkpoint.check_saved_config(
            str(tmp_path),
            _with(config, **changes),
            checkpoint.VQ_FIELDS,
            vq_trainer.DERIVED_FIELDS,
        )

    check(vq_train__disc_channels=8, vq_train__num_steps=5)  # no discriminator either way
    with pytest.raises(config_lib.ConfigError) as err:
        check(vq_train__disc_weight=0.8, vq__ch=64)
    message = str(err.value)
    assert "vq.ch 32 in the checkpoint, 64 now" in message
    assert (
        "the discriminator (vq_train.disc_weight > 0) 'off' in the checkpoint, "
        "'on (3 layers, 64 channels)' now" in message
    )

    on = _with(config, vq_train__disc_weight=0.8)
    _save_run(tmp_path / "on", on)
    checkpoint.check_saved_config(
        str(tmp_path / "on"),
        _with(on, vq_train__disc_weight=0.5),
        checkpoint.VQ_FIELDS,
        vq_trainer.DERIVED_FIELDS,
    )
    with pytest.raises(config_lib.ConfigError, match="'on .*' in the checkpoint, 'off' now"):
        checkpoint.check_saved_config(
            str(tmp_path / "on"), config, checkpoint.VQ_FIELDS, vq_trainer.DERIVED_FIELDS
        )


def test_a_checkpoint_of_other_parameter_shapes_is_one_line_naming_them(tmp_path):
    directory = str(tmp_path / checkpoint.CHECKPOINT_DIR)
    checkpointer = checkpoint.Checkpointer(directory, async_save=False)
    checkpointer.save(1, {"kernel": jnp.zeros((3, 3, 2, 4))}, data_state={})
    checkpointer.close()
    checkpointer = checkpoint.Checkpointer(directory, async_save=False)
    for shape in ((4, 3, 3, 2), (3, 3, 2, 8)):  # the kernel transposed; another width
        with pytest.raises(ValueError) as err:
            checkpointer.restore(1, {"kernel": jax.ShapeDtypeStruct(shape, jnp.float32)})
        message = str(err.value)
        assert message.startswith(
            f"checkpoint step 1 in {directory} does not fit this model's parameter shapes "
            f"(Requested shape: {shape} is not compatible with the stored shape: (3, 3, 2, 4))."
        )
        assert message.endswith(
            "Was it written with another config? Resume with the run's own config, or start a "
            "new workdir."
        )
        assert "\n" not in message and "OHWI" not in message
    checkpointer.close()


def _run(script, *args, env=None):
    command = [sys.executable, os.path.join(REPO_ROOT, "scripts", script), *args]
    env = None if env is None else {**os.environ, **env}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def test_bad_flags_and_a_workdir_of_another_model_are_one_error_line(tmp_path):
    workdir = f"--workdir={tmp_path}"
    assert _run("train.py", workdir, "--config=configs/nope.py") == (
        "error: config file 'configs/nope.py' not found; pass a file from configs/"
    )
    assert _run(
        "train.py", workdir, f"--config={DEMO_CONFIG}", "--config.unet.model_chanels=64"
    ) == (
        "error: --config.unet.model_chanels: unknown config field 'unet.model_chanels'; "
        "did you mean --config.unet.model_channels?"
    )
    # evaluate.py and sample.py take overrides of a saved config (parsed when defined).
    assert _run("sample.py", "--bundle=b", "--out=o", "--config.sampling.stepz=3") == (
        "error: --config.sampling.stepz: unknown config field 'sampling.stepz'; "
        "did you mean --config.sampling.steps?"
    )
    _save_run(tmp_path, config_lib.load_config_file(DEMO_CONFIG))
    line = _run("train.py", workdir, f"--config={DEMO_CONFIG}", "--config.unet.model_channels=64")
    assert line.startswith(f"error: {tmp_path} holds a checkpoint (step 3) of another model")
    assert "unet.model_channels" in line


def test_usage_mistakes_are_one_error_line_not_the_help(tmp_path):
    for script, args, want in (
        (
            "train.py",
            (f"--config={DEMO_CONFIG}", f"--workdir={tmp_path}", "configs/kth64.py"),
            "error: unexpected arguments ['configs/kth64.py']; this script takes only flags",
        ),
        ("evaluate.py", ("--bundle=b", "--workdir=w", "--out=o"), "error: pass exactly one of"),
    ):
        command = [sys.executable, os.path.join(REPO_ROOT, "scripts", script), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
        printed = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and not re.match(r"[IWE]\d{4} ", line)  # absl's log lines
        ]
        assert done.returncode == 1 and len(printed) == 1, printed
        assert printed[0].startswith(want)


def test_vq_params_of_another_vq_and_a_switched_discriminator_are_one_error_line(tmp_path):
    params = str(tmp_path / "vq.safetensors")
    save_params_safetensors(params, {"encoder": {"conv_in": {"kernel": np.zeros((3, 3, 3, 8))}}})
    write_split(str(tmp_path / "frames" / "train"), [np.zeros((3, 16, 16), np.uint8)])
    line = _run(
        "encode_dataset.py",
        f"--config={VQ_CONFIG}",
        f"--vq_params={params}",
        f"--src={tmp_path / 'frames'}",
        f"--out={tmp_path / 'latents'}",
    )
    assert line.startswith(f"error: VQ params {params!r} (config.vq) does not match the model: ")
    assert (
        "wrong shape (1): encoder/conv_in/kernel: expected (3, 3, 3, 32), got (3, 3, 3, 8)" in line
    )
    assert "missing (" in line

    _save_run(tmp_path / "run", config_lib.load_config_file(VQ_CONFIG))
    line = _run(
        "train_vq.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config={VQ_CONFIG}",
        "--config.vq_train.disc_weight=0.8",
    )
    assert line.startswith(f"error: {tmp_path / 'run'} holds a checkpoint (step 3) of another")
    assert "the discriminator (vq_train.disc_weight > 0) 'off' in the checkpoint" in line


def test_export_refuses_its_own_workdir_and_leaves_a_missing_one_alone(tmp_path):
    run = tmp_path / "run"
    _save_run(run, config_lib.load_config_file(DEMO_CONFIG))
    for out in (run, run / "bundle"):
        line = _run("export.py", f"--workdir={run}", f"--out={out}")
        assert line.startswith(f"error: --out {out} is inside --workdir {run}")
    assert sorted(os.listdir(run)) == [checkpoint.CHECKPOINT_DIR]
    assert os.listdir(run / checkpoint.CHECKPOINT_DIR) == ["3"]

    bundle = tmp_path / "bundle"  # the PredVDM checkpoint may not go into the bundle folder
    for ckpt in (bundle, bundle / "denoiser.safetensors"):
        line = _run("export.py", f"--workdir={run}", f"--out={bundle}", f"--predvdm_ckpt={ckpt}")
        assert line == (
            f"error: --predvdm_ckpt {ckpt} is in --out {bundle}, the bundle folder this export "
            f"writes; nothing was written. Pass a file path outside it"
        )
        assert not bundle.exists()

    missing = tmp_path / "missing"
    line = _run("export.py", f"--workdir={missing}", f"--out={tmp_path / 'bundle'}")
    assert line.startswith(f"error: no finished checkpoint in {missing}")
    assert not missing.exists()


def test_a_nan_loss_in_vq_training_is_one_error_line(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_split(str(tmp_path / split), [rng.integers(0, 256, (3, 16, 16), np.uint8)] * 2)
    tiny = {
        "data.train_dir": tmp_path / "train",
        "data.test_dir": tmp_path / "test",
        "data.image_size": 16,
        "vq.resolution": 16,
        "vq.ch_mult": "(1,)",
        "vq_train.batch_size": 2,
        "vq_train.num_steps": 3,
        "vq_train.log_every": 1,
        "vq_train.eval_every": 0,
        "vq_train.eval_clips": 2,
        "vq_train.eval_frames": 2,
        "vq_train.learning_rate": 1e30,  # the first update overflows the parameters
    }
    flags = [f"--config.{name}={value}" for name, value in tiny.items()]
    line = _run("train_vq.py", f"--workdir={tmp_path / 'run'}", f"--config={VQ_CONFIG}", *flags)
    assert re.match(r"error: loss is (nan|inf) at step \d+; stopped without saving", line), line


@pytest.mark.parametrize("code", [143, 130])  # SIGTERM; Ctrl-C
def test_a_preempted_run_exits_143_or_130_naming_the_saved_step(capsys, code):
    with pytest.raises(SystemExit) as exited, one_line_errors():
        raise loop.TrainingPreempted("saved step 4; rerun to resume", code)
    assert exited.value.code == code
    assert capsys.readouterr().err == "preempted: saved step 4; rerun to resume\n"


def test_multi_process_settings_that_cannot_start_are_one_error_line(tmp_path):
    args = (f"--workdir={tmp_path}", f"--config={DEMO_CONFIG}")
    assert _run("train.py", *args, env={"JAX_NUM_PROCESSES": "2"}) == (
        "error: multi-process run with num_processes=2 needs a coordinator address and a "
        "process id; pass them or set JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID"
    )
    assert _run("evaluate.py", "--bundle=b", "--out=o", env={"JAX_NUM_PROCESSES": "two"}) == (
        "error: JAX_NUM_PROCESSES='two' is not an integer"
    )
    line = _run("train_vq.py", *args, env={"JAX_AUTO_DISTRIBUTED": "true"})
    assert line.startswith("error: JAX_AUTO_DISTRIBUTED found no cluster to join")

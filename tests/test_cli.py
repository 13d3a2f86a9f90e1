"""predvdm_jax/cli.py: every script's flag errors, stray arguments, flags that would do nothing
and expected failures are one ``error:`` line; the library refuses what the scripts refused."""

import json
import os
import re
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from predvdm_jax import cli
from predvdm_jax import config as config_lib
from predvdm_jax.data import hdf5, latent_cache
from predvdm_jax.interop import bundle as bundle_lib
from predvdm_jax.training import checkpoint, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "digits_demo.py")


def _printed(script, *args):
    """The lines a failed script printed, absl's log lines left out."""
    command = [sys.executable, os.path.join(REPO, "scripts", script), *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    lines = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and not re.match(r"[IWE]\d{4} ", line)
    ]
    assert done.returncode == 1 and len(lines) == 1, lines
    return lines[0]


def test_a_missing_required_flag_is_one_error_line():
    assert _printed("export.py") == (
        "error: --workdir is required; pass --workdir=... (see --helpshort)"
    )


def test_the_demo_refuses_a_clip_count_below_one_before_any_stage(tmp_path):
    workdir = tmp_path / "demo"
    for flag in ("num_train", "num_test", "long_clips", "fvd_clips"):
        assert _printed("demo.py", f"--workdir={workdir}", f"--{flag}=0") == (
            f"error: flag --{flag}=0: 0 is not a positive integer (see --helpshort)"
        )
    assert not workdir.exists()


def test_ctrl_c_in_a_script_is_one_line_and_status_130_not_a_traceback():
    program = (
        "import sys, time\n"
        "from predvdm_jax import cli\n"
        "def main():\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "cli.run(main)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stderr.strip() == "interrupted (Ctrl-C)"


def test_a_stray_positional_argument_is_an_error(tmp_path):
    out = tmp_path / "out"
    line = _printed("prepare_data.py", "--dataset=smmnist", "--src=x.npz", f"--out={out}", "stray")
    assert line == (
        "error: unexpected arguments ['stray']; this script takes only flags (see --helpshort)"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "script, args, want",
    [
        (
            "evaluate.py",
            ("--bundle=b", "--step=5", "--nouse_ema"),
            "error: bundle b holds the one set of weights it was exported with; step=5 (--step) "
            "and use_ema=False (--nouse_ema) apply only to a training workdir's checkpoints",
        ),
        (
            "evaluate.py",
            ("--bundle=b", "--cond_frames=10"),
            "error: --cond_frames has no effect without --real_dir and --fake_dir; remove it",
        ),
        (
            "evaluate.py",
            ("--real_dir=r", "--fake_dir=f", "--protocol=mcvd", "--pred_frames=9"),
            "error: --protocol, --pred_frames have no effect when scoring folders "
            "(--real_dir, --fake_dir); remove them",
        ),
        (
            "evaluate.py",
            (
                "--real_dir=r",
                "--fake_dir=f",
                "--config.eval.fvd=false",
                "--config.sampling.steps=3",
                "--config.eval.gray_as_rgb=true",
            ),
            "error: --config.eval.gray_as_rgb, --config.sampling.steps have no effect when "
            "scoring folders, which reads only --config.eval.batch_size, --config.eval.lpips_params, "
            "--config.eval.i3d_params, --config.eval.fvd, --config.eval.fvd_resize, "
            "--config.eval.metric_style; remove them",
        ),
        (
            "evaluate.py",
            ("--bundle=b", "--config.mesh.fsdp=3"),
            "error: --config.mesh.fsdp (inference replicates the params and splits each "
            "--config.eval.batch_size batch over every device) has no effect in evaluate.py, "
            "which reads only the model's architecture",
        ),
        (
            "sample.py",
            ("--bundle=b", "--config.mesh.data=2", "--config.mesh.fsdp=-1"),
            "error: --config.mesh.data, --config.mesh.fsdp (inference replicates the params",
        ),
        (
            "evaluate.py",
            (
                "--bundle=b",
                "--num_clips=3",
                "--config.eval.num_clips=3",
                "--pred_frames=2",
                "--config.eval.pred_frames=2",
                "--protocol=mcvd",
                "--config.eval.protocol=mcvd",
                "--config.data.latent_test_dir=x",
                "--config.train.num_steps=3",
                "--config.optimizer.b1=0.5",
                "--config.data.batch_size=4",
                "--config.vq_train.num_steps=3",
                "--config.eval.seed=2",  # read: no error for it
                "--config.eval.metric_style=predvdm",  # read: no error for it
            ),
            "error: --config.data.batch_size, --config.data.latent_test_dir, "
            "--config.eval.num_clips (--num_clips sets it), --config.eval.pred_frames "
            "(--pred_frames sets it), --config.eval.protocol (--protocol sets it), "
            "--config.optimizer.b1, --config.train.num_steps, --config.vq_train.num_steps have "
            "no effect in evaluate.py, which reads only the model's architecture, latent scale "
            "and noise schedule, --config.vq_params, --config.sampling.*, --config.data.test_dir "
            "and the --config.eval.* fields that the flags given do not set; remove them",
        ),
        (
            "evaluate.py",
            ("--bundle=b", "--num_samples=3", "--config.eval.num_samples=2", "--num_clips=4"),
            "error: --num_samples=3 and --config.eval.num_samples=2 conflict: pass only one of "
            "them",
        ),
        (
            "evaluate.py",
            (
                "--bundle=b",
                "--protocol=mcvd",
                "--config.eval.protocol=extdm",
                "--pred_frames=2",
                "--config.eval.pred_frames=3",
            ),
            "error: --protocol=mcvd and --config.eval.protocol=extdm; --pred_frames=2 and "
            "--config.eval.pred_frames=3 conflict: pass only one of each pair",
        ),
        (
            "sample.py",
            (
                "--bundle=b",
                "--config.eval.num_clips=3",
                "--config.eval.protocol=mcvd",
                "--config.eval.fvd=false",
                "--config.seed=3",
                "--config.train.num_steps=3",
                "--config.optimizer.b1=0.5",
                "--config.vq_train.num_steps=3",
                "--config.diffusion.elbo_weight=0.5",  # the training loss's
                "--config.eval.seed=2",  # read: no error for them
                "--config.data.test_dir=t",
                "--config.eval.pred_frames=3",
            ),
            "error: --config.diffusion.elbo_weight, --config.eval.fvd, --config.eval.num_clips "
            "(--num_clips sets it), --config.eval.protocol, --config.optimizer.b1, --config.seed "
            "(--seed sets the sampling key), --config.train.num_steps, "
            "--config.vq_train.num_steps have no effect in sample.py, which reads only the "
            "model's architecture, latent scale and noise schedule, --config.vq_params, "
            "--config.sampling.*, --config.eval.batch_size, --config.eval.pred_frames (without "
            "--num_frames), --config.data.test_dir and --config.eval.seed (the test clips, "
            "without --video); remove them",
        ),
        (
            "sample.py",
            (
                "--bundle=b",
                "--video=v.gif",
                "--num_frames=3",
                "--config.data.test_dir=t",
                "--config.eval.seed=2",
                "--config.eval.pred_frames=3",
                "--config.eval.batch_size=2",  # read: no error for it
            ),
            "error: --config.data.test_dir (--video replaces the test clips), "
            "--config.eval.pred_frames (--num_frames sets it), --config.eval.seed (--video "
            "replaces the test clips) have no effect in sample.py",
        ),
        (
            "sample.py",
            ("--bundle=b", "--video=v.gif", "--num_clips=3"),
            "error: --num_clips has no effect with --video",
        ),
    ],
)
def test_a_flag_that_would_do_nothing_is_one_error_line(tmp_path, script, args, want):
    assert _printed(script, *args, f"--out={tmp_path / 'out'}").startswith(want)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script, args",
    [
        (
            "evaluate.py",
            (
                "--protocol=mcvd",
                "--config.eval.num_samples=2",  # read with --protocol
                "--config.sampling.steps=4",
                "--config.data.test_dir=t",
                "--config.eval.gray_as_rgb=true",
                "--config.eval.fvd=false",
            ),
        ),
        ("sample.py", ("--config.sampling.steps=4", "--config.data.test_dir=t")),
    ],
)
def test_overrides_the_script_reads_are_not_refused(tmp_path, script, args):
    line = _printed(script, f"--bundle={tmp_path / 'b'}", *args, f"--out={tmp_path / 'out'}")
    assert line.startswith(f"error: '{tmp_path / 'b'}' does not exist; pass a bundle"), line


@pytest.mark.parametrize(
    "script, source",
    [
        ("sample.py", "the saved model's (--workdir or --bundle)"),
        ("evaluate.py", "the saved model's (--workdir or --bundle), or the defaults when scoring "),
    ],
)
def test_a_config_file_for_a_saved_model_is_one_clear_line(tmp_path, script, source):
    kth = os.path.join(REPO, "configs", "kth64.py")
    line = _printed(script, f"--config={kth}", "--bundle=b", f"--out={tmp_path / 'out'}")
    assert line.startswith(f"error: {script} takes no config file: its config is {source}")
    assert line.endswith(f", changed with --config.<field>=value overrides; drop --config={kth}")


def test_train_refuses_the_vq_trainers_fields(tmp_path):
    line = _printed(
        "train.py",
        f"--config={DEMO_CONFIG}",
        f"--workdir={tmp_path / 'w'}",
        "--config.vq_train.num_steps=3",
        "--config.train.num_steps=3",
    )
    assert line == (
        "error: --config.vq_train.num_steps has no effect in denoiser training (the VQ trains "
        "with scripts/train_vq.py); remove it"
    )
    assert not (tmp_path / "w").exists()


def _cache_of(split_dir, source, fingerprint="old"):
    """A latent cache folder whose ``cache_info.json`` records frames ``source``."""
    os.makedirs(split_dir)
    info = dict.fromkeys(latent_cache.INFO_KEYS, "")
    info.update(source=os.path.abspath(source), **{latent_cache.SOURCE_KEY: fingerprint})
    with open(os.path.join(split_dir, latent_cache.CACHE_INFO), "w") as f:
        json.dump(info, f)
    return str(split_dir)


def test_train_refuses_frames_that_a_latent_cache_would_replace(tmp_path):
    """A config that trains on a latent cache (the demo's) and --config.data.train_dir of other
    frames would train on the cache's frames without a word."""
    cache = _cache_of(tmp_path / "demo_latents", tmp_path / "demo" / "train")
    mine = str(tmp_path / "mine" / "train")
    line = _printed(
        "train.py",
        f"--config={DEMO_CONFIG}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.train_dir={mine}",
        f"--config.data.latent_train_dir={cache}",
    )
    assert line == (
        f"error: --config.data.train_dir={mine} is not what the batches come from: they come "
        f"from data.latent_train_dir={cache}, encoded from {tmp_path / 'demo' / 'train'}. Encode "
        f"{mine} (scripts/encode_dataset.py) and pass its cache as --config.data.latent_train_dir"
        ", or add --config.data.latent_train_dir= to encode every batch in the step"
    )
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("moved", [False, True])
def test_train_takes_frames_with_the_cache_encoded_from_them(tmp_path, moved):
    """--config.data.train_dir with the cache of those frames (also after the split moved: same
    fingerprint) gets past the check: the next error is the missing VQ file."""
    mine = tmp_path / "mine" / "train"
    hdf5.write_split(str(mine), [np.zeros((3, 8, 8), np.uint8)])
    recorded = tmp_path / "moved_from" if moved else mine
    cache = _cache_of(tmp_path / "latents", recorded, latent_cache.source_fingerprint(str(mine)))
    vq = tmp_path / "no_vq.safetensors"
    line = _printed(
        "train.py",
        f"--config={DEMO_CONFIG}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.train_dir={mine}",
        f"--config.data.latent_train_dir={cache}",
        f"--config.vq_params={vq}",
        "--config.train.eval_every=0",
    )
    assert "--config.data.train_dir" not in line and str(vq) in line, line


def test_convert_ldm_vq_refuses_overrides_outside_the_vq_section(tmp_path):
    line = _printed(
        "convert_ldm_vq.py",
        f"--ckpt={tmp_path / 'x.ckpt'}",
        f"--out={tmp_path / 'vq.safetensors'}",
        f"--config={DEMO_CONFIG}",
        "--config.vq.n_embed=16",
        "--config.vq_params=x",
        "--config.unet.model_channels=64",
    )
    assert line == (
        "error: --config.unet.model_channels, --config.vq_params have no effect: the converter "
        "reads only the config's vq section (--config.vq.*); remove them"
    )


def test_two_config_files_are_one_error_line(tmp_path):
    line = _printed(
        "train.py",
        f"--config={DEMO_CONFIG}",
        f"--config={DEMO_CONFIG}",
        f"--workdir={tmp_path / 'w'}",
        "--config.train.num_steps=3",
    )
    assert line == (
        f"error: --config is given 2 times ({DEMO_CONFIG!r}, {DEMO_CONFIG!r}); pass one config "
        "file, and --config.<field>=value to change its fields"
    )


def test_load_model_refuses_a_step_or_the_raw_weights_of_a_bundle(tmp_path):
    for options in ({"step": 5}, {"use_ema": False}):
        with pytest.raises(ValueError, match="holds the one set of weights it was exported with"):
            checkpoint.load_model(str(tmp_path / "bundle"), **options)


def _save_run(workdir):
    directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    checkpointer = checkpoint.Checkpointer(directory, async_save=False)
    config = config_lib.load_config_file(DEMO_CONFIG)
    checkpointer.save(3, {"w": jnp.zeros(2)}, data_state={}, config=config)
    checkpointer.close()


def test_the_library_exports_refuse_the_runs_own_folders(tmp_path):
    run = tmp_path / "run"
    _save_run(run)
    inside = run / checkpoint.CHECKPOINT_DIR / "x.ckpt"
    with pytest.raises(ValueError, match=f"^--predvdm_ckpt {inside} is inside the run's check"):
        checkpoint.export_latent_diffusion_checkpoint(str(run), str(inside))
    with pytest.raises(ValueError, match=f"^--out {run / 'bundle'} is inside --workdir {run}"):
        checkpoint.export_bundle(str(run), str(run / "bundle"))
    assert sorted(os.listdir(run)) == [checkpoint.CHECKPOINT_DIR]
    assert os.listdir(run / checkpoint.CHECKPOINT_DIR) == ["3"]


@pytest.mark.parametrize(
    "err",
    [
        PermissionError("cannot write x"),
        ImportError("needs PyTorch"),
        config_lib.ConfigError("bad field"),
        loop.NonFiniteLossError("loss is nan"),
    ],
)
def test_expected_failures_are_one_error_line(err):
    with pytest.raises(SystemExit) as exited, cli.one_line_errors():
        raise err
    assert exited.value.code == f"error: {err}"


def test_a_bug_is_not_hidden_behind_an_error_line():
    with pytest.raises(KeyError), cli.one_line_errors():
        raise KeyError("a bug")


def test_nothing_below_the_scripts_imports_cli():
    package = os.path.join(REPO, "predvdm_jax")
    for folder, _, names in os.walk(package):
        for name in names:
            if name.endswith(".py") and os.path.join(folder, name) != cli.__file__:
                with open(os.path.join(folder, name)) as f:
                    source = f.read()
                assert not re.search(r"import cli\b|predvdm_jax\.cli\b", source), name


def test_load_model_refuses_overrides_that_change_what_the_weights_mean(tmp_path, monkeypatch):
    config = config_lib.load_config_file(DEMO_CONFIG)
    saved = bundle_lib.Bundle(config, {}, {})
    monkeypatch.setattr(checkpoint, "resolve_bundle_path", lambda path: path)
    monkeypatch.setattr(checkpoint, "read_bundle", lambda path: saved)
    runtime = {"sampling.steps": 4, "model.dtype": "bfloat16", "unet.dropout": 0.3}
    same_size = {"data.image_size": config.data.image_size}  # an override equal to the saved
    loaded, _ = checkpoint.load_model("b", overrides={**runtime, **same_size})
    assert loaded.config.sampling.steps == 4 and loaded.config.model.dtype == "bfloat16"
    with pytest.raises(config_lib.ConfigError) as err:
        checkpoint.load_model(
            "b", overrides={"unet.channel_mult": (1, 2), "diffusion.linear_end": 0.02}
        )
    mult = config.unet.channel_mult
    assert str(err.value) == (
        f"the --config overrides change what the weights of bundle b mean: unet.channel_mult "
        f"{list(mult)!r} saved, [1, 2] now; diffusion.linear_end {config.diffusion.linear_end!r} "
        f"saved, 0.02 now; the model's shapes, frame counts, latent scale, noise schedule and "
        f"parameterization come with its weights: drop those overrides"
    )


def test_train_vq_refuses_the_fields_it_does_not_read(tmp_path):
    workdir = tmp_path / "w"
    line = _printed(
        "train_vq.py",
        f"--config={os.path.join(REPO, 'configs', 'vq_digits_demo.py')}",
        f"--workdir={workdir}",
        "--config.train.num_steps=5",
        "--config.optimizer.b2=0.5",
        "--config.train.grad_accum_steps=2",
        "--config.optimizer.weight_decay=0.1",
        "--config.vq_params=vq.safetensors",
        "--config.unet.model_channels=64",
        "--config.scale_factor=2",
        "--config.sampling.steps=3",
        "--config.vq_train.num_steps=5",  # the VQ's own, and the engine's: fine
        "--config.train.ema_rate=0.5",
        "--config.model.dtype=bfloat16",
    )
    assert line == (
        "error: --config.optimizer.b2 (set vq_train.b2), --config.optimizer.weight_decay, "
        "--config.sampling.steps, --config.scale_factor, --config.train.grad_accum_steps, "
        "--config.train.num_steps (set vq_train.num_steps), --config.unet.model_channels, "
        f"--config.vq_params (the trained params go to {workdir}/vq_params.safetensors, for "
        "the denoiser's config.vq_params) have no effect in VQ training, which reads "
        "--config.vq.*, --config.vq_train.*, --config.mesh.*, the data fields it trains on and "
        "a few others (vq_trainer.READ_FIELDS); remove them"
    )
    assert not workdir.exists()


def test_the_fields_scripts_read_are_fields_of_the_schema():
    from predvdm_jax import demo
    from predvdm_jax.training import vq_trainer

    schema = config_lib.default_config()
    named = (
        cli.MODEL_FIELDS
        + vq_trainer.READ_FIELDS
        + tuple(vq_trainer.REPLACED_FIELDS)
        + tuple(f for f in vq_trainer.REPLACED_FIELDS.values())
        + tuple(demo.SET_BY_DEMO)
        + cli.fields_except(*demo.SET_BY_DEMO)
    )
    for name in named:
        node = schema
        for key in name.split("."):
            assert key in node, name
            node = node[key]
    reads = cli.fields_except("vq_train", "data.train_dir", "eval.fvd")
    assert "vq_train" not in reads and "data.train_dir" not in reads and "eval" not in reads
    assert {"vq", "sampling", "data.test_dir", "eval.seed"} <= set(reads)


def test_orbax_info_lines_are_dropped_and_its_warnings_kept():
    import logging

    import orbax.checkpoint as ocp

    def record(level, path):
        return logging.LogRecord("absl", level, path, 1, "message", None, None)

    orbax_file = os.path.join(os.path.dirname(ocp.__file__), "checkpoint_manager.py")
    assert not cli.quiet_orbax_info(record(logging.INFO, orbax_file))
    assert cli.quiet_orbax_info(record(logging.WARNING, orbax_file))
    assert cli.quiet_orbax_info(record(logging.INFO, checkpoint.__file__))  # the run's own lines


def test_jax_s_probe_of_absent_platforms_is_not_logged(tmp_path):
    """Without JAX_PLATFORMS, JAX logs "Unable to initialize backend 'tpu'" on every CPU or GPU
    run as an INFO line; the scripts drop it (a failed platform that was asked for still
    raises)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    script = os.path.join(REPO, "scripts", "export.py")
    command = [sys.executable, script, f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'b'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert "Unable to initialize backend" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: no finished checkpoint in")


def test_a_config_field_given_as_a_script_flag_names_the_override():
    assert _printed("train.py", f"--config={DEMO_CONFIG}", "--workdir=unused", "--num_steps=3") == (
        "error: Unknown command line flag 'num_steps'; it is a config field: "
        "--config.train.num_steps or --config.vq_train.num_steps"
    )

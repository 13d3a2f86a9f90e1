"""A shortened demo, end to end: every stage runs, the report has real numbers, a rerun resumes."""

import copy
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from predvdm_jax import config as config_lib
from predvdm_jax import demo
from predvdm_jax.config import ConfigError
from predvdm_jax.data.hdf5 import DatasetError, VideoShards
from predvdm_jax.data.loader import eval_windows
from predvdm_jax.training import checkpoint

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def _short_demo_config():
    c = config_lib.load_config_file(CONFIGS / "digits_demo.py")
    c.vq_train.update(
        dict(batch_size=2, num_steps=2, eval_every=0, eval_clips=2, log_every=1, save_every=2)
    )
    c.data.batch_size = 2
    c.unet.update(dict(channel_mult=(1,), attention_resolutions=()))
    c.train.update(dict(num_steps=2, log_every=1, save_every=2))
    c.sampling.steps = 2
    c.eval.update(dict(num_clips=2, batch_size=2))
    return config_lib.validate(c)


RUN = dict(num_train=3, num_test=2, long_clips=2, fvd_clips=1, progress=False)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The short demo run once from scratch (the first run of both tests below): its workdir
    and numbers. Tests take their own copy (``_copy_of``): neither sees the other's reruns."""
    workdir = tmp_path_factory.mktemp("first_run") / "demo"
    return workdir, demo.run_demo(_short_demo_config(), str(workdir), **RUN)


def _copy_of(first_run, tmp_path):
    """A copy of the first run's workdir in ``tmp_path``, and of its numbers."""
    workdir, numbers = first_run
    mine = tmp_path / "demo"
    shutil.copytree(workdir, mine)
    return str(mine), copy.deepcopy(numbers)


def _copy_last_psnr_by_hand(config, paths, pred_frames, num_clips):
    """Per-frame PSNR ``(clips, pred_frames)`` of copying the last cond frame, from the stored
    uint8 test frames of the evaluation's clips (``eval_windows``: which video, from which
    frame)."""
    test = VideoShards(os.path.join(paths["frames"], "test"))
    cond = config.data.cond_frames
    windows = eval_windows(test.frame_counts, num_clips, cond + pred_frames, config.eval.seed)
    clips = np.stack([test.read_clip(v, start, cond + pred_frames) for v, start in windows])
    test.close()
    future, last = clips[:, cond:] / 255.0, clips[:, cond - 1 : cond] / 255.0
    return 10 * np.log10(1 / ((future - last) ** 2).mean(axis=(2, 3, 4)))


def test_short_demo_end_to_end_and_resume(first_run, tmp_path):
    workdir, numbers = _copy_of(first_run, tmp_path)
    config = _short_demo_config()
    paths = demo.demo_paths(workdir)
    for key in ("bundle", "eval10", "eval30", "fvd"):
        assert os.path.isdir(paths[key]), key
    short = numbers["short"]
    assert short["protocol"]["num_clips"] == 2 and short["protocol"]["pred_frames"] == 10
    assert 0.0 < short["model"]["ssim"]["mean"]["value"] <= 1.0
    # predvdm's PSNR: the mean over every clip's every frame
    copy_last = short["baselines"]["copy_last_frame"]["psnr"]
    expected = _copy_last_psnr_by_hand(config, paths, 10, 2)
    assert copy_last["mean"]["value"] == pytest.approx(expected.mean(), rel=1e-4)
    np.testing.assert_allclose(copy_last["per_frame"]["mean"], expected.mean(axis=0), rtol=1e-4)
    assert len(short["model"]["psnr"]["per_frame"]["mean"]) == 10
    assert len(numbers["long"]["model"]["psnr"]["per_frame"]["mean"]) == 30
    assert "FVD needs at least 2" in json.dumps(numbers["fvd"]["model"]["fvd"])
    report = open(paths["report"]).read()
    assert "copy last" in report.lower() and "per_frame.png" in report and ".gif" in report
    model_ssim = short["model"]["ssim"]["mean"]["value"]
    copy_ssim = short["baselines"]["copy_last_frame"]["ssim"]["mean"]["value"]
    verdict = "beats" if model_ssim > copy_ssim else "does not beat"
    assert f"SSIM {model_ssim:.3f} vs {copy_ssim:.3f} ({verdict})" in report
    assert "Peak memory (RSS)" in report
    assert os.path.exists(os.path.join(paths["eval10"], "per_frame.png"))

    # A rerun with nothing to do skips every stage and keeps the recorded times and peak memory.
    recorded = json.load(open(paths["stages"]))
    assert recorded["peak_rss_gb"] > 0.1
    again = demo.run_demo(config, workdir, **RUN)
    assert again["skipped"] == list(numbers["stage_seconds"]), again["skipped"]
    assert again["stage_seconds"] == numbers["stage_seconds"]
    assert again["denoiser_step"] == 2
    for name in ("ssim", "psnr"):
        assert again["short"]["model"][name]["mean"] == short["model"][name]["mean"]
    assert json.load(open(paths["stages"]))["peak_rss_gb"] >= recorded["peak_rss_gb"]
    report = open(paths["report"]).read()
    for name, seconds in numbers["stage_seconds"].items():
        assert f"| {name} | {seconds:.0f} |" in report
    assert f"the largest of the demo's runs: {recorded['peak_rss_gb']:.1f} GB" in report


def test_demo_rerun_with_more_steps_trains_on_and_reevaluates(first_run, tmp_path):
    workdir, first = _copy_of(first_run, tmp_path)
    config = _short_demo_config()
    paths = demo.demo_paths(workdir)
    assert checkpoint.latest_step(paths["diffusion"]) == 2 and first["denoiser_step"] == 2

    config.train.num_steps = 4
    longer = demo.run_demo(config, workdir, **RUN)
    assert longer["skipped"] == [
        "moving digits dataset",
        "VQ-f4 training",
        "latent cache (train split)",
    ]
    assert checkpoint.latest_step(paths["diffusion"]) == 4
    assert demo.bundled_step(paths) == longer["denoiser_step"] == 4
    for name in ("short", "fvd", "long"):
        assert longer[name]["protocol"]["source"] == "demo bundle of step 4", name
    ssim = longer["short"]["model"]["ssim"]["mean"]["value"]
    assert ssim != first["short"]["model"]["ssim"]["mean"]["value"]
    with open(os.path.join(paths["eval10"], "metrics.json")) as f:
        assert json.load(f)["model"]["ssim"]["mean"]["value"] == ssim
    assert "; 4 steps of batch 2 clips" in open(paths["report"]).read()
    # The skipped stages keep the times recorded by the first run.
    for name in longer["skipped"]:
        assert longer["stage_seconds"][name] == first["stage_seconds"][name]
    # Another sampler or clip count evaluates again; a dataset of other settings is refused.
    config.sampling.steps = 4
    resampled = demo.run_demo(config, workdir, **dict(RUN, long_clips=3))
    assert "denoiser training" in resampled["skipped"]
    assert "evaluation 10 -> 10, 2 clips" not in resampled["skipped"]
    assert "ddim, 4 steps" in resampled["short"]["protocol"]["sampler"]
    assert resampled["long"]["protocol"]["num_clips"] == 3
    # A stage done with other settings is refused, naming them, before anything is evaluated.
    with open(os.path.join(paths["eval10"], "metrics.json")) as f:
        evaluated = f.read()
    other_vq = config.copy_and_resolve_references()
    other_vq.vq_train.num_steps = 3
    with pytest.raises(ConfigError) as refused:
        demo.run_demo(other_vq, workdir, **RUN)
    assert str(refused.value) == (
        f"{paths['vq']} holds a VQ-f4 trained with other settings (vq_train.num_steps 2 in the "
        f"checkpoint, 3 now); use a new --workdir, or delete {paths['vq']}, {paths['latents']} "
        f"and {paths['diffusion']} to train it again"
    )
    wide_eps = config.copy_and_resolve_references()
    wide_eps.unet.model_channels = 64
    wide_eps.diffusion.parameterization = "eps"
    wide_eps.sampling.steps = 5  # may change: not named
    with pytest.raises(ConfigError) as refused:
        demo.run_demo(wide_eps, workdir, **RUN)
    assert str(refused.value) == (
        f"{paths['diffusion']} holds a denoiser trained with other settings (unet.model_channels "
        f"32 in the checkpoint, 64 now; diffusion.parameterization 'x0' in the checkpoint, 'eps' "
        f"now); use a new --workdir, or delete {paths['diffusion']} to train it again"
    )
    with open(os.path.join(paths["eval10"], "metrics.json")) as f:
        assert f.read() == evaluated
    # Doing as it says trains the new model; its bundle (of the bundled step) and evaluations
    # are redone, and the report describes the models that were trained.
    shutil.rmtree(paths["diffusion"])
    eps = config.copy_and_resolve_references()
    eps.diffusion.parameterization = "eps"
    retrained = demo.run_demo(eps, workdir, **RUN)
    assert retrained["denoiser_step"] == 4
    assert not {"inference bundle", "evaluation 10 -> 10, 2 clips"} & set(retrained["skipped"])
    report = open(paths["report"]).read()
    assert "; 2 steps of batch 2 frames." in report  # the VQ's
    assert "UNet 32 × (1,), mode tc, eps-prediction; 4 steps of batch 2 clips" in report
    with pytest.raises(
        DatasetError, match=r"other settings \(options.num_test differ\); use a new --workdir "
    ):
        demo.run_demo(config, workdir, **dict(RUN, num_test=4))


def _leaves(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_set_by_demo_names_every_field_localize_sets(tmp_path):
    config = config_lib.load_config_file(CONFIGS / "digits_demo.py")
    before, after = dict(_leaves(config)), dict(_leaves(demo.localize(config, str(tmp_path))))
    changed = {name for name in before if before[name] != after[name]}
    assert changed and changed <= set(demo.SET_BY_DEMO)


def test_demo_script_refuses_overrides_of_the_fields_it_sets(tmp_path):
    import subprocess
    import sys

    workdir = tmp_path / "demo"
    command = [
        sys.executable,
        str(CONFIGS.parent / "scripts" / "demo.py"),
        f"--workdir={workdir}",
        "--config.scale_factor=2",
        "--config.data.test_dir=t",
        "--config.data.train_dir=t",
        "--config.vq_params=vq.safetensors",
        "--config.eval.protocol=mcvd",
        "--config.eval.fvd=false",
        "--config.train.num_steps=3",  # read: no error for it
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(CONFIGS.parent))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --config.data.test_dir, --config.data.train_dir (the demo keeps its data in "
        "--workdir), --config.eval.fvd (the demo computes FVD on --fvd_clips clips only), "
        "--config.eval.protocol (the demo evaluates with the predvdm protocol, 1 sample per "
        "clip), --config.scale_factor (the demo sets it to 1 / std of its VQ's latents), "
        "--config.vq_params (the demo trains its VQ in --workdir) have no effect in the demo; "
        "remove them"
    )
    assert not workdir.exists()

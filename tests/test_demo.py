"""A shortened demo, end to end: every stage runs, the report has real numbers, a rerun resumes."""

import json
import os
import pathlib

from predvdm_jax import config as config_lib
from predvdm_jax import demo

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


def test_short_demo_end_to_end_and_resume(tmp_path):
    workdir = str(tmp_path / "demo")
    config = _short_demo_config()
    numbers = demo.run_demo(
        config, workdir, num_train=3, num_test=2, long_clips=2, fvd_clips=1, progress=False
    )
    paths = demo.demo_paths(workdir)
    for key in ("bundle", "eval10", "eval30", "fvd"):
        assert os.path.isdir(paths[key]), key
    short = numbers["short"]
    assert short["protocol"]["num_clips"] == 2 and short["protocol"]["pred_frames"] == 10
    assert 0.0 < short["model"]["ssim"]["mean"]["value"] <= 1.0
    copy_last = short["baselines"]["copy_last_frame"]["psnr"]["mean"]["value"]
    assert 5.0 < copy_last < 100.0
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

    again = demo.run_demo(
        config, workdir, num_train=3, num_test=2, long_clips=2, fvd_clips=1, progress=False
    )
    skipped = {
        "moving digits dataset",
        "VQ-f4 training",
        "latent cache (train split)",
        "denoiser training",
        "inference bundle",
    }
    assert all(again["stage_seconds"][name] < 0.5 for name in skipped), again["stage_seconds"]
    assert (
        again["short"]["model"]["ssim"]["mean"]["value"] == short["model"]["ssim"]["mean"]["value"]
    )

"""scripts/evaluate.py end to end on a tiny exported bundle, and the folder-scoring path."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from predvdm_jax.data import hdf5
from predvdm_jax.evaluation import protocol as protocol_lib
from predvdm_jax.evaluation import run as run_lib
from random_params import random_params_from_init
from tiny_config import SIZE, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COND, PRED, VIDEOS = 2, 4, 4


def _tiny_config(test_dir):
    config = tiny_config(COND, 2, pred_frames=PRED, num_clips=VIDEOS, batch_size=VIDEOS, fvd=False)
    config.data.test_dir = test_dir
    return config


def _videos(seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (COND + PRED, SIZE, SIZE), dtype=np.uint8) for _ in range(VIDEOS)]


def _psnr_by_hand(real_uint8, fake_uint8):
    mse = ((real_uint8 / 255.0 - fake_uint8 / 255.0) ** 2).mean(axis=(-2, -1))
    return 10 * np.log10(1 / mse)


def _model_psnr_by_hand(bundle, videos, samples, sampling=None, rgb=False):
    """Per-frame PSNR and MSE ``(clips, samples, PRED)`` of the bundle's predictions of the whole
    ``videos`` (clip i is video i), by skimage and numpy: sample s of clip i drawn with the key
    evaluate documents, fold_in(fold_in(key(eval.seed), s), i); with ``rgb`` the 3-channel
    decode against the frames repeated to 3 channels. Values in [0, 1], the fakes clamped."""
    from skimage.metrics import peak_signal_noise_ratio

    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion

    model = LatentDiffusion.from_config(bundle.config)
    predict = model.make_predict_fn(PRED, sampling, rgb=rgb)
    stored = np.repeat(np.stack(videos)[..., None], 3 if rgb else 1, axis=-1)
    cond = (stored[:, :COND] / 127.5 - 1.0).astype(np.float32)
    real = stored[:, COND:] / 255.0
    key = jax.random.key(bundle.config.eval.seed)
    psnr = np.zeros((len(videos), samples, PRED))
    mse = np.zeros_like(psnr)
    for s in range(samples):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, s), i))(
            jnp.arange(len(videos))
        )
        frames = predict(bundle.params, bundle.vq_params, jnp.asarray(cond), keys)["frames"]
        fake = (np.clip(np.asarray(frames, np.float64), -1.0, 1.0) + 1.0) / 2.0
        assert fake.shape == real.shape
        mse[:, s] = ((real - fake) ** 2).mean(axis=(2, 3, 4))
        for i, f in np.ndindex(len(videos), PRED):
            psnr[i, s, f] = peak_signal_noise_ratio(real[i, f], fake[i, f], data_range=1.0)
    return psnr, mse


def _tiny_bundle(tmp_path, videos):
    """Writes ``videos`` as the test split and a bundle of random params for it; returns
    the bundle's directory."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop import bundle as bundle_lib

    test_dir = str(tmp_path / "test")
    hdf5.write_split(test_dir, videos)
    config = _tiny_config(test_dir)
    model = LatentDiffusion.from_config(config)
    bundle_dir = str(tmp_path / "bundle")
    bundle_lib.save_bundle(
        bundle_dir,
        bundle_lib.Bundle(
            config,
            random_params_from_init(model.init_denoiser, 1),
            random_params_from_init(model.init_vq, 2),
        ),
    )
    return bundle_dir


def test_evaluate_script_on_a_tiny_bundle(tmp_path):
    from predvdm_jax.interop import bundle as bundle_lib

    videos = _videos(0)
    bundle_dir = _tiny_bundle(tmp_path, videos)

    out = tmp_path / "eval"
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "evaluate.py"),
        f"--bundle={bundle_dir}",
        "--protocol=mcvd",
        "--num_samples=2",
        f"--out={out}",
        "--keep_videos=2",
        "--noprogress",
        "--config.eval.batch_size=2",
        "--config.eval.fvd_resize=tf1_bilinear",
        "--save_predictions",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    protocol = metrics["protocol"]
    assert (protocol["name"], protocol["num_clips"], protocol["num_samples"]) == ("mcvd", VIDEOS, 2)
    assert (protocol["cond_frames"], protocol["pred_frames"]) == (COND, PRED)
    assert protocol["source"].startswith("bundle") and protocol["i3d"].startswith("disabled")
    assert protocol["aggregations"] == ["mean", "best_of_2"]
    assert protocol["fvd_resize"] == "tf1_bilinear"
    model_metrics = metrics["model"]
    assert len(model_metrics["psnr"]["per_frame"]["best_of_2"]) == PRED
    assert (
        model_metrics["psnr"]["best_of_2"]["value"] >= model_metrics["psnr"]["mean"]["value"] - 1e-6
    )
    assert "unavailable" in model_metrics["lpips"]
    # The model's PSNR from its own predictions of the clips (the whole videos, clip i video i),
    # each with its documented key: the per-frame curves, and mcvd's per-video PSNR of the
    # mean frame MSE, whose best sample per clip picks the best-of-2 curve.
    psnr, mse = _model_psnr_by_hand(bundle_lib.load_bundle(bundle_dir), videos, samples=2)
    video_psnr = 10 * np.log10(1 / mse.mean(axis=2))
    best = np.argmax(video_psnr, axis=1)
    by_hand = {
        "mean": (video_psnr.mean(), psnr.mean(axis=(0, 1))),
        "best_of_2": (
            video_psnr[np.arange(VIDEOS), best].mean(),
            psnr[np.arange(VIDEOS), best].mean(axis=0),
        ),
    }
    for curve, (value, per_frame) in by_hand.items():
        assert model_metrics["psnr"][curve]["value"] == pytest.approx(value, rel=1e-4), curve
        np.testing.assert_allclose(model_metrics["psnr"]["per_frame"][curve], per_frame, rtol=1e-4)
    assert all("disabled" in note for note in model_metrics["fvd"].values())

    # The clips are the whole videos (each exactly cond + pred frames long), so the
    # copy-last-frame baseline follows from the stored uint8 frames alone.
    stored = np.stack(videos)
    expected = _psnr_by_hand(stored[:, COND:], stored[:, COND - 1 : COND])
    copy_last = metrics["baselines"]["copy_last_frame"]["psnr"]
    # mcvd's mean is over one PSNR per video, of its mean frame MSE (metric_style "mcvd")
    mse = ((stored[:, COND:] / 255.0 - stored[:, COND - 1 : COND] / 255.0) ** 2).mean((1, 2, 3))
    assert copy_last["mean"]["value"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-4)
    np.testing.assert_allclose(copy_last["per_frame"]["mean"], expected.mean(axis=0), rtol=1e-4)
    assert 0 < metrics["baselines"]["vq_reconstruction"]["ssim"]["mean"]["value"] <= 1

    assert Image.open(out / "per_frame.png").size == (900, 360)  # SSIM and PSNR panels
    gif = iio.imread(out / "videos" / "video_0001.gif", index=None, mode="L")
    assert gif.shape == (COND + PRED, SIZE, 2 * SIZE + 2)
    np.testing.assert_array_equal(gif[COND:, :, :SIZE], stored[1, COND:])  # left: ground truth
    assert "| model | best of 2 |" in (out / "metrics.md").read_text()
    for split in ("real", "sample_0", "sample_1"):
        assert len(hdf5.VideoShards(str(out / "predictions" / split))) == VIDEOS
    assert f"--fake_dir={out}/predictions/sample_0 --cond_frames={COND}" in run.stdout

    # On 3 devices with batches of 3 clips, every clip gets the key it got on one device in
    # batches of 2 (its own): the same numbers, up to the sharded program's rounding.
    out3 = tmp_path / "eval3"
    env3 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    replaced = {
        f"--out={out}": f"--out={out3}",
        "--config.eval.batch_size=2": "--config.eval.batch_size=3",
    }
    command3 = [replaced.get(arg, arg) for arg in command]
    run = subprocess.run(command3, capture_output=True, text=True, env=env3, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics3 = json.loads((out3 / "metrics.json").read_text())
    assert metrics3["protocol"]["devices"] == 3 and metrics3["protocol"]["batch_size"] == 3
    for metric in ("ssim", "psnr"):
        for curve in ("mean", "best_of_2"):
            np.testing.assert_allclose(
                metrics3["model"][metric]["per_frame"][curve],
                model_metrics[metric]["per_frame"][curve],
                rtol=1e-5,
            )


def test_score_folders_pairs_videos_by_index(tmp_path):
    real, fake = _videos(3), _videos(3)
    fake[2] = fake[2].copy()
    fake[2][-1] = 255 - fake[2][-1]
    hdf5.write_split(str(tmp_path / "real"), real)
    hdf5.write_split(str(tmp_path / "fake"), fake)
    _earlier_sweep(tmp_path / "out", ["ddim_9_eta1"])  # an earlier sweep's reports: removed
    metrics = run_lib.score_folders(
        str(tmp_path / "real"),
        str(tmp_path / "fake"),
        str(tmp_path / "out"),
        cond_frames=COND,
        fvd=False,
        show_progress=False,
    )
    psnr = metrics["model"]["psnr"]["per_frame"]["mean"]
    assert psnr[:-1] == [100.0] * (PRED - 1)
    expected = (3 * 100.0 + _psnr_by_hand(real[2][-1], fake[2][-1])) / VIDEOS
    assert psnr[-1] == pytest.approx(expected, rel=1e-5)
    assert metrics["protocol"]["frames_per_video"] == COND + PRED
    assert (
        json.loads((tmp_path / "out" / "metrics.json").read_text())["model"]["psnr"]["per_frame"][
            "mean"
        ][0]
        == 100.0
    )
    assert sorted(os.listdir(tmp_path / "out")) == [
        "metrics.json",
        "metrics.md",
        "per_frame.png",
        "videos",
    ]
    # MCVD's definitions (eval.metric_style): one PSNR per video, from its mean MSE.
    mcvd = run_lib.score_folders(
        str(tmp_path / "real"),
        str(tmp_path / "fake"),
        str(tmp_path / "out_mcvd"),
        cond_frames=COND,
        fvd=False,
        metric_style="mcvd",
        show_progress=False,
    )
    last_mse = ((real[2][-1] / 255.0 - fake[2][-1] / 255.0) ** 2).mean()
    video_psnr = 10 * np.log10(PRED / last_mse)  # 1 / (mean MSE over PRED frames)
    assert mcvd["protocol"]["metric_style"] == "mcvd"
    assert mcvd["model"]["psnr"]["mean"]["value"] == pytest.approx(
        ((VIDEOS - 1) * 100.0 + video_psnr) / VIDEOS, rel=1e-5
    )
    hdf5.write_split(str(tmp_path / "short"), real[:2])
    with pytest.raises(ValueError, match="same count"):
        run_lib.score_folders(
            str(tmp_path / "real"),
            str(tmp_path / "short"),
            str(tmp_path / "o2"),
            fvd=False,
            show_progress=False,
        )


class _MeanI3D:
    """Stands in for I3D: 2 features per video, the mean and std of its resized frames."""

    def apply(self, variables, videos):
        return jnp.stack([videos.mean(axis=(1, 2, 3, 4)), videos.std(axis=(1, 2, 3, 4))], -1)


def _fake_i3d(monkeypatch):
    import functools

    from predvdm_jax.evaluation import fvd as fvd_lib

    monkeypatch.setattr(fvd_lib, "InceptionI3d", _MeanI3D)
    monkeypatch.setattr(run_lib, "load_i3d_params", lambda path: {})
    fresh = functools.cache(fvd_lib._logits_program.__wrapped__)  # not the real I3D's programs
    monkeypatch.setattr(fvd_lib, "_logits_program", fresh)


def test_scoring_folders_records_the_fvd_resize_it_used(tmp_path, monkeypatch):
    _fake_i3d(monkeypatch)
    rng = np.random.default_rng(5)
    for name in ("real", "fake"):
        hdf5.write_split(str(tmp_path / name), rng.integers(0, 256, (4, 10, SIZE, SIZE), np.uint8))
    metrics = run_lib.score_folders(
        str(tmp_path / "real"),
        str(tmp_path / "fake"),
        str(tmp_path / "out"),
        fvd_resize="tf1_bilinear",
        keep_videos=0,
        show_progress=False,
    )
    assert isinstance(metrics["model"]["fvd"]["pred-only"], dict)  # FVD was computed
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())["protocol"]
    assert written["fvd_resize"] == "tf1_bilinear"
    assert "tf1_bilinear resize" in written["i3d"] and "TF1 resize_bilinear" in written["i3d"]


def test_an_unknown_fvd_resize_is_one_config_error(tmp_path):
    command = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py")]
    command += [f"--real_dir={tmp_path / 'r'}", f"--fake_dir={tmp_path / 'f'}"]
    command += ["--config.eval.fvd_resize=area", f"--out={tmp_path / 'out'}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in run.stderr.strip().splitlines() if line.startswith("error")]
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(lines) == 1 and "eval.fvd_resize 'area' is not one of" in lines[0], run.stderr
    assert "tf1_bilinear" in lines[0]


def _clip_levels(clip_keys, shape, *extra_seed):
    """Random uint8 frames of ``shape`` per clip, clip i's drawn from ``clip_keys[i]`` (and
    ``extra_seed``) alone."""
    seeds = np.asarray(jax.random.key_data(clip_keys)).tolist()
    return np.stack(
        [
            np.random.default_rng(seed + list(extra_seed)).integers(0, 256, shape, np.uint8)
            for seed in seeds
        ]
    )


def _uint8_predictor(monkeypatch, clock=None):
    """Makes every model predict random frames of whole uint8 levels (from the clip's key: each
    clip and sample differs), so a prediction written as uint8 and read back is the same floats.
    With ``clock`` (a fake ``time.perf_counter`` for ``protocol.py``), the first call takes
    100 s and every later one 0.5 s."""
    from predvdm_jax.data.loader import to_model_range
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion

    if clock is not None:
        monkeypatch.setattr(protocol_lib, "time", clock)

    def make_predict_fn(self, pred_frames, sampling, rgb=False):
        calls = []

        def predict(params, vq_params, cond, key):
            if clock is not None:
                clock.now += 0.5 if calls else 100.0
            calls.append(1)
            levels = _clip_levels(key, (pred_frames, *cond.shape[2:]))
            return {"frames": jnp.asarray(to_model_range(levels))}

        return predict

    monkeypatch.setattr(LatentDiffusion, "make_predict_fn", make_predict_fn)


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_frames_per_second_in_metrics_json_and_md_leave_out_the_first_call(tmp_path, monkeypatch):
    from predvdm_jax.interop import bundle as bundle_lib

    _uint8_predictor(monkeypatch, _FakeClock())
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, _videos(6)))
    config = bundle.config.copy_and_resolve_references()
    for batch_size, out in ((2, "two_batches"), (VIDEOS, "one_batch")):
        config.eval.batch_size = batch_size
        run_lib.evaluate_model(
            config,
            bundle.params,
            bundle.vq_params,
            str(tmp_path / out),
            protocol=protocol_lib.resolve_protocol("predvdm", num_clips=VIDEOS),
            pred_frames=PRED,
            source="test",
            keep_videos=0,
            show_progress=False,
        )
    written = json.loads((tmp_path / "two_batches" / "metrics.json").read_text())
    # Two batches of 2 clips, one sample: the second call alone is timed (2 x PRED frames).
    throughput = written["throughput"]
    assert throughput["predicted_frames_per_second"] == pytest.approx(2 * PRED / 0.5)
    assert throughput["device"].startswith("1 x ") and "(cpu)" in throughput["device"]
    assert written["seconds"]["predict"] == pytest.approx(100.5)
    table = (tmp_path / "two_batches" / "metrics.md").read_text()
    assert f"- Prediction speed: {2 * PRED / 0.5:.3g} predicted frames/s, compilation" in table
    alone = json.loads((tmp_path / "one_batch" / "metrics.json").read_text())["throughput"]
    assert alone["predicted_frames_per_second"] is None
    assert "- Prediction speed: not measured" in (tmp_path / "one_batch" / "metrics.md").read_text()


def test_saved_predictions_rescore_to_the_evaluation_numbers(tmp_path, monkeypatch):
    """Every sample of every clip is written; scoring the folder of sample 0 against the real
    clips gives the numbers of an evaluation with that one sample, to the last bit."""
    from predvdm_jax.interop import bundle as bundle_lib

    _uint8_predictor(monkeypatch)
    rng = np.random.default_rng(7)  # longer than the clips: the windows start anywhere
    videos = [rng.integers(0, 256, (COND + PRED + 5, SIZE, SIZE), np.uint8) for _ in range(4)]
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, videos))
    config = bundle.config.copy_and_resolve_references()
    config.eval.batch_size = 2

    def evaluate(out, samples, save):
        return run_lib.evaluate_model(
            config,
            bundle.params,
            bundle.vq_params,
            str(tmp_path / out),
            # score_folders' SSIM / PSNR style (the mcvd preset implies MCVD's)
            protocol=protocol_lib.resolve_protocol(
                "mcvd", num_clips=3, num_samples=samples, metric_style="predvdm"
            ),
            pred_frames=PRED,
            source="test",
            keep_videos=0,
            show_progress=False,
            save_predictions=save,
        )

    both = evaluate("out", 2, True)  # 3 clips in batches of 2: the last one padded
    first = evaluate("first", 1, False)
    saved = tmp_path / "out" / "predictions"
    assert sorted(os.listdir(saved)) == ["clips.json", "real", "sample_0", "sample_1"]
    assert both["predictions"]["splits"] == ["real", "sample_0", "sample_1"]
    index = json.loads((saved / "clips.json").read_text())
    assert index["rescore"] == (  # predvdm style: no --config.eval flags, as score_folders below
        "scripts/evaluate.py --real_dir=<out>/predictions/real --fake_dir=<out>/predictions/"
        f"sample_0 --cond_frames={COND} --out=<another folder>"
    )
    for split in ("real", "sample_0", "sample_1"):  # numbered from 1, as every split's shards
        assert sorted(os.listdir(saved / split)) == ["shard_0001.hdf5", "shard_0002.hdf5"]
    real_set = hdf5.VideoShards(str(saved / "real"))
    assert len(real_set) == 3 and real_set.frame_shape == (SIZE, SIZE)
    for k, clip in enumerate(index["clips"]):  # real/ holds the windows scored against
        video, start = clip["test_video"], clip["start_frame"]
        np.testing.assert_array_equal(
            real_set.read_clip(k, 0, COND + PRED)[..., 0],
            videos[video][start : start + COND + PRED],
        )
    # Clip 2 (batch 1, row 0) of sample 1: the real cond frames, then the frames predicted
    # with the key of sample 1, clip 2.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.eval.seed), 1), 2)
    levels = _clip_levels(key[None], (PRED, SIZE, SIZE, 1))
    clip = hdf5.VideoShards(str(saved / "sample_1")).read_clip(2, 0, COND + PRED)
    np.testing.assert_array_equal(clip[:COND], real_set.read_clip(2, 0, COND))
    np.testing.assert_array_equal(clip[COND:], levels[0])

    rescored = [
        run_lib.score_folders(
            str(saved / "real"),
            str(saved / f"sample_{s}"),
            str(tmp_path / f"rescored_{s}"),
            cond_frames=COND,
            batch_size=2,
            fvd=False,
            keep_videos=0,
            show_progress=False,
        )
        for s in range(2)
    ]
    for metric in ("ssim", "psnr"):
        per_frame = first["model"][metric]["per_frame"]["mean"]
        assert rescored[0]["model"][metric]["per_frame"]["mean"] == per_frame
        assert rescored[0]["model"][metric]["mean"] == first["model"][metric]["mean"]
        np.testing.assert_allclose(  # both samples: the mean over samples
            np.mean([r["model"][metric]["per_frame"]["mean"] for r in rescored], axis=0),
            both["model"][metric]["per_frame"]["mean"],
            rtol=1e-12,
        )
    assert rescored[0]["model"]["psnr"] != rescored[1]["model"]["psnr"]

    # A rerun saving one sample replaces the earlier predictions; one without
    # --save_predictions removes them, and only them.
    evaluate("out", 1, True)
    assert sorted(os.listdir(saved)) == ["clips.json", "real", "sample_0"]
    (saved / "mine.txt").write_text("the user's")
    evaluate("out", 1, False)
    assert os.listdir(saved) == ["mine.txt"]
    assert "predictions" not in json.loads((tmp_path / "out" / "metrics.json").read_text())
    with pytest.raises(ValueError, match="not written by --save_predictions"):
        evaluate("out", 1, True)  # a folder of the user's is never written into
    assert os.listdir(saved) == ["mine.txt"] and not os.path.exists(
        saved.parent / "predictions.partial"
    )


def test_the_rescore_command_scores_with_the_evaluations_metric_style_and_fvd_resize():
    """An mcvd evaluation's SSIM/PSNR/LPIPS are MCVD's (the preset's style): re-scoring its
    predictions with the defaults would give other numbers."""
    from predvdm_jax.evaluation import predictions

    config = _tiny_config("unused")
    mcvd = protocol_lib.resolve_protocol("mcvd")
    assert predictions.rescore_command("ev", COND, run_lib.scoring_settings(mcvd, config)) == (
        "scripts/evaluate.py --real_dir=ev/predictions/real --fake_dir=ev/predictions/sample_0 "
        f"--cond_frames={COND} --config.eval.metric_style=mcvd"
    )
    config.eval.fvd_resize = "tf1_bilinear"
    predvdm = protocol_lib.resolve_protocol("predvdm")
    assert predictions.rescore_command("ev", COND, run_lib.scoring_settings(predvdm, config)) == (
        "scripts/evaluate.py --real_dir=ev/predictions/real --fake_dir=ev/predictions/sample_0 "
        f"--cond_frames={COND} --config.eval.fvd_resize=tf1_bilinear"
    )


def test_a_sweep_saves_each_samplers_predictions_in_its_folder(tmp_path, monkeypatch):
    """Each sampler predicts its own frames (here: uint8 levels drawn from the key and the
    step count); --save_predictions with --sweep writes them to OUT/<sampler>/predictions."""
    from predvdm_jax.data.loader import to_model_range
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.evaluation import sweep as sweep_lib
    from predvdm_jax.interop import bundle as bundle_lib

    def make_predict_fn(self, pred_frames, sampling, rgb=False):
        def predict(params, vq_params, cond, key):
            levels = _clip_levels(key, (pred_frames, *cond.shape[2:]), sampling.steps)
            return {"frames": jnp.asarray(to_model_range(levels))}

        return predict

    monkeypatch.setattr(LatentDiffusion, "make_predict_fn", make_predict_fn)
    videos = _videos(5)
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, videos))
    config = bundle.config.copy_and_resolve_references()
    config.eval.batch_size = 2
    samplings = sweep_lib.parse_sweep("steps=2;steps=4", config)
    out = tmp_path / "out"
    run_lib.evaluate_samplers(
        config,
        bundle.params,
        bundle.vq_params,
        str(out),
        samplings,
        protocol=protocol_lib.resolve_protocol("mcvd", num_clips=3, num_samples=2),
        pred_frames=PRED,
        source="test",
        keep_videos=0,
        show_progress=False,
        save_predictions=True,
    )
    key = jax.random.key(config.eval.seed)
    for label, sampling in samplings.items():
        saved = out / label / "predictions"
        assert json.loads((out / label / "metrics.json").read_text())["predictions"]["splits"] == [
            "real",
            "sample_0",
            "sample_1",
        ]
        real = hdf5.VideoShards(str(saved / "real"))
        for sample in range(2):
            split = hdf5.VideoShards(str(saved / f"sample_{sample}"))
            assert len(split) == 3
            for clip in range(3):
                clip_key = jax.random.fold_in(jax.random.fold_in(key, sample), clip)
                expected = _clip_levels(clip_key[None], (PRED, SIZE, SIZE, 1), sampling.steps)[0]
                frames = split.read_clip(clip, 0, COND + PRED)
                np.testing.assert_array_equal(frames[COND:], expected)
                np.testing.assert_array_equal(frames[:COND], real.read_clip(clip, 0, COND))


def test_sampler_sweep_scores_each_sampler_as_its_own_run(tmp_path):
    """Each entry of a sweep gives the numbers of that sampler's own predictions with the
    evaluation's keys (checked by hand for one), over the same clips and baselines."""
    from predvdm_jax.evaluation import sweep as sweep_lib
    from predvdm_jax.interop import bundle as bundle_lib

    videos = _videos(4)
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, videos))
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=VIDEOS)
    samplings = sweep_lib.parse_sweep("eta=0;sampler=dpm_solver_pp,steps=3", bundle.config)
    out = tmp_path / "sweep"
    # What earlier runs into the same folder left: a single evaluation and another sweep; and
    # a file of the user's.
    _earlier_single(out)
    _earlier_sweep(out, ["ddim_2_eta0", "ddim_9_eta1"])
    (out / "notes.txt").write_text("mine")
    swept = run_lib.evaluate_samplers(
        bundle.config,
        bundle.params,
        bundle.vq_params,
        str(out),
        samplings,
        protocol=protocol,
        pred_frames=PRED,
        source="test",
        keep_videos=1,
        show_progress=False,
    )
    dpm, ddim = swept["dpm_solver_pp_3_order2"], swept["ddim_2_eta0"]
    # The clips are the whole videos (clip i is video i): DPM-Solver++'s PSNR from its own
    # predictions, predvdm's mean over every frame's.
    psnr, _ = _model_psnr_by_hand(bundle, videos, 1, samplings["dpm_solver_pp_3_order2"])
    np.testing.assert_allclose(
        dpm["model"]["psnr"]["per_frame"]["mean"], psnr.mean(axis=(0, 1)), rtol=1e-4
    )
    assert dpm["model"]["psnr"]["mean"]["value"] == pytest.approx(psnr.mean(), rel=1e-4)
    assert (
        abs(dpm["model"]["psnr"]["mean"]["value"] - ddim["model"]["psnr"]["mean"]["value"]) > 1e-3
    )
    assert dpm["baselines"] == ddim["baselines"]  # computed once, on the same clips
    stored = np.stack(videos)
    np.testing.assert_allclose(
        dpm["baselines"]["copy_last_frame"]["psnr"]["per_frame"]["mean"],
        _psnr_by_hand(stored[:, COND:], stored[:, COND - 1 : COND]).mean(axis=0),
        rtol=1e-4,
    )
    assert dpm["protocol"]["sampler"] == "dpm_solver_pp, 3 steps, order 2, time_uniform"
    assert sorted(os.listdir(out)) == [
        "ddim_2_eta0",
        "dpm_solver_pp_3_order2",
        "notes.txt",
        "sweep.json",
        "sweep.md",
    ]
    written = json.loads((out / "ddim_2_eta0" / "metrics.json").read_text())
    assert written["model"] == json.loads(json.dumps(ddim["model"]))
    assert "| dpm_solver_pp, 3 steps, order 2, time_uniform |" in (out / "sweep.md").read_text()


def _earlier_single(out):
    (out / "videos").mkdir(parents=True)
    for name in ("metrics.json", "metrics.md", "per_frame.png", "videos/video_0000.gif"):
        (out / name).write_text("an earlier evaluation's")


def _earlier_sweep(out, labels):
    """Each entry with its report and saved predictions (--save_predictions)."""
    from predvdm_jax.evaluation import predictions

    for label in labels:
        (out / label / "predictions" / "real").mkdir(parents=True)
        (out / label / "metrics.json").write_text("{}")
        index = {"written_by": predictions.WRITTEN_BY}
        (out / label / "predictions" / "clips.json").write_text(json.dumps(index))
        hdf5.write_split(str(out / label / "predictions" / "real"), _videos(0)[:1])
    (out / "sweep.json").write_text(json.dumps({label: {} for label in labels}))
    (out / "sweep.md").write_text("an earlier sweep's")


def test_a_test_split_that_cannot_give_the_clips_is_refused_before_predicting(tmp_path):
    """Frames of another size, no split at all, or videos shorter than the clip: one error
    starting with the config field (a bundle's recorded path may be another machine's), and
    for short videos the flag of the script that asks for fewer frames."""
    from predvdm_jax.data.hdf5 import DatasetError
    from predvdm_jax.evaluation import sampling
    from predvdm_jax.interop import bundle as bundle_lib

    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, _videos(5)))
    rng = np.random.default_rng(0)
    splits = {
        "small": rng.integers(0, 256, (COND + PRED, SIZE // 2, SIZE // 2), np.uint8),
        "rgb": rng.integers(0, 256, (COND + PRED, SIZE, SIZE, 3), np.uint8),
        "short": rng.integers(0, 256, (COND + PRED - 1, SIZE, SIZE), np.uint8),
    }
    for name, frames in splits.items():
        hdf5.write_split(str(tmp_path / name), [frames] * 2)
    too_short = (
        rf"{tmp_path / 'short'}: 2 video\(s\) are shorter than the clip length {COND + PRED} "
        rf"\(e.g. video 0 has {COND + PRED - 1} frames\); predict fewer frames \({{script}}\), "
        r"or drop those videos\.$"
    )
    for name, problem in (
        ("small", rf".* holds .* but the model takes data.image_size={SIZE}"),
        ("rgb", rf".* holds .* but the model takes data.image_size={SIZE}"),
        ("missing", rf"Dataset folder '{tmp_path / 'missing'}' does not exist"),
        ("short", too_short),
    ):
        config = bundle.config.copy_and_resolve_references()
        config.data.test_dir = str(tmp_path / name)
        message = f"^data.test_dir: {problem}"
        with pytest.raises(DatasetError, match=message.format(script="evaluate.py --pred_frames")):
            run_lib.evaluate_model(
                config,
                bundle.params,
                bundle.vq_params,
                str(tmp_path / "out"),
                protocol=protocol_lib.resolve_protocol("predvdm", num_clips=2),
                pred_frames=PRED,
                source="test",
                show_progress=False,
            )
        with pytest.raises(DatasetError, match=message.format(script="sample.py --num_frames")):
            sampling.predict_test_clips_or_video(
                bundle_lib.Bundle(config, bundle.params, bundle.vq_params),
                jax.random.PRNGKey(0),
                num_frames=PRED,
                num_clips=2,
            )
    assert not (tmp_path / "out").exists()


def test_gray_as_rgb_scores_the_rgb_decode_against_repeated_frames(tmp_path):
    """PredVDM's grayscale scoring: the VQ's 3 decoded channels against the ground truth
    repeated to 3, checked by hand on the VQ baseline and on the model (its RGB prediction with
    the evaluation's keys); it can only lower the VQ's PSNR. The gray run scores the baselines
    alone (the model's gray scores are test_evaluate_script_on_a_tiny_bundle's)."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop import bundle as bundle_lib

    videos = _videos(5)
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, videos))
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=VIDEOS)
    runs = {}
    for rgb in (False, True):
        config = bundle.config.copy_and_resolve_references()
        config.eval.gray_as_rgb = rgb
        # a model trained on a 2 x 4 mesh: evaluation shards over this process's one device
        config.mesh.data, config.mesh.fsdp = 2, 4
        out = str(tmp_path / f"rgb{rgb}")
        kwargs = dict(protocol=protocol, pred_frames=PRED, source="test", keep_videos=0)
        if rgb:
            runs[rgb] = run_lib.evaluate_model(
                config, bundle.params, bundle.vq_params, out, show_progress=False, **kwargs
            )
        else:
            runs[rgb] = run_lib.evaluate_vq(
                config, bundle.vq_params, out, show_progress=False, **kwargs
            )
    assert runs[True]["protocol"]["grayscale"] == protocol_lib.GRAY_AS_RGB
    assert runs[False]["protocol"]["grayscale"] == protocol_lib.GRAY_AS_GRAY

    # The clips are the whole videos; the mean over clips does not depend on their order.
    model = LatentDiffusion.from_config(bundle.config)
    future = np.stack(videos)[:, COND:, ..., None] / 127.5 - 1.0
    decoded = np.asarray(
        model.decode(bundle.vq_params, model.encode(bundle.vq_params, future), rgb=True)
    )
    assert decoded.shape == future.shape[:-1] + (3,)
    mse = ((decoded - future) ** 2 / 4).mean(axis=(2, 3, 4))  # [0, 1] range: (x+1)/2
    expected = (10 * np.log10(1 / mse)).mean(axis=0)
    vq_psnr = {rgb: run["baselines"]["vq_reconstruction"]["psnr"] for rgb, run in runs.items()}
    np.testing.assert_allclose(vq_psnr[True]["per_frame"]["mean"], expected, rtol=1e-4)
    # The model's RGB prediction (make_predict_fn with rgb, cond frames repeated to 3 channels)
    # against the future repeated to 3; predvdm's mean is over every frame's PSNR.
    psnr, _ = _model_psnr_by_hand(bundle, videos, samples=1, rgb=True)
    model_psnr = runs[True]["model"]["psnr"]
    np.testing.assert_allclose(model_psnr["per_frame"]["mean"], psnr.mean(axis=(0, 1)), rtol=1e-4)
    assert model_psnr["mean"]["value"] == pytest.approx(psnr.mean(), rel=1e-4)
    # Per pixel the RGB error is the gray error plus the variance across the decoded channels.
    assert all(np.less(vq_psnr[True]["per_frame"]["mean"], vq_psnr[False]["per_frame"]["mean"]))
    copy_last = [run["baselines"]["copy_last_frame"] for run in runs.values()]
    for metric in ("ssim", "psnr"):
        np.testing.assert_allclose(
            copy_last[0][metric]["per_frame"]["mean"],
            copy_last[1][metric]["per_frame"]["mean"],
            rtol=1e-5,
        )


@pytest.mark.parametrize("script", ["evaluate.py", "sample.py"])
def test_an_out_that_is_a_file_fails_before_loading_anything(tmp_path, script):
    """The bundle does not even exist: --out is checked first, in one line."""
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    for out, message in ((afile, "is a file"), (afile / "sub", "which is a file")):
        command = [sys.executable, os.path.join(REPO, "scripts", script)]
        command += [f"--bundle={tmp_path / 'no_bundle'}", f"--out={out}"]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert lines[-1].startswith("error: --out") and message in lines[-1], lines[-1]
    assert afile.read_text() == "keep me"


def test_a_set_but_missing_lpips_or_i3d_file_is_an_error_not_a_skip(tmp_path):
    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    for field, tool in (("lpips_params", "convert_lpips.py"), ("i3d_params", "convert_i3d")):
        missing = tmp_path / f"{field}.safetensors"
        command = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py")]
        command += [f"--bundle={bundle_dir}", f"--out={tmp_path / 'eval'}", "--noprogress"]
        command += [f"--config.eval.{field}={missing}", "--config.eval.fvd=True"]
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        last = run.stderr.strip().splitlines()[-1]
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
        assert last.startswith("error: ") and str(missing) in last and tool in last, last
        assert not (tmp_path / "eval").exists()


def _vq_only_command(tmp_path, vq_file, *extra, architecture=True):
    """``evaluate.py --vq_params`` with the tiny VQ's architecture as overrides of the defaults
    (``architecture``; else the file must record it)."""
    command = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py")]
    command += [f"--vq_params={vq_file}", f"--out={tmp_path / 'vq_eval'}", "--noprogress"]
    if architecture:
        command += ["--config.vq.ch=32", "--config.vq.ch_mult=(1,2)"]
        command += ["--config.vq.num_res_blocks=1", "--config.vq.n_embed=16"]
        command += [f"--config.vq.resolution={SIZE}"]
        command += [f"--config.data.image_size={SIZE}", "--config.data.channels=1"]
    command += [f"--config.data.cond_frames={COND}", f"--config.data.test_dir={tmp_path / 'test'}"]
    return command + list(extra)


def test_vq_only_evaluation_gives_a_model_evaluations_baselines(tmp_path, monkeypatch):
    """Same clips, same copy-last-frame and VQ-reconstruction numbers (SSIM, PSNR, every FVD
    variant) as a model evaluation of a bundle holding the VQ; no model row in the reports."""
    from predvdm_jax.interop import bundle as bundle_lib

    _fake_i3d(monkeypatch)
    pred = 10  # I3D takes 10 frames or more: FVD pred-only too
    rng = np.random.default_rng(7)
    videos = [rng.integers(0, 256, (COND + pred, SIZE, SIZE), np.uint8) for _ in range(VIDEOS)]
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, videos))
    config = bundle.config.copy_and_resolve_references()
    config.eval.fvd, config.eval.batch_size = True, 2
    protocol = protocol_lib.resolve_protocol("mcvd", num_clips=VIDEOS, num_samples=2)
    kwargs = dict(protocol=protocol, pred_frames=pred, source="test", show_progress=False)
    full = run_lib.evaluate_model(
        config, bundle.params, bundle.vq_params, str(tmp_path / "full"), keep_videos=0, **kwargs
    )
    vq_only = run_lib.evaluate_vq(
        config, bundle.vq_params, str(tmp_path / "vq"), keep_videos=2, **kwargs
    )
    assert "model" not in vq_only and "throughput" not in vq_only
    assert set(vq_only["baselines"]) == {"copy_last_frame", "vq_reconstruction"}
    for name, entry in full["baselines"].items():
        for metric in ("ssim", "psnr"):
            got = vq_only["baselines"][name][metric]
            assert got["mean"]["value"] == pytest.approx(entry[metric]["mean"]["value"], rel=1e-6)
            np.testing.assert_allclose(
                got["per_frame"]["mean"], entry[metric]["per_frame"]["mean"], rtol=1e-6
            )
        for variant in protocol_lib.FVD_VARIANTS:
            expected = entry["fvd"][variant]
            assert isinstance(expected, dict)  # FVD was computed
            for kind in ("all_samples", "trajectory_mean"):
                got = vq_only["baselines"][name]["fvd"][variant][kind]
                assert got == pytest.approx(expected[kind], rel=1e-5, abs=1e-6)
    assert vq_only["protocol"]["evaluated"] == run_lib.VQ_ONLY
    assert vq_only["protocol"]["num_samples"] == 1
    written = json.loads((tmp_path / "vq" / "metrics.json").read_text())
    assert "model" not in written and set(written["baselines"]) == set(vq_only["baselines"])
    table = (tmp_path / "vq" / "metrics.md").read_text()
    assert "| model |" not in table and "| VQ reconstruction | mean |" in table
    assert "| copy last frame | mean |" in table
    assert (tmp_path / "vq" / "per_frame.png").is_file()
    # The videos show the VQ reconstruction of the true future.
    assert (tmp_path / "vq" / "videos" / "video_0001.gif").is_file()


def test_evaluate_script_vq_params_scores_the_baselines_by_hand(tmp_path):
    """``--vq_params`` of a train_vq.py file, which records the VQ's architecture and frames
    (no overrides needed): copy-last-frame PSNR from the stored frames, VQ-reconstruction PSNR
    from the VQ's own decode."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop import bundle as bundle_lib
    from predvdm_jax.training.vq_trainer import save_vq_params

    videos = _videos(8)
    bundle_dir = _tiny_bundle(tmp_path, videos)
    trained = bundle_lib.load_bundle(bundle_dir)
    save_vq_params(str(tmp_path / "vq_params.safetensors"), trained.vq_params, trained.config)
    command = _vq_only_command(tmp_path, tmp_path / "vq_params.safetensors", architecture=False)
    command += ["--protocol=mcvd", f"--pred_frames={PRED}", f"--num_clips={VIDEOS}"]
    command += ["--config.eval.fvd=False", "--keep_videos=1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "vq_eval" / "metrics.json").read_text())
    assert "model" not in metrics and metrics["protocol"]["name"] == "mcvd"
    assert metrics["protocol"]["source"].startswith("VQ params")
    stored = np.stack(videos)
    copy_last = _psnr_by_hand(stored[:, COND:], stored[:, COND - 1 : COND])
    baselines = metrics["baselines"]
    np.testing.assert_allclose(
        baselines["copy_last_frame"]["psnr"]["per_frame"]["mean"], copy_last.mean(0), rtol=1e-4
    )
    bundle = bundle_lib.load_bundle(bundle_dir)
    model = LatentDiffusion.from_config(bundle.config)
    future = stored[:, COND:, ..., None] / 127.5 - 1.0
    decoded = np.asarray(model.decode(bundle.vq_params, model.encode(bundle.vq_params, future)))
    mse = ((decoded - future) ** 2 / 4).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(
        baselines["vq_reconstruction"]["psnr"]["per_frame"]["mean"],
        (10 * np.log10(1 / mse)).mean(axis=0),
        rtol=1e-4,
    )
    assert "| model |" not in run.stdout and "copy" in run.stdout


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--bundle=b"], ["--bundle"]),
        (["--num_samples=2"], ["--num_samples"]),
        (["--sweep=steps=2"], ["--sweep"]),
        (["--real_dir=r", "--fake_dir=f"], ["--vq_params", "folders"]),
        (["--config.unet.model_channels=8"], ["--config.unet.model_channels"]),
        (["--config.vq.n_embed=32"], ["VQ params", "vq"]),  # not this file's architecture
    ],
)
def test_vq_params_refusals_are_one_error_line(tmp_path, extra, words):
    from predvdm_jax.interop import bundle as bundle_lib

    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    command = _vq_only_command(tmp_path, os.path.join(bundle_dir, bundle_lib.VQ_FILE), *extra)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in run.stderr.strip().splitlines() if line.startswith("error")]
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert len(lines) == 1 and all(word in lines[0] for word in words), lines
    assert not (tmp_path / "vq_eval").exists()


def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_reports(tmp_path, monkeypatch):
    """5 clips in batches of 2, 2 samples, predictions saved: a run stopped after the first
    sample of its second batch was recorded resumes to the same metrics.json (timings aside)
    and the same saved predictions as an uninterrupted run, and leaves no progress behind;
    another evaluation into that OUT is refused while the progress is there."""
    from predvdm_jax.evaluation import progress as progress_lib
    from predvdm_jax.interop import bundle as bundle_lib

    _uint8_predictor(monkeypatch)
    rng = np.random.default_rng(9)
    videos = [rng.integers(0, 256, (COND + PRED + 3, SIZE, SIZE), np.uint8) for _ in range(5)]
    bundle = bundle_lib.load_bundle(_tiny_bundle(tmp_path, videos))
    config = bundle.config.copy_and_resolve_references()
    config.eval.batch_size = 2

    def evaluate(out, samples=2):
        return run_lib.evaluate_model(
            config,
            bundle.params,
            bundle.vq_params,
            str(tmp_path / out),
            protocol=protocol_lib.resolve_protocol("mcvd", num_clips=5, num_samples=samples),
            pred_frames=PRED,
            source="test",
            keep_videos=3,
            show_progress=False,
            save_predictions=True,
        )

    straight = evaluate("straight")
    add_sample = progress_lib.Progress.add_sample

    def add_then_stop(self, batch, system, sample, record):
        add_sample(self, batch, system, sample, record)
        if (batch, sample) == (1, 0):
            raise KeyboardInterrupt  # preempted once batch 1's first sample is on disk

    monkeypatch.setattr(progress_lib.Progress, "add_sample", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate("resumed")
    monkeypatch.setattr(progress_lib.Progress, "add_sample", add_sample)
    assert not os.path.exists(tmp_path / "resumed" / "metrics.json")
    refusal = (
        r"another evaluation, which differs in protocol\.num_samples: 2 \(saved\) vs 3 \(now\):"
    )
    with pytest.raises(ValueError, match=refusal):
        evaluate("resumed", samples=3)
    # progress of the code before per-clip noise keys: refused, not resumed with mixed noise
    run_file = tmp_path / "resumed" / "progress" / "run.json"
    run = json.loads(run_file.read_text())
    older = {**run, "fingerprint": dict(run["fingerprint"])}
    del older["fingerprint"]["noise_keys"]
    run_file.write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"differs in noise_keys: absent \(saved\) vs "):
        evaluate("resumed")
    run_file.write_text(json.dumps(run))
    predicted = []
    predict_fn = protocol_lib.evaluate

    def counting_evaluate(*args, **kwargs):
        predicted.append((len(kwargs["resume"].batches), sorted(kwargs["resume"].samples)))
        return predict_fn(*args, **kwargs)

    monkeypatch.setattr(run_lib, "evaluate", counting_evaluate)
    resumed = evaluate("resumed")
    assert predicted == [(1, [("model", 0)])]  # the rerun resumed at batch 1's sample 1

    for metrics in (straight, resumed):
        metrics.pop("seconds")
        metrics.pop("throughput")
    assert resumed == straight
    out = tmp_path / "resumed"
    assert not os.path.exists(out / "progress") and not os.path.exists(out / "predictions.partial")
    for split in ["real", "sample_0", "sample_1"]:
        mine = hdf5.VideoShards(str(out / "predictions" / split))
        theirs = hdf5.VideoShards(str(tmp_path / "straight" / "predictions" / split))
        assert len(mine) == len(theirs) == 5
        for k in range(5):
            np.testing.assert_array_equal(
                mine.read_clip(k, 0, COND + PRED), theirs.read_clip(k, 0, COND + PRED)
            )
    assert sorted(os.listdir(out / "videos")) == sorted(
        os.listdir(tmp_path / "straight" / "videos")
    )

"""scripts/sample.py end to end on a tiny bundle: test clips and a user's own video."""

import dataclasses
import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import numpy as np
from test_evaluate import COND, PRED, REPO, SIZE, _tiny_bundle, _videos

from predvdm_jax.data import loader
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.evaluation.images import to_uint8
from predvdm_jax.interop import bundle as bundle_lib
from two_processes import run_as_two_processes


def _run(*args, expect_success=True, devices=1):
    command = [sys.executable, os.path.join(REPO, "scripts", "sample.py"), *args]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    if expect_success:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_sample_script_writes_side_by_side_videos(tmp_path):
    videos = _videos(0)
    bundle_dir = _tiny_bundle(tmp_path, videos)

    out = tmp_path / "clips"
    _run(f"--bundle={bundle_dir}", "--num_clips=2", f"--num_frames={PRED}", f"--out={out}")
    gifs = sorted(p for p in os.listdir(out) if p.endswith(".gif"))
    assert gifs == ["video_0000.gif", "video_0001.gif"]
    frames = iio.imread(out / gifs[0], index=None)
    frames = frames if frames.ndim == 3 else frames[..., 0]
    # conditioning + predicted frames; ground truth | prediction side by side (a thin separator).
    assert frames.shape[:2] == (COND + PRED, SIZE) and frames.shape[2] >= 2 * SIZE
    # Test clip 0 is video 0 from frame 0: the left half is its ground truth.
    np.testing.assert_allclose(frames[:, :, :SIZE], videos[0], atol=2)
    assert (out / "grid.png").exists()
    # The right halves are the model's predictions for the test clips, clip i sampled with
    # the --seed key folded with i.
    predicted = _predicted(bundle_dir, [0, 1])
    for index, gif in enumerate(gifs):
        np.testing.assert_allclose(_right_half(out / gif), predicted[index], atol=1, err_msg=gif)

    clip = np.stack([videos[1][t] for t in range(COND + 1)])  # one frame after the cond
    iio.imwrite(tmp_path / "mine.gif", clip, duration=100, loop=0)
    mine = tmp_path / "mine"
    done = _run(
        f"--bundle={bundle_dir}",
        f"--video={tmp_path / 'mine.gif'}",
        "--num_frames=3",
        f"--out={mine}",
    )
    frames = iio.imread(mine / "video_0000.gif", index=None)
    frames = frames if frames.ndim == 3 else frames[..., 0]
    assert frames.shape[:2] == (COND + 3, SIZE) and frames.shape[2] >= 2 * SIZE
    # The user's frames open both halves; the frame after them is the truth half's first
    # future frame, and where the video ends the truth half is black (-1 -> 0).
    np.testing.assert_allclose(frames[:COND, :, :SIZE], clip[:COND], atol=2)
    np.testing.assert_allclose(frames[:COND, :, -SIZE:], clip[:COND], atol=2)
    np.testing.assert_allclose(frames[COND, :, :SIZE], clip[COND], atol=2)
    np.testing.assert_array_equal(frames[COND + 1 :, :, :SIZE], 0)
    assert "ends 1 frame(s) after the conditioning frames" in done.stdout
    assert "blank (black) for the last 2 predicted frames" in done.stdout

    bad = _run(
        f"--bundle={bundle_dir}",
        f"--video={tmp_path / 'missing.gif'}",
        f"--out={tmp_path / 'x'}",
        expect_success=False,
    )
    assert bad.returncode != 0 and "not found" in bad.stderr


def test_sample_launched_as_two_processes_refuses_and_writes_nothing(tmp_path):
    """sample.py predicts on one host's devices: launched as two JAX processes it stops with one
    line, rather than each process predicting every clip and writing the same files."""
    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    out = tmp_path / "clips"
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "sample.py"),
        f"--bundle={bundle_dir}",
        "--num_clips=2",
        f"--num_frames={PRED}",
        f"--out={out}",
    ]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for returncode, stdout, stderr in run_as_two_processes(command, env):
        assert returncode == 1, stdout + stderr[-3000:]
        assert "error: sample.py runs as one process" in stderr, stderr[-3000:]
    assert not out.exists() or not os.listdir(out)


def _predicted(bundle_dir, clips_wanted):
    """uint8 predictions of the wanted test clips, each predicted alone with its documented
    key ``fold_in(PRNGKey(seed 0), clip index)``."""
    bundle = bundle_lib.read_bundle(bundle_dir)
    config = bundle.config
    count = max(clips_wanted) + 1
    test_clips = loader.eval_iterator(
        config.data.test_dir, COND + PRED, count, count, config.eval.seed
    )
    clips = next(test_clips)["video"]
    predict = LatentDiffusion.from_config(config).make_predict_fn(PRED)
    predicted = []
    for clip in clips_wanted:
        key = jax.random.fold_in(jax.random.PRNGKey(0), clip)[None]
        frames = predict(bundle.params, bundle.vq_params, clips[clip : clip + 1, :COND], key)
        predicted.append(to_uint8(np.asarray(frames["frames"]))[0, ..., 0].astype(int))
    return predicted


def _right_half(gif):
    frames = iio.imread(gif, index=None)
    frames = frames if frames.ndim == 3 else frames[..., 0]
    return frames[COND:, :, -SIZE:].astype(int)


def test_a_clips_prediction_depends_neither_on_the_batch_size_nor_the_device_count(tmp_path):
    """One clip per batch on 1 device, and 3 per batch on 2 devices (a padded row): clip i
    samples with fold_in(key, i) either way, so the 3 clips predict the same frames as each
    does alone (another compiled program: a value near .5 of a level may round the other
    way)."""
    bundle_dir = _tiny_bundle(tmp_path, _videos(3))
    gifs = {}
    for devices, batch_size in ((1, 1), (2, 3)):
        out = tmp_path / f"clips_{devices}"
        args = [f"--bundle={bundle_dir}", "--num_clips=3", f"--num_frames={PRED}", f"--out={out}"]
        _run(*args, f"--config.eval.batch_size={batch_size}", devices=devices)
        gifs[devices] = [
            iio.imread(out / f"video_{k:04d}.gif", index=None).astype(int) for k in range(3)
        ]
    for one, two in zip(gifs[1], gifs[2]):
        np.testing.assert_allclose(two, one, rtol=0, atol=1)
        assert np.mean(two == one) >= 0.99
    alone = _predicted(bundle_dir, [2])[0]
    np.testing.assert_allclose(_right_half(tmp_path / "clips_2" / "video_0002.gif"), alone, atol=1)


def test_out_of_range_seeds_are_refused_and_large_ones_not_truncated(tmp_path):
    """Seeds lie in [0, 2**63) as the config's do: -1 and 2**63 stop at once with one line,
    writing nothing; 2**32 samples other frames than 0 (PRNGKey keeps only 32 bits)."""
    for seed in (-1, 2**63):
        out = tmp_path / f"refused_{seed}"
        done = _run("--bundle=missing", f"--seed={seed}", f"--out={out}", expect_success=False)
        assert done.returncode == 1 and not out.exists()
        assert done.stderr.strip().splitlines()[-1] == (
            f"error: flag --seed={seed}: {seed} is not an integer in the range "
            f"[0, {2**63 - 1}] (see --helpshort)"
        )
    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    gifs = {}
    for seed in (0, 2**32):
        out = tmp_path / f"seed_{seed}"
        _run(
            f"--bundle={bundle_dir}",
            "--num_clips=1",
            f"--num_frames={PRED}",
            f"--out={out}",
            f"--seed={seed}",
        )
        gifs[seed] = iio.imread(out / "video_0000.gif", index=None).astype(int)
    np.testing.assert_array_equal(gifs[0][:COND], gifs[2**32][:COND])  # the same clip
    assert np.abs(gifs[0][COND:] - gifs[2**32][COND:]).max() > 8  # other predictions


def test_the_model_source_is_printed_and_what_ran_recorded_in_sample_json(tmp_path):
    """sample.json: the model (as printed), sampler, seed, clips, frames and input; a rerun
    into the same folder replaces it."""
    import json

    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    out = tmp_path / "clips"
    args = [f"--bundle={bundle_dir}", f"--out={out}"]
    done = _run(*args, "--num_clips=2", f"--num_frames={PRED}", "--seed=7")
    model_lines = [line for line in done.stdout.splitlines() if line.startswith("model: ")]
    assert model_lines == [f"model: bundle {os.path.abspath(bundle_dir)}"]
    record = json.loads((out / "sample.json").read_text())
    config = bundle_lib.read_bundle(bundle_dir).config
    assert record == {
        "model": f"bundle {os.path.abspath(bundle_dir)}",
        "step": None,
        "weights": "unknown (the bundle records no source)",  # written before source.json
        "sampler": record["sampler"],
        "sampling": config.sampling.to_dict(),
        "seed": 7,
        "num_clips": 2,
        "cond_frames": COND,
        "pred_frames": PRED,
        "ground_truth_frames": PRED,
        "input": {"test_dir": config.data.test_dir, "clip_seed": config.eval.seed},
        "fps": 10,
    }
    assert record["sampler"].startswith(config.sampling.sampler)
    assert "sample.json" in done.stdout.splitlines()[-1]

    # A bundle that scripts/export.py wrote from step 60 of a run, EMA weights.
    source = bundle_lib.BundleSource("run", str(tmp_path / "run"), "EMA", 60, 60)
    bundle = bundle_lib.read_bundle_files(bundle_dir)
    bundle_lib.save_bundle(bundle_dir, dataclasses.replace(bundle, source=source))
    video = tmp_path / "mine.gif"
    iio.imwrite(video, _videos(1)[0][: COND + 1], duration=100, loop=0)
    _run(*args, f"--video={video}", "--num_frames=3")
    record = json.loads((out / "sample.json").read_text())
    assert record["model"] == f"bundle {os.path.abspath(bundle_dir)} of {source}"
    assert (record["step"], record["weights"]) == (60, "EMA")
    assert record["input"] == {"video": str(video)} and record["seed"] == 0
    assert (record["num_clips"], record["pred_frames"], record["ground_truth_frames"]) == (1, 3, 1)
    assert not [name for name in os.listdir(out) if name.startswith("sample.json.")]


def test_step_and_nouse_ema_reach_the_model_loader(tmp_path):
    """--step and --nouse_ema pick a workdir's checkpoint and weights as in evaluate.py and
    export.py; a bundle holds one set of weights, so with one they are the loader's error."""
    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    out = tmp_path / "clips"
    done = _run(
        f"--bundle={bundle_dir}", "--step=5", "--nouse_ema", f"--out={out}", expect_success=False
    )
    assert done.returncode == 1 and not out.exists()
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: bundle {bundle_dir} holds the one set of weights it was exported with; step=5 "
        "(--step) and use_ema=False (--nouse_ema) apply only to a training workdir's "
        "checkpoints: drop them, or pass the workdir instead of the bundle"
    )
    done = _run(f"--bundle={bundle_dir}", "--step=5", f"--out={out}", expect_success=False)
    assert "step=5 (--step) applies only to a training workdir's checkpoints" in done.stderr


def test_an_empty_video_and_a_model_folder_as_out_are_one_error_line(tmp_path):
    """--video= is an error, not the test clips; a bundle or workdir as --out suggests
    samples/<name>; both before anything is loaded."""
    bundle_dir = _tiny_bundle(tmp_path, _videos(0))
    out = tmp_path / "clips"
    done = _run(f"--bundle={bundle_dir}", "--video=", f"--out={out}", expect_success=False)
    assert done.returncode == 1 and not out.exists()
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --video is empty; pass a video file or a folder of frames, or leave --video out "
        "to predict test clips"
    )
    files = sorted(os.listdir(bundle_dir))
    done = _run(f"--bundle={bundle_dir}", f"--out={bundle_dir}", expect_success=False)
    assert sorted(os.listdir(bundle_dir)) == files
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --out {bundle_dir!r} is an inference bundle; pass a folder of its own for the "
        "outputs (e.g. samples/<name>)"
    )


def test_gifs_merge_identical_frames_that_mp4_and_the_grid_keep(tmp_path):
    """What README says of sample.py's GIFs: Pillow merges identical consecutive frames (no
    option keeps them), the MP4 and the PNG grid hold every one of the COND + PRED frames."""
    from predvdm_jax.evaluation import report

    still = np.zeros((1, PRED, SIZE, SIZE, 1), np.float32)
    cond = np.zeros((1, COND, SIZE, SIZE, 1), np.float32)
    written = report.write_videos(str(tmp_path), still, still, cond, fps=10, max_videos=1)
    assert len(iio.imread(written["gif"][0], index=None)) < COND + PRED
    if written["mp4"]:
        assert len(iio.imread(written["mp4"][0], index=None)) == COND + PRED
    grid = iio.imread(written["grid"])
    assert grid.shape[1] >= (COND + PRED) * SIZE  # one column per frame

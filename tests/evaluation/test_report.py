import json
import os
import re

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from predvdm_jax.evaluation import report


def _hand_metrics():
    def metric(mean, std, curve, best=None):
        entry = {"mean": {"value": mean, "std": std}, "per_frame": {"mean": curve}}
        if best is not None:
            entry["best_of_10"] = {"value": best, "std": 0.01, "ci95": 0.002}
            entry["per_frame"]["best_of_10"] = [best] * len(curve)
        return entry

    return {
        "protocol": {
            "name": "mcvd",
            "num_clips": 256,
            "num_samples": 10,
            "cond_frames": 10,
            "pred_frames": 30,
        },
        "model": {
            "ssim": metric(0.81234, 0.1, [0.9, 0.8], best=0.85),
            "psnr": metric(27.456, 3.2, [29.0, 26.0], best=28.0),
            "lpips": "unavailable: no LPIPS weights",
            "fvd": {
                "cond+pred": {"all_samples": 301.25, "trajectory_mean": 323.04},
                "pred-only": "skipped: I3D weights unavailable",
            },
        },
        "baselines": {
            "copy_last_frame": {
                "ssim": metric(0.5, 0.2, [0.6, 0.4]),
                "psnr": metric(20.0, 1.0, [21.0, 19.0]),
                "lpips": "unavailable: no LPIPS weights",
                "fvd": {"cond+pred": {"all_samples": 900.0, "trajectory_mean": 900.0}},
            },
        },
    }


def test_metrics_json_converts_numpy_and_non_finite(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    report.write_metrics_json(
        str(path),
        {
            "a": np.float32(0.5),
            "b": np.arange(3),
            "c": float("nan"),
            "d": {"e": (np.int64(2), float("inf"))},
        },
    )
    assert json.loads(path.read_text()) == {
        "a": 0.5,
        "b": [0, 1, 2],
        "c": None,
        "d": {"e": [2, None]},
    }
    assert os.listdir(path.parent) == ["metrics.json"]


def test_markdown_table_rows():
    table = report.markdown_table(_hand_metrics())
    lines = table.strip().splitlines()
    assert lines[0].startswith("Protocol `mcvd`: 256 clips × 10 samples, 10 → 30 frames")
    assert lines[2] == (
        "| system | aggregation | SSIM | PSNR | LPIPS | FVD cond+pred (all samples) | "
        "FVD cond+pred (trajectory mean) |"
    )
    assert lines[4] == "| model | mean | 0.8123 ± 0.1000 | 27.46 ± 3.20 | n/a | 301.2 | 323.0 |"
    assert lines[5] == "| model | best of 10 | 0.8500 ± 0.0100 | 28.00 ± 0.01 | n/a |  |  |"
    assert (
        lines[6]
        == "| copy last frame | mean | 0.5000 ± 0.2000 | 20.00 ± 1.00 | n/a | 900.0 | 900.0 |"
    )
    assert lines[8:] == [
        "- LPIPS: unavailable: no LPIPS weights",
        "- FVD pred-only: skipped: I3D weights unavailable",
    ]


def test_the_table_states_the_prediction_speed_or_why_there_is_none():
    metrics = _hand_metrics()
    metrics["throughput"] = {
        "predicted_frames_per_second": 1234.56,
        "measured": "predict calls 2..20 of 20",
        "device": "1 x H100 (gpu)",
    }
    assert report.markdown_table(metrics).strip().splitlines()[-1] == (
        "- Prediction speed: 1235 predicted frames/s, compilation excluded "
        "(predict calls 2..20 of 20; 1 x H100 (gpu))"
    )
    metrics["throughput"] = {"predicted_frames_per_second": None, "measured": "not measured: x"}
    assert report.markdown_table(metrics).strip().splitlines()[-1] == (
        "- Prediction speed: not measured: x"
    )


def test_per_frame_curves_and_plot(tmp_path):
    curves = report.per_frame_curves(_hand_metrics())
    assert set(curves) == {"ssim", "psnr"}  # LPIPS unavailable: no curve
    assert curves["ssim"] == {
        "model (mean)": [0.9, 0.8],
        "model (best of 10)": [0.85, 0.85],
        "copy last frame": [0.6, 0.4],
    }
    two_panels = report.plot_per_frame(str(tmp_path / "two.png"), curves, first_frame=11)
    curves["lpips"] = {"model (mean)": [0.1, 0.2]}
    three_panels = report.plot_per_frame(str(tmp_path / "three.png"), curves, first_frame=11)
    # One 4.5-inch panel per metric at 100 dpi.
    assert Image.open(two_panels).size == (900, 360)
    assert Image.open(three_panels).size == (1350, 360)
    with pytest.raises(ValueError, match="no per-frame curves"):
        report.plot_per_frame(str(tmp_path / "none.png"), {})


def _model_range(values):
    return values.astype(np.float32) / 127.5 - 1.0


def test_write_videos_grayscale_side_by_side(tmp_path):
    rng = np.random.default_rng(0)
    cond = rng.integers(0, 256, (3, 2, 8, 6, 1), dtype=np.uint8)
    real = rng.integers(0, 256, (3, 4, 8, 6, 1), dtype=np.uint8)
    fake = rng.integers(0, 256, (3, 4, 8, 6, 1), dtype=np.uint8)
    written = report.write_videos(
        str(tmp_path), _model_range(real), _model_range(fake), _model_range(cond), max_videos=2
    )
    assert [os.path.basename(p) for p in written["gif"]] == ["video_0000.gif", "video_0001.gif"]
    gif = iio.imread(written["gif"][1], index=None, mode="L")
    assert gif.shape == (6, 8, 6 + 2 + 6)
    white = np.full((8, 2), 255, np.uint8)
    np.testing.assert_array_equal(
        gif[0], np.concatenate([cond[1, 0, ..., 0], white, cond[1, 0, ..., 0]], axis=1)
    )
    np.testing.assert_array_equal(
        gif[5], np.concatenate([real[1, 3, ..., 0], white, fake[1, 3, ..., 0]], axis=1)
    )

    grid = Image.open(written["grid"])
    assert grid.mode == "L"
    grid = np.asarray(grid)
    assert grid.shape == (4 * 8 + 3 * 2, 6 * 6 + 5 * 2)
    np.testing.assert_array_equal(
        grid[:8, 2 * 8 : 2 * 8 + 6], real[0, 0, ..., 0]
    )  # row 0 = truth of video 0
    np.testing.assert_array_equal(grid[3 * 10 : 3 * 10 + 8, 5 * 8 : 5 * 8 + 6], fake[1, 3, ..., 0])


def test_mp4_holds_the_side_by_side_frames_padded_to_an_even_size(tmp_path):
    """H.264 is lossy: a smooth gray clip of odd height comes back within a few levels, with
    one white row added below (yuv420p needs even sizes)."""
    pytest.importorskip("imageio_ffmpeg")
    yy, xx = np.meshgrid(np.linspace(-1, 1, 33), np.linspace(-1, 1, 32), indexing="ij")
    real = np.stack([np.sin(3 * yy + t) * np.cos(2 * xx) for t in range(4)])[None, ..., None]
    real = (0.9 * real).astype(np.float32)
    written = report.write_videos(str(tmp_path), real, -real, fps=5)
    assert written["notes"] == [] and len(written["mp4"]) == 1
    mp4 = iio.imread(written["mp4"][0], index=None, plugin="FFMPEG")
    assert mp4.shape == (4, 34, 32 + 2 + 32, 3)
    side_by_side = iio.imread(written["gif"][0], index=None, mode="L").astype(np.float64)
    error = np.abs(mp4[:, :33].astype(np.float64) - side_by_side[..., None])
    assert error.mean() < 4 and np.percentile(error, 99) < 16
    assert mp4[:, 33].mean() > 240  # the padding row


def test_writing_an_mp4_with_jax_initialised_emits_no_fork_warning(tmp_path, recwarn):
    """ffmpeg's subprocess start forks (imageio-ffmpeg passes a preexec_fn), on which JAX warns
    of a deadlock; ffmpeg is exec'd at once, so the warning is dropped around that write."""
    pytest.importorskip("imageio_ffmpeg")
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # JAX's backend (and its at-fork warning) is initialised
    clip = np.zeros((1, 2, 4, 4, 1), np.float32)
    written = report.write_videos(str(tmp_path), clip, clip, fps=5)
    assert len(written["mp4"]) == 1
    assert not [w for w in recwarn if "os.fork() was called" in str(w.message)]


def test_without_imageio_ffmpeg_mp4_is_skipped_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "mp4_writer_available", lambda: False)
    written = report.write_videos(
        str(tmp_path), np.zeros((1, 2, 4, 4, 1), np.float32), np.zeros((1, 2, 4, 4, 1), np.float32)
    )
    assert written["mp4"] == [] and "pip install imageio-ffmpeg" in written["notes"][0]
    assert sorted(os.listdir(tmp_path)) == ["grid.png", "video_0000.gif"]


def test_a_write_that_fails_part_way_leaves_the_earlier_outputs_as_they_were(tmp_path, monkeypatch):
    """The third file (the second GIF) fails, as on a full disk: the first run's videos and
    grid stay, byte for byte, not half replaced by the second run's, and no staging is left."""
    monkeypatch.setattr(report, "mp4_writer_available", lambda: False)
    first = np.full((2, 2, 4, 4, 1), -0.5, np.float32)
    report.write_videos(str(tmp_path), first, first)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    assert sorted(before) == ["grid.png", "video_0000.gif", "video_0001.gif"]

    calls = []
    squeeze = report._squeeze_gray

    def failing(frames):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return squeeze(frames)

    monkeypatch.setattr(report, "_squeeze_gray", failing)
    with pytest.raises(OSError, match="No space left"):
        report.write_videos(str(tmp_path), -first, -first)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_write_videos_rgb_and_errors(tmp_path):
    video = np.linspace(-1, 1, 2 * 3 * 4 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 4, 3)
    fake = -video[:, ::-1]  # another RGB video, so that the halves cannot be swapped unseen
    written = report.write_videos(str(tmp_path), video, fake)
    to_pixels = lambda v: np.round((v.astype(np.float64) + 1) * 127.5).astype(np.uint8)
    white = np.full((3, 4, 2, 3), 255, np.uint8)
    for index in range(2):
        gif = iio.imread(written["gif"][index], index=None)
        assert gif.shape == (3, 4, 4 + 2 + 4, 3)
        np.testing.assert_array_equal(
            gif, np.concatenate([to_pixels(video[index]), white, to_pixels(fake[index])], axis=2)
        )

    grid = np.asarray(Image.open(written["grid"]))
    assert grid.shape == (4 * 4 + 3 * 2, 3 * 4 + 2 * 2, 3)
    expected = np.full(grid.shape, 255, np.uint8)  # white gaps between frames and rows
    for row, frames in enumerate([video[0], fake[0], video[1], fake[1]]):
        for t in range(3):
            expected[row * 6 : row * 6 + 4, t * 6 : t * 6 + 4] = to_pixels(frames[t])
    np.testing.assert_array_equal(grid, expected)
    with pytest.raises(ValueError, match="same shape"):
        report.write_videos(str(tmp_path), video, video[:, :2])


def test_a_rerun_with_fewer_videos_leaves_only_its_own(tmp_path):
    video = np.zeros((3, 2, 4, 4, 1), np.float32)
    report.write_videos(str(tmp_path), video, video, max_videos=3)
    (tmp_path / "video_0002.mp4").write_bytes(b"an earlier run's mp4")
    (tmp_path / "mine.gif").write_bytes(b"not ours")
    (tmp_path / "video_notes.txt").write_text("not ours")
    written = report.write_videos(str(tmp_path), video[:1], video[:1])
    assert [os.path.basename(p) for p in written["gif"]] == ["video_0000.gif"]
    left = sorted(p for p in os.listdir(tmp_path) if p.startswith("video_"))
    assert left == sorted(
        ["video_0000.gif", "video_notes.txt"] + [os.path.basename(p) for p in written["mp4"]]
    )
    assert (tmp_path / "mine.gif").exists() and (tmp_path / "grid.png").exists()

    # An evaluation that keeps no videos clears the earlier run's from OUT/videos.
    out = tmp_path / "eval"
    report.write_evaluation(str(out), _hand_metrics(), {"real": video, "fake": video})
    assert os.listdir(out / "videos")
    (out / "videos" / "keep.txt").write_text("the user's")
    report.write_evaluation(str(out), _hand_metrics(), None)
    assert os.listdir(out / "videos") == ["keep.txt"]
    os.remove(out / "videos" / "keep.txt")
    report.write_evaluation(str(out), _hand_metrics(), {"real": video, "fake": video})
    report.write_evaluation(str(out), _hand_metrics(), None)
    assert not (out / "videos").exists()  # emptied: the folder goes too


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    report.check_output_dir(str(tmp_path / "new" / "deeper"))  # a new folder is fine
    report.check_output_dir(str(tmp_path))  # so is an existing one
    with pytest.raises(ValueError, match="is a file"):
        report.check_output_dir(str(afile))
    with pytest.raises(ValueError, match="which is a file, not a folder"):
        report.check_output_dir(str(afile / "sub"))
    video = np.zeros((1, 2, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="is a file"):
        report.write_videos(str(afile), video, video)
    with pytest.raises(ValueError, match="is a file"):
        report.write_evaluation(str(afile), _hand_metrics(), None)
    assert afile.read_text() == "keep me"


def test_a_bundle_training_workdir_or_data_split_is_no_output_folder(tmp_path):
    from predvdm_jax.data import hdf5, manifest

    split = tmp_path / "data" / "test"
    hdf5.write_split(str(split), [np.zeros((2, 4, 4), np.uint8)])
    with pytest.raises(ValueError) as err:
        report.check_output_dir(str(split))
    assert str(err.value) == (
        f"--out {str(split)!r} is a data split (it holds shard files); pass a folder of its "
        f"own for the outputs (e.g. eval/<name>)"
    )
    with pytest.raises(hdf5.DatasetError, match="is a data split .* not a dataset's folder"):
        manifest.check_out_dir(str(split))  # a dataset's root: make_moving_digits, converters
    manifest.check_out_dir(str(tmp_path / "data"))
    assert os.listdir(split) == ["shard_0001.hdf5"]

    bundle, run = tmp_path / "bundle", tmp_path / "run"
    bundle.mkdir()
    for name in ("config.json", "denoiser.safetensors"):
        (bundle / name).write_text(name)
    (run / "checkpoints" / "40").mkdir(parents=True)  # Orbax's step folder
    for path, what in ((bundle, "an inference bundle"), (run, "a training workdir")):
        with pytest.raises(ValueError) as err:
            report.check_output_dir(str(path))
        assert str(err.value) == (
            f"--out {str(path)!r} is {what}; pass a folder of its own for the outputs "
            f"(e.g. eval/<name>)"
        )
    assert sorted(os.listdir(bundle)) == ["config.json", "denoiser.safetensors"]
    inside = {
        bundle / "eval": f"is inside the bundle {bundle}",
        run / "checkpoints" / "eval": f"is inside {run / 'checkpoints'}, the checkpoints of a "
        "training workdir",
    }
    for path, problem in inside.items():
        with pytest.raises(ValueError, match=f"^--out {re.escape(repr(str(path)))} {problem};"):
            report.check_output_dir(str(path))
    report.check_output_dir(str(run / "eval"))  # a folder of its own inside a workdir is fine
    # A folder merely named checkpoints (a mount, PredVDM's logs/<run>/checkpoints) is no run's.
    (tmp_path / "mnt" / "checkpoints" / "last.ckpt").mkdir(parents=True)
    report.check_output_dir(str(tmp_path / "mnt" / "checkpoints" / "predvdm" / "eval"))
    report.check_output_dir(str(tmp_path / "mnt"))


def test_write_evaluation_writes_every_video_it_is_given(tmp_path):
    """write_videos' default cap (8) must not cut an evaluation's --keep_videos."""
    videos = np.linspace(-1, 1, 11 * 2 * 4 * 4, dtype=np.float32).reshape(11, 2, 4, 4, 1)
    report.write_evaluation(str(tmp_path), _hand_metrics(), {"real": videos, "fake": -videos})
    gifs = sorted(p for p in os.listdir(tmp_path / "videos") if p.endswith(".gif"))
    assert gifs == [f"video_{i:04d}.gif" for i in range(11)]
    grid = np.asarray(Image.open(tmp_path / "videos" / "grid.png"))
    assert grid.shape[0] == 22 * 4 + 21 * 2  # two rows per video

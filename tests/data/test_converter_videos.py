"""``prepare_data.py --dataset=videos``: your own video files and frame folders, one folder per
split, cropped and resized as ``sample.py --video`` does."""

import os

import numpy as np
import pytest
from PIL import Image

from predvdm_jax.data import converters, hdf5
from predvdm_jax.data.converters import SourceError
from tests.data.test_data_scripts import _run

pytest.importorskip("imageio_ffmpeg")


def _square(frame, size, mode):
    """The reference: the central square of an RGB frame, PIL's Lanczos, then ``mode``."""
    h, w = frame.shape[:2]
    s = min(h, w)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    image = Image.fromarray(frame).crop(box).resize((size, size), Image.LANCZOS)
    return np.asarray(image.convert(mode))


def _write_video(path, values):
    """A 12x20 video whose frame ``t`` is a horizontal ramp plus ``values[t]``."""
    import imageio.v2 as imageio_v2

    ramp = np.linspace(0, 100, 20).astype(np.uint8)[None, :, None]
    frames = [np.broadcast_to(ramp + v, (12, 20, 3)).copy() for v in values]
    imageio_v2.mimwrite(str(path), frames, format="FFMPEG", fps=10, macro_block_size=1)


def _make_source(root):
    """train: v2.avi (5 frames), v3/ (4 PNGs), v10.mp4 (7 frames); test: one PNG folder."""
    rng = np.random.default_rng(0)
    pngs = {}
    for split, name, count in (("train", "v3", 4), ("test", "only", 3)):
        os.makedirs(root / split / name)
        pngs[split] = [rng.integers(0, 256, (10, 16, 3), dtype=np.uint8) for _ in range(count)]
        for t, frame in enumerate(pngs[split]):  # frame_10 after frame_2: natural order
            Image.fromarray(frame).save(root / split / name / f"frame_{t}.png")
    _write_video(root / "train" / "v2.avi", [20 * t for t in range(5)])
    _write_video(root / "train" / "v10.mp4", [10 * t for t in range(7)])
    (root / "train" / "notes.txt").write_text("not a video")
    return pngs


def _decoded(path):
    import imageio.v3 as iio

    return np.asarray(iio.imread(str(path), index=None))


def test_videos_are_converted_per_split_and_resumed(tmp_path):
    pngs = _make_source(tmp_path / "src")
    out = tmp_path / "out"
    args = ["--dataset=videos", f"--src={tmp_path / 'src'}", f"--out={out}", "--num_workers=2"]
    printed = _run("prepare_data.py", *args, "--image_size=8", ok=True)
    assert "train: 3 videos, 16 frames" in printed and "test: 1 videos, 3 frames" in printed
    assert "note: train: ignored 1 other file(s), e.g. 'notes.txt'." in printed
    train = hdf5.VideoShards(str(out / "train"))
    np.testing.assert_array_equal(train.frame_counts, [5, 4, 7])  # v2, v3, v10
    clips = [train.read_clip(i, 0, int(n)) for i, n in enumerate(train.frame_counts)]
    assert all(clip.shape[1:] == (8, 8, 3) and clip.dtype == np.uint8 for clip in clips)
    np.testing.assert_array_equal(clips[1], np.stack([_square(f, 8, "RGB") for f in pngs["train"]]))
    for clip, name in ((clips[0], "v2.avi"), (clips[2], "v10.mp4")):  # lossy: as decoded
        decoded = _decoded(tmp_path / "src" / "train" / name)
        assert len(decoded) == len(clip)
        np.testing.assert_array_equal(clip[0], _square(decoded[0], 8, "RGB"))
        np.testing.assert_array_equal(clip[-1], _square(decoded[-1], 8, "RGB"))
    test = hdf5.VideoShards(str(out / "test"))
    np.testing.assert_array_equal(
        test.read_clip(0, 0, 3), np.stack([_square(f, 8, "RGB") for f in pngs["test"]])
    )

    again = converters.convert(
        "videos", str(tmp_path / "src"), str(out), progress=False, image_size=8
    )
    assert again.split("train").reused_shards == 1 and again.split("train").converted_videos == 0
    assert _run("prepare_data.py", *args, "--image_size=16") == (
        f"error: {out} holds a conversion made with other settings (options.image_size "
        f"differ); use a new --out folder or delete {out} to start over."
    )


def test_gray_gives_one_channel(tmp_path):
    pngs = _make_source(tmp_path / "src")
    out = str(tmp_path / "gray")
    summary = converters.convert(
        "videos", str(tmp_path / "src"), out, progress=False, image_size=8, gray=True
    )
    assert summary.split("train").num_videos == 3
    train = hdf5.VideoShards(os.path.join(out, "train"))
    clip = train.read_clip(1, 0, 4)
    assert clip.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(
        clip[..., 0], np.stack([_square(f, 8, "L") for f in pngs["train"]])
    )
    first = _decoded(tmp_path / "src" / "train" / "v2.avi")[0]
    np.testing.assert_array_equal(train.read_clip(0, 0, 1)[0, ..., 0], _square(first, 8, "L"))


def test_bad_sources_are_one_line_errors(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "train" / "a")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "train" / "a" / "0.png")
    os.makedirs(src / "test")
    out = f"--out={tmp_path / 'out'}"
    assert _run("prepare_data.py", "--dataset=videos", f"--src={src}", out) == (
        f"error: videos: split folder {str(src / 'test')!r} holds no videos (.gif, .mp4, .avi, "
        f".mov, .mkv, .webm, .m4v, .mpg, .mpeg, .wmv files or frame folders); add some or "
        f"remove it."
    )
    assert _run("prepare_data.py", "--dataset=kth", f"--src={src}", "--gray", out) == (
        "error: kth does not take --gray (its options: --kth_split, --kth_crop, --image_size); "
        "remove it."
    )
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(SourceError, match="has no split folders; expected one sub-folder"):
        converters.make_plan("videos", str(src / "train" / "a"))
    (src / "test" / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError, match=r"cannot decode '.*broken\.mp4' as a video"):
        converters.convert("videos", str(src), str(tmp_path / "out2"), progress=False)

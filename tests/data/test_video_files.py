"""A user's own video for ``sample.py --video``: folders of frame images and video files."""

import numpy as np
import pytest
from PIL import Image

from predvdm_jax.data import video_files


def _write_frames(folder, sizes):
    """Frame ``t`` (``frame_t.png``, not zero-padded) is filled with the value ``20 * t``."""
    folder.mkdir()
    for t, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 20 * t, np.uint8)).save(folder / f"frame_{t}.png")


def test_folder_frames_are_in_numeric_order(tmp_path):
    _write_frames(tmp_path / "clip", [(8, 8)] * 12)
    clip = video_files.read_clip(str(tmp_path / "clip"), 8, 1, 12)
    assert clip.shape == (12, 8, 8, 1)
    values = np.round((clip[:, 0, 0, 0] + 1) * 127.5).astype(int)
    np.testing.assert_array_equal(values, 20 * np.arange(12))


def test_folder_frames_of_another_size_are_refused(tmp_path):
    _write_frames(tmp_path / "clip", [(8, 8)] * 2 + [(8, 12)] + [(8, 8)] * 9)
    with pytest.raises(
        ValueError,
        match=r"frame_2.png' is 12x8 but 'frame_0.png', the first "
        r"frame, is 8x8; every frame",
    ):
        video_files.read_clip(str(tmp_path / "clip"), 8, 3, 4)


@pytest.mark.parametrize("channels", [3, 1])
def test_frames_are_center_cropped_and_lanczos_resized(tmp_path, channels):
    (tmp_path / "clip").mkdir()
    rng = np.random.default_rng(0)
    references = []
    for t in range(3):
        path = tmp_path / "clip" / f"{t}.png"
        Image.fromarray(rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)).save(path)
        with Image.open(path) as image:  # the central 10x10 of the 16x10 frame, then Lanczos
            square = image.crop((3, 0, 13, 10)).resize((8, 8), Image.LANCZOS)
            references.append(np.asarray(square.convert("RGB" if channels == 3 else "L")))
    clip = video_files.read_clip(str(tmp_path / "clip"), 8, channels, 3)
    expected = np.stack(references).reshape(3, 8, 8, channels)
    np.testing.assert_array_equal(np.round((clip + 1) * 127.5).astype(np.uint8), expected)


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".gif"])
def test_video_files_are_read_in_frame_order(tmp_path, suffix):
    """Frame ``t`` is a flat gray ``30 * t``; MP4 and AVI are lossy, so within a few levels."""
    if suffix != ".gif":
        pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio_v2

    frames = [np.full((16, 24, 3), 30 * t, np.uint8) for t in range(8)]
    path = str(tmp_path / f"clip{suffix}")
    if suffix == ".gif":
        imageio_v2.mimwrite(path, frames, duration=100, loop=0)
    else:
        imageio_v2.mimwrite(path, frames, format="FFMPEG", fps=10, macro_block_size=1)
    clip = video_files.read_clip(path, 8, 1, 6)
    assert clip.shape == (6, 8, 8, 1)
    levels = (clip.astype(np.float64) + 1) * 127.5
    np.testing.assert_allclose(levels.mean(axis=(1, 2, 3)), 30 * np.arange(6), atol=3)
    assert np.ptp(levels, axis=(1, 2, 3)).max() < 4  # each frame stays flat


def test_max_frames_reads_past_the_conditioning_frames_as_far_as_the_video_goes(tmp_path):
    _write_frames(tmp_path / "clip", [(8, 8)] * 5)
    values = lambda clip: np.round((clip[:, 0, 0, 0] + 1) * 127.5).astype(int)
    np.testing.assert_array_equal(
        values(video_files.read_clip(str(tmp_path / "clip"), 8, 1, 2, max_frames=4)),
        20 * np.arange(4),
    )
    longer = video_files.read_clip(str(tmp_path / "clip"), 8, 1, 2, max_frames=9)
    np.testing.assert_array_equal(values(longer), 20 * np.arange(5))
    with pytest.raises(ValueError, match="has 5 frames; at least 6 are needed"):
        video_files.read_clip(str(tmp_path / "clip"), 8, 1, 6, max_frames=9)


def test_16_bit_gray_frames_are_scaled_to_8_bits_and_float_frames_refused(tmp_path):
    """PIL's convert("RGB") clips 16-bit values above 255 (a white clip); they are scaled."""
    (tmp_path / "clip").mkdir()
    for t in range(3):
        frame = np.full((8, 8), 256 * 40 * t + 255, np.uint16)
        Image.fromarray(frame).save(tmp_path / "clip" / f"{t}.png")
        with Image.open(tmp_path / "clip" / f"{t}.png") as image:
            assert image.mode.startswith("I")  # stored and read back as 16-bit
    clip = video_files.read_clip(str(tmp_path / "clip"), 8, 1, 3)
    levels = np.round((clip[:, 0, 0, 0] + 1) * 127.5).astype(int)
    np.testing.assert_array_equal(levels, 40 * np.arange(3))

    (tmp_path / "float").mkdir()
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float" / "0.tif")
    with pytest.raises(ValueError, match=r"0\.tif' holds float pixels, whose range is unknown"):
        video_files.read_clip(str(tmp_path / "float"), 8, 1, 1)


def test_video_files_of_16_bit_frames_are_scaled_and_of_float_frames_refused(tmp_path):
    """A multi-page TIFF decodes to its stored dtype: 16-bit levels are scaled to 8 bits (as
    for frame images), floats of unknown range are one clear error, not a PIL TypeError."""
    iio = pytest.importorskip("imageio.v3")
    video = np.stack([np.full((8, 8, 3), 256 * 40 * t + 255, np.uint16) for t in range(3)])
    iio.imwrite(tmp_path / "wide.tif", video)
    clip = video_files.read_clip(str(tmp_path / "wide.tif"), 8, 3, 3)
    levels = np.round((clip[:, 0, 0, 0] + 1) * 127.5).astype(int)
    np.testing.assert_array_equal(levels, 40 * np.arange(3))
    iio.imwrite(tmp_path / "float.tif", np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(
        ValueError,
        match=r"float\.tif' decoded to float32 frames, whose range is unknown; save the video "
        r"with 8- or 16-bit frames\.$",
    ):
        video_files.read_clip(str(tmp_path / "float.tif"), 8, 3, 3)


def test_reading_an_mp4_with_jax_initialised_emits_no_fork_warning(tmp_path, recwarn):
    """Like writing one (test_report): ffmpeg's start forks, on which JAX warns of a deadlock;
    ffmpeg is exec'd at once, so the warning is dropped around that read."""
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v3 as iio
    import jax.numpy as jnp

    frames = np.full((4, 16, 16, 3), 128, np.uint8)
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=5)
    jnp.zeros(1).block_until_ready()  # JAX's backend (and its at-fork warning) is initialised
    recwarn.clear()  # the write's own ffmpeg start, when an earlier test initialised JAX
    clip = video_files.read_clip(str(tmp_path / "clip.mp4"), 16, 3, 2, max_frames=4)
    assert clip.shape == (4, 16, 16, 3) and np.abs(clip - (128 / 127.5 - 1)).max() < 0.05
    assert not [w for w in recwarn if "os.fork() was called" in str(w.message)]


def test_only_the_needed_frames_of_a_folder_are_read(tmp_path):
    """Frames after ``max_frames`` are never opened: a folder whose later files are not images
    reads; the frames are the first ones of the whole folder's read."""
    _write_frames(tmp_path / "clip", [(8, 8)] * 6)
    whole = video_files.read_clip(str(tmp_path / "clip"), 8, 1, 6)
    for t in range(4, 6):
        (tmp_path / "clip" / f"frame_{t}.png").write_text("not an image")
    clip = video_files.read_clip(str(tmp_path / "clip"), 8, 1, 2, max_frames=4)
    np.testing.assert_array_equal(clip, whole[:4])


def test_only_the_needed_frames_of_a_video_file_are_decoded(tmp_path):
    """A GIF cut inside its 9th frame fails a whole read, but its first 4 frames (all that
    cond + pred frames need) decode, equal to those of the intact file."""
    frames = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp_path / "whole.gif", save_all=True, append_images=images[1:], duration=100)
    data = (tmp_path / "whole.gif").read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match="cannot decode"):
        video_files.read_clip(str(tmp_path / "cut.gif"), 16, 3, 12)
    clip = video_files.read_clip(str(tmp_path / "cut.gif"), 16, 3, 2, max_frames=4)
    whole = video_files.read_clip(str(tmp_path / "whole.gif"), 16, 3, 12)
    np.testing.assert_array_equal(clip, whole[:4])
    levels = np.round((clip + 1) * 127.5).astype(np.uint8)  # a 16x16 GIF of 256 colours: exact
    np.testing.assert_array_equal(levels, frames[:4])


def test_an_mp4_without_the_ffmpeg_plugin_names_the_install(tmp_path):
    """A valid MP4 when imageio-ffmpeg is not installed (hidden from a fresh interpreter): the
    missing plugin and its extra, not a damaged file."""
    pytest.importorskip("imageio_ffmpeg")
    import subprocess
    import sys

    import imageio.v3 as iio

    iio.imwrite(tmp_path / "clip.mp4", np.zeros((4, 16, 16, 3), np.uint8), fps=5)
    code = (
        "import sys; sys.modules['imageio_ffmpeg'] = None\n"
        "from predvdm_jax.data import video_files\n"
        f"try: video_files.read_clip({str(tmp_path / 'clip.mp4')!r}, 8, 1, 2)\n"
        "except ValueError as err: print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == (
        f"cannot decode {str(tmp_path / 'clip.mp4')!r}: reading MP4/AVI needs the imageio-ffmpeg "
        "plugin, which is not installed; install it with pip install -e '.[video]' in the "
        "project's folder, or pass a GIF or a folder of frame images."
    ), done.stderr[-2000:]


def test_a_video_shorter_than_the_conditioning_frames_names_the_fix(tmp_path):
    _write_frames(tmp_path / "clip", [(8, 8)] * 3)
    with pytest.raises(
        ValueError,
        match=r"has 3 frames; at least 4 are needed \(the conditioning frames\): pass a longer "
        r"video, or use a model with fewer conditioning frames\.$",
    ):
        video_files.read_clip(str(tmp_path / "clip"), 8, 1, 4)


def test_a_long_video_is_cropped_and_resized_frame_by_frame_as_decoded(tmp_path):
    """`square_frames` (prepare_data.py --dataset=videos reads whole videos) never holds the
    full-size frames of a video all at once: 96 frames of 256x256 RGB are 18.9 MB."""
    import tracemalloc

    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (96, 256, 256, 3), np.uint8)
    path = str(tmp_path / "long.gif")
    iio.imwrite(path, frames, duration=40, loop=0)
    del frames
    tracemalloc.start()
    try:
        squares = video_files.square_frames(path, 8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert squares.shape == (96, 8, 8, 3) and squares.dtype == np.uint8
    assert peak < 6e6, f"{peak / 1e6:.1f} MB"


def test_the_fork_warning_filter_is_kept_while_any_thread_decodes_and_then_removed():
    """Threads entering and leaving out of order (the videos converter's decoders): with
    `warnings.catch_warnings` the second to leave restored a list that still held the filter."""
    import threading
    import warnings

    before = list(warnings.filters)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with video_files.without_jax_fork_warning():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with video_files.without_jax_fork_warning():
            second_in.set()
            first_out.wait(10)
            seen["inside"] = len(warnings.filters) == len(before) + 1

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"inside": True}  # still filtered while the second thread decodes
    assert warnings.filters == before

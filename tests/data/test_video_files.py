"""A user's own video for ``sample.py --video``: folders of frame images."""

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

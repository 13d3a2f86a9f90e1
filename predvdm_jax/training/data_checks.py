"""Up-front checks that a split's frames are the size and channel count the config trains on,
so a mismatch is one ``DatasetError`` before the first step (not a model trained for other
frames, or a shape error at the first preview)."""

from __future__ import annotations

from typing import Any

from predvdm_jax.data.hdf5 import DatasetError, VideoShards
from predvdm_jax.data.loader import check_frame_size


def check_split_frames(split_dir: str, config: Any, field: str) -> VideoShards:
    """Opens the frame split ``split_dir`` (config field ``data.<field>``) and raises
    ``DatasetError`` naming the folder, its frames' size and the config's unless its frames are
    ``data.image_size``² with ``data.channels``; returns the opened split."""
    try:
        shards = VideoShards(split_dir)
    except DatasetError as err:
        raise DatasetError(f"data.{field}: {err}") from None
    try:
        check_frame_size(shards, int(config.data.image_size), int(config.data.channels))
    except DatasetError as err:
        height, width = shards.frame_shape[:2]
        if field != "train_dir":
            fix = (
                f", or point --config.data.{field} at a split of the training data's frame size "
                f"and channels"
            )
        elif height == width:  # the config can take these frames: name only what differs
            overrides = [
                f"--config.data.{name}={value}"
                for name, value in (("image_size", height), ("channels", shards.channels))
                if value != int(config.data[name])
            ]
            fix = f", or train a model for these frames with {' '.join(overrides)}"
        else:  # non-square frames: only a split prepared square fits
            fix = ""
        raise DatasetError(f"data.{field}: {err}{fix}.") from None
    return shards

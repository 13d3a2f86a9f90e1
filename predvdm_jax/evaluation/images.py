"""Frames as pictures: [-1, 1] values to [0, 1] or uint8, and rows of frames in one image."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SEPARATOR_PIXELS = 2


def to_unit_range(video: Any) -> jax.Array:
    """[-1, 1] frames (clamped first) → [0, 1], as PredVDM's ``log_videos`` does."""
    return (jnp.clip(video, -1.0, 1.0) + 1.0) / 2.0


def to_uint8(video: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    low, high = value_range
    scaled = (np.asarray(video, np.float64) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def frame_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of frames ``(T, H, W, C)`` → one image with white gaps between frames and rows."""
    frames, height, width, channels = rows[0].shape
    gap = SEPARATOR_PIXELS
    grid = np.full(
        (len(rows) * (height + gap) - gap, frames * (width + gap) - gap, channels), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for t in range(frames):
            top, left = r * (height + gap), t * (width + gap)
            grid[top : top + height, left : left + width] = row[t]
    return grid


def paired_grid(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """``frame_grid`` of two rows per video: ``real[i]``, then ``fake[i]`` (uint8 ``(B, T, H, W,
    C)`` each)."""
    return frame_grid([row for pair in zip(real, fake) for row in pair])

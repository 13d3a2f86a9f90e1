"""Centre-square crop and PIL Lanczos resize of uint8 frames (Cityscapes, a user's clips)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_square(frame: np.ndarray) -> np.ndarray:
    """The central ``min(H, W)`` square of an ``(H, W, ...)`` frame (a view)."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]


def resize_lanczos(frame: np.ndarray, size: int) -> np.ndarray:
    """A uint8 ``(H, W)`` or ``(H, W, 3)`` frame resized to ``size``² with PIL's LANCZOS
    (MCVD's Cityscapes converter); a frame already that size is returned unchanged."""
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.LANCZOS))

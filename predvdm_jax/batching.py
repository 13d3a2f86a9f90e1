"""Fixed-size batches, so that one compiled program serves every batch of a loop."""

from __future__ import annotations

import numpy as np


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` (n ≤ ``size`` rows) with its last row repeated up to ``size`` rows; keep the
    first n rows of what a program returns for it."""
    if len(batch) > size:
        raise ValueError(f"got {len(batch)} rows for a batch of {size}")
    padding = np.repeat(batch[-1:], size - len(batch), axis=0)
    return np.concatenate([batch, padding]) if len(padding) else batch


def device_batch_size(requested: int, count: int, devices: int) -> int:
    """At most ``requested`` rows (no more than the ``count`` there are), rounded up to fill
    every device."""
    size = max(1, min(requested, count))
    return -(-size // devices) * devices

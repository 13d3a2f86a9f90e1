"""Fréchet Video Distance on 400-d Inception-I3D logits.

Protocol (as MCVD / PredVDM, spec §F.4): videos in [0, 1] are resized per
frame so the shorter side is 224 (bilinear, ``align_corners=False``, no
antialias; the longer side becomes ``ceil(side * 224 / shorter)``), centre
cropped to 224x224, grayscale repeated to 3 channels, mapped to [-1, 1], and
fed to I3D; the Fréchet distance of the float64 feature Gaussians is taken
with ``scipy.linalg.sqrtm`` as in StyleGAN-V.

Resize methods:
- ``'bilinear'``: half-pixel centres, source ``(i + 0.5) * in / out - 0.5``
  clamped at 0 (torch ``F.interpolate(mode='bilinear', align_corners=False)``,
  which MCVD / PredVDM use).
- ``'tf1_bilinear'``: TF1 ``tf.image.resize_bilinear(align_corners=False)``,
  source ``i * in / out`` (the original TF FVD code).
Neither antialiases, unlike ``jax.image.resize`` when downsampling.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from predvdm_jax import xla_cpu
from predvdm_jax.models.i3d import INPUT_SIZE, InceptionI3d

MIN_FVD_FRAMES = 10
MIN_FVD_VIDEOS = 2
RESIZE_METHODS = ("bilinear", "tf1_bilinear")
RESIZE_SOURCES = {
    "bilinear": "torch F.interpolate(align_corners=False), as MCVD / PredVDM",
    "tf1_bilinear": "TF1 resize_bilinear(align_corners=False), as the original TF FVD code",
}
"""Where each resize method (``eval.fvd_resize``) comes from, for reports."""


def bilinear_resize_matrix(in_size: int, out_size: int, method: str = "bilinear") -> np.ndarray:
    """``(out_size, in_size)`` float64 matrix ``M`` with ``resized = M @ signal`` along one axis."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; use one of {RESIZE_METHODS}")
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    if method == "bilinear":
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    else:
        src = dst * scale
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix


def _check_videos(videos: Any, name: str = "videos") -> tuple[int, ...]:
    shape = tuple(np.shape(videos))
    if len(shape) != 5 or shape[-1] not in (1, 3):
        raise ValueError(f"{name} must have shape (B, T, H, W, C) with C in (1, 3), got {shape}")
    if not jnp.issubdtype(videos.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be float in [0, 1], got dtype {videos.dtype}; divide uint8 frames by 255"
        )
    if shape[1] < MIN_FVD_FRAMES:
        raise ValueError(
            f"{name} have {shape[1]} frames; FVD needs at least {MIN_FVD_FRAMES} per clip "
            f"(I3D silently returns NaN below 9); evaluate longer clips (e.g. cond + pred frames)"
        )
    return shape


def preprocess_for_i3d(videos: jax.Array, method: str = "bilinear") -> jax.Array:
    """``(B, T, H, W, C)`` in [0, 1], C in {1, 3} -> ``(B, T, 224, 224, 3)`` in [-1, 1]."""
    _check_videos(videos)
    b, t, h, w, c = videos.shape
    scale = INPUT_SIZE / min(h, w)
    out_h = INPUT_SIZE if h <= w else math.ceil(h * scale)
    out_w = INPUT_SIZE if w <= h else math.ceil(w * scale)
    top, left = (out_h - INPUT_SIZE) // 2, (out_w - INPUT_SIZE) // 2
    # Crop the interpolation matrices instead of the resized frames: same result, less work.
    rows = bilinear_resize_matrix(h, out_h, method)[top : top + INPUT_SIZE]
    cols = bilinear_resize_matrix(w, out_w, method)[left : left + INPUT_SIZE]
    x = jnp.asarray(videos, jnp.float32)
    x = jnp.einsum(
        "ph,bthwc->btpwc", jnp.asarray(rows, jnp.float32), x, precision=jax.lax.Precision.HIGHEST
    )
    x = jnp.einsum(
        "qw,btpwc->btpqc", jnp.asarray(cols, jnp.float32), x, precision=jax.lax.Precision.HIGHEST
    )
    if c == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return (x - 0.5) * 2.0


@functools.cache
def _logits_program(method: str):
    """The compiled resize + I3D for one resize method."""
    return xla_cpu.jit(
        lambda variables, videos: InceptionI3d().apply(
            variables, preprocess_for_i3d(videos, method)
        )
    )


def i3d_logits(
    variables: Any, videos: Any, batch_size: int = 10, method: str = "bilinear"
) -> np.ndarray:
    """400-d I3D logits ``(B, 400)`` float64 of videos ``(B, T, H, W, C)`` in [0, 1].

    ``variables`` come from ``load_i3d_params``. Videos go through one jitted
    program ``batch_size`` at a time (the last batch is zero-padded so every
    call has the same shape and compiles once).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape = _check_videos(videos)
    if shape[0] == 0:
        return np.zeros((0, 400), np.float64)
    lowest, highest = float(np.min(videos)), float(np.max(videos))
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        raise ValueError("videos hold NaN or Inf values; I3D features need finite frames in [0, 1]")
    if lowest < -1e-3:
        raise ValueError(
            f"videos must be in [0, 1] but reach {lowest:.3f}; map [-1, 1] data with (x + 1) / 2 first"
        )
    if highest > 1.0 + 1e-3:
        raise ValueError(
            f"videos must be in [0, 1] but reach {highest:.3f}; divide [0, 255] data by 255 first"
        )
    batch_size = min(batch_size, shape[0])
    variables = jax.device_put(variables)  # once, not per batch
    features = []
    for start in range(0, shape[0], batch_size):
        batch = np.asarray(videos[start : start + batch_size], np.float32)
        count = batch.shape[0]
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *shape[1:]), np.float32)])
        logits = _logits_program(method)(variables, batch)
        features.append(np.asarray(logits, np.float64)[:count])
    return np.concatenate(features)


def frechet_distance_from_moments(
    mean_real: np.ndarray, cov_real: np.ndarray, mean_fake: np.ndarray, cov_fake: np.ndarray
) -> float:
    """``|mu_f - mu_r|^2 + tr(S_f + S_r - 2 sqrtm(S_f S_r))``, real part, float64.

    Matches StyleGAN-V's ``sqrtm(..., disp=False)[0]`` (``disp`` itself is
    deprecated in SciPy >= 1.16 and changes only warnings, not the value).
    """
    mean_real, mean_fake = np.asarray(mean_real, np.float64), np.asarray(mean_fake, np.float64)
    cov_real, cov_fake = np.asarray(cov_real, np.float64), np.asarray(cov_fake, np.float64)
    if mean_real.shape != mean_fake.shape or cov_real.shape != cov_fake.shape:
        raise ValueError(
            f"real and fake statistics differ in shape: means {mean_real.shape} vs {mean_fake.shape}, "
            f"covariances {cov_real.shape} vs {cov_fake.shape}; use the same feature extractor for both"
        )
    if not all(np.isfinite(x).all() for x in (mean_real, cov_real, mean_fake, cov_fake)):
        raise ValueError(
            "real or fake feature statistics hold NaN or Inf (scipy's sqrtm would not return); "
            "check that the videos and the feature extractor's outputs are finite"
        )
    mean_term = np.sum(np.square(mean_fake - mean_real))
    sqrt_product = scipy.linalg.sqrtm(cov_fake @ cov_real)
    distance = float(np.real(mean_term + np.trace(cov_fake + cov_real - 2.0 * sqrt_product)))
    return max(distance, 0.0)  # a distance; rounding gives about -1e-5 for identical sets


def _moments(features: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {features.shape}")
    if features.shape[0] < MIN_FVD_VIDEOS:
        raise ValueError(
            f"{name} has {features.shape[0]} videos; the Fréchet distance needs at least "
            f"{MIN_FVD_VIDEOS} for a covariance (use 256 or more for a meaningful FVD)"
        )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(feats_real: np.ndarray, feats_fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (float64, unbiased covariance) to two feature sets."""
    mean_real, cov_real = _moments(feats_real, "feats_real")
    mean_fake, cov_fake = _moments(feats_fake, "feats_fake")
    return frechet_distance_from_moments(mean_real, cov_real, mean_fake, cov_fake)

"""Per-frame image metrics on videos, as PredVDM computes them (spec §F.1, F.2).

Every function takes two videos `(B, T, H, W, C)` with values in [0, 1] and
returns one value per frame, `(B, T)`, float32. All are jit-able; shapes are
checked at trace time, values are not (that would need a host round trip).

PredVDM reports the mean and standard deviation over all B×T frame values.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
PSNR_IDENTICAL_MSE = 1e-10
PSNR_IDENTICAL_VALUE = 100.0


def _check_video_pair(a, b, min_size: int = 1) -> None:
    if a.ndim != 5 or b.ndim != 5:
        raise ValueError(
            f"metrics need videos of shape (B, T, H, W, C); got {a.shape} and {b.shape}."
        )
    if a.shape != b.shape:
        raise ValueError(f"the two videos must have the same shape; got {a.shape} and {b.shape}.")
    if a.shape[2] < min_size or a.shape[3] < min_size:
        raise ValueError(
            f"frames of {a.shape[2]}x{a.shape[3]} are smaller than the "
            f"{min_size}x{min_size} SSIM window; use frames of at least {min_size} pixels."
        )


@jax.jit
def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """PSNR per frame, data range 1: 10·log10(1/mse), mse over (H, W, C).

    PredVDM returns 100 when mse < 1e-10 (identical frames) instead of inf.
    """
    _check_video_pair(a, b)
    batch, frames = a.shape[:2]
    flat_a = a.reshape((batch * frames,) + a.shape[2:]).astype(jnp.float32)
    flat_b = b.reshape((batch * frames,) + b.shape[2:]).astype(jnp.float32)
    mse = dm_pix.mse(flat_a, flat_b).reshape(batch, frames)
    identical = mse < PSNR_IDENTICAL_MSE
    value = -10.0 * jnp.log10(jnp.where(identical, 1.0, mse))
    return jnp.where(identical, PSNR_IDENTICAL_VALUE, value)


def _valid_gaussian_matrix(size: int) -> np.ndarray:
    """(size - 10, size) matrix whose rows are the normalized 11-tap Gaussian at each valid offset.

    Multiplying by it is a VALID 1-D correlation, which is what PredVDM's
    reflect-101 `cv2.filter2D` followed by the `[5:-5]` crop computes.
    """
    offsets = np.arange(SSIM_WINDOW_SIZE) - SSIM_WINDOW_SIZE // 2
    taps = np.exp(-(offsets.astype(np.float64) ** 2) / (2.0 * SSIM_SIGMA**2))
    taps /= taps.sum()
    out_size = size - SSIM_WINDOW_SIZE + 1
    matrix = np.zeros((out_size, size), np.float64)
    for row in range(out_size):
        matrix[row, row : row + SSIM_WINDOW_SIZE] = taps
    return matrix.astype(np.float32)


@jax.jit
def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """SSIM per frame exactly as PredVDM's `calculate_ssim1` defines it.

    Gaussian 11×11 window (σ 1.5, normalized), C1 = 0.01², C2 = 0.03², the
    SSIM map over the valid region only, its mean per channel, then the mean
    over channels. This equals scikit-image's `structural_similarity(
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=-1)`.

    Not `dm_pix.ssim`: it has the same window and constants but forms the
    variances as E[x²] − E[x]² directly in float32, which loses ~7e-5 of SSIM
    on flat bright frames (catastrophic cancellation against C2 = 9e-4), and
    it clips variances. Here each frame's channels are first shifted by their
    own mean (variances and covariance do not change under a shift), which
    keeps float32 within ~1e-6 of the float64 original on such frames.
    The window is applied as two banded matmuls (valid correlation along H
    and W) at HIGHEST precision, so TF32 on GPUs cannot degrade it.
    """
    _check_video_pair(a, b, min_size=SSIM_WINDOW_SIZE)
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    rows = jnp.asarray(_valid_gaussian_matrix(a.shape[2]))
    cols = jnp.asarray(_valid_gaussian_matrix(a.shape[3]))

    mean_a = jnp.mean(a, axis=(2, 3), keepdims=True)
    mean_b = jnp.mean(b, axis=(2, 3), keepdims=True)
    centred_a = a - mean_a
    centred_b = b - mean_b
    stacked = jnp.stack(
        [centred_a, centred_b, centred_a * centred_a, centred_b * centred_b, centred_a * centred_b]
    )
    filtered = jnp.einsum(
        "ih,kbthwc,jw->kbtijc", rows, stacked, cols, precision=jax.lax.Precision.HIGHEST
    )
    local_a, local_b, second_aa, second_bb, second_ab = filtered
    var_a = second_aa - local_a * local_a
    var_b = second_bb - local_b * local_b
    cov_ab = second_ab - local_a * local_b
    mu_a = local_a + mean_a
    mu_b = local_b + mean_b

    numerator = (2.0 * mu_a * mu_b + SSIM_C1) * (2.0 * cov_ab + SSIM_C2)
    denominator = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
    ssim_map = numerator / denominator
    return jnp.mean(ssim_map, axis=(2, 3, 4))

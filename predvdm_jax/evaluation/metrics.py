"""Per-frame image metrics on videos, as PredVDM computes them (spec §F.1, F.2).

Every function takes two videos `(B, T, H, W, C)` with values in [0, 1] and
returns one value per frame, `(B, T)`, float32. All are jit-able; shapes are
checked at trace time, values are not (that would need a host round trip).

PredVDM reports the mean and standard deviation over all B×T frame values.
``mcvd_ssim``, ``video_psnr`` and ``mcvd_lpips_frames`` are MCVD's definitions (spec §H.3,
``eval.metric_style``); ``video_psnr`` returns one value per video, ``(B,)``.
"""

from __future__ import annotations

import functools

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
    return _psnr_of_mse(dm_pix.mse(flat_a, flat_b).reshape(batch, frames))


def _psnr_of_mse(mse: jax.Array) -> jax.Array:
    """10·log10(1/mse) for data range 1; ``PSNR_IDENTICAL_VALUE`` where mse is below
    ``PSNR_IDENTICAL_MSE`` (identical images)."""
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


# --- MCVD's definitions (spec §H.3; eval.metric_style="mcvd") --------------------------

MCVD_STYLES = ("mcvd", "mcvd_mnist")
"""``mcvd_mnist``: MCVD's metrics as its ``video_gen`` computes them on (Stochastic) Moving MNIST,
SSIM on frames rounded to 0 / 1 first."""
METRIC_STYLES = ("predvdm",) + MCVD_STYLES
MCVD_LPIPS_SIZE = 128
"""MCVD resizes every frame to 128×128 (torchvision ``Resize`` on the PIL image) for LPIPS."""
PIL_PRECISION_BITS = 22
"""Pillow's fixed-point precision for 8-bit resampling (``32 - 8 - 2``)."""
PIL_L_WEIGHTS = (19595, 38470, 7471)
"""Pillow's ITU-R 601-2 luma in 16-bit fixed point: L = (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16."""


def _to_pil_levels(video: jax.Array) -> jax.Array:
    """torchvision ``ToPILImage``'s uint8 levels of [0, 1] values, ``mul(255).byte()`` (i.e.
    truncation), as int32; ``(B, T, H, W, C)`` with C = 1 or 3, else a ``ValueError``."""
    if video.ndim != 5 or video.shape[-1] not in (1, 3):
        raise ValueError(f"need (B, T, H, W, C) videos with 1 or 3 channels; got {video.shape}.")
    return jnp.clip(jnp.floor(video.astype(jnp.float32) * 255.0), 0.0, 255.0).astype(jnp.int32)


def pil_gray_uint8(video: jax.Array) -> jax.Array:
    """MCVD's grey frames: torchvision ``ToPILImage`` (``mul(255).byte()``, i.e. truncation),
    ``.convert("RGB").convert("L")``. ``(B, T, H, W, C)`` in [0, 1] with C = 1 or 3 →
    ``(B, T, H, W, 1)`` int32 in [0, 255]; a 1-channel frame is its own uint8 grey image."""
    quantised = _to_pil_levels(video)
    if video.shape[-1] == 1:
        return quantised
    weights = jnp.asarray(PIL_L_WEIGHTS, jnp.int32)
    luma = jnp.sum(quantised * weights, axis=-1, keepdims=True) + (1 << 15)
    return jnp.right_shift(luma, 16)


@functools.partial(jax.jit, static_argnames="binary")
def mcvd_ssim(a: jax.Array, b: jax.Array, binary: bool = False) -> jax.Array:
    """SSIM per frame as MCVD's ``video_gen`` computes it: scikit-image's
    ``structural_similarity(gray_a, gray_b, data_range=255, gaussian_weights=True,
    use_sample_covariance=False)`` on the uint8 PIL 'L' images (``pil_gray_uint8``); with
    ``binary`` (MCVD on (Stochastic) Moving MNIST) of the frames rounded to 0 / 1 first
    (``torch.round``: half to even).

    That is ``ssim`` above on the grey images divided by 255 (same 11-tap σ 1.5 window, as
    scikit-image's truncate 3.5 gives, same valid-region crop, constants scaled with the range).
    """
    _check_video_pair(a, b, min_size=SSIM_WINDOW_SIZE)
    if binary:
        a, b = jnp.round(a), jnp.round(b)
    gray_a = pil_gray_uint8(a).astype(jnp.float32) / 255.0
    gray_b = pil_gray_uint8(b).astype(jnp.float32) / 255.0
    return ssim(gray_a, gray_b)


def pil_bilinear_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's BILINEAR resampling of one axis as an ``(out_size, in_size)`` matrix of its
    fixed-point coefficients (``precompute_coeffs`` and ``normalize_coeffs_8bpc``): the
    triangle filter widened by the downscale factor, pixel centres at ``i + 0.5``, taps
    outside the image dropped and the rest renormalised, each weight rounded to
    ``2**-22``."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = filter_scale  # the triangle filter's support (1) times the filter scale
    matrix = np.zeros((out_size, in_size), np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        stop = min(int(center + support + 0.5), in_size)
        taps = np.arange(first, stop)
        weights = np.maximum(1.0 - np.abs((taps - center + 0.5) / filter_scale), 0.0)
        weights = weights / weights.sum()
        matrix[out, first:stop] = np.floor(weights * (1 << PIL_PRECISION_BITS) + 0.5)
    return matrix


def _pil_resample_axis(images: jax.Array, coefficients: np.ndarray, axis: int) -> jax.Array:
    """One of Pillow's passes: ``(Σ pixel · coefficient + 2**21) >> 22``, clipped to uint8."""
    summed = jnp.tensordot(
        jnp.moveaxis(images, axis, -1),
        jnp.asarray(coefficients.T, jnp.int32),
        axes=1,
        preferred_element_type=jnp.int32,
    )
    rounded = jnp.right_shift(summed + (1 << (PIL_PRECISION_BITS - 1)), PIL_PRECISION_BITS)
    return jnp.moveaxis(jnp.clip(rounded, 0, 255), -1, axis)


def pil_resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Pillow's ``Image.resize(size[::-1], Image.BILINEAR)`` of uint8 images ``(..., H, W, C)``
    (int values 0..255) to ``size`` = (height, width): the horizontal pass, rounded to uint8,
    then the vertical one, as Pillow does; an image already that size is unchanged."""
    height, width = images.shape[-3:-1]
    images = images.astype(jnp.int32)
    if width != size[1]:
        images = _pil_resample_axis(images, pil_bilinear_coefficients(width, size[1]), -2)
    if height != size[0]:
        images = _pil_resample_axis(images, pil_bilinear_coefficients(height, size[0]), -3)
    return images


@jax.jit
def mcvd_lpips_frames(video: jax.Array) -> jax.Array:
    """The frames MCVD's LPIPS sees, ``(B, T, 128, 128, 3)`` in [0, 1]: ``ToPILImage``
    (truncation to uint8) ``.convert("RGB")`` (grey repeated), torchvision ``Resize((128,
    128))`` (``pil_resize_bilinear``) and ``ToTensor``. MCVD then normalises them to [-1, 1]
    and calls LPIPS v0.1 AlexNet with ``spatial=False``."""
    rgb = jnp.repeat(_to_pil_levels(video), 3 // video.shape[-1], axis=-1)
    resized = pil_resize_bilinear(rgb, (MCVD_LPIPS_SIZE, MCVD_LPIPS_SIZE))
    return resized.astype(jnp.float32) / 255.0


@jax.jit
def video_psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """PSNR per video as MCVD computes it, ``(B,)``: 10·log10(1/mse) with mse the mean over
    frames of each frame's MSE on [0, 1] values (not a mean of per-frame PSNRs). 100 when
    mse < 1e-10, as ``psnr`` (MCVD would give inf)."""
    _check_video_pair(a, b)
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    return _psnr_of_mse(jnp.mean(jnp.mean(diff * diff, axis=(2, 3, 4)), axis=1))

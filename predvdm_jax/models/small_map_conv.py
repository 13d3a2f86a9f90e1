"""Convolution that computes tiny feature maps as im2col + matmul on the CPU.

XLA:CPU runs 3×3 convolutions on 2×2 maps 40-100× below its matmul speed
(1.4 GFLOP/s at 896 channels, forward; the kernel gradient is worse), and on
4×4 maps with hundreds of channels about 2× below. The UNet's deepest levels
are exactly such maps. There, the same
convolution is computed as the concatenated shifted windows times the kernel
reshaped to a matrix: the same parameters and, up to float rounding, the same
result. Other backends and other shapes use ``lax.conv_general_dilated``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

SMALL_MAP_PIXELS = 4
WIDE_MAP_PIXELS, WIDE_CHANNELS = 16, 256


def uses_matmul(height: int, width: int, in_channels: int) -> bool:
    """Whether a stride-1 convolution on this map is computed as im2col + matmul on the CPU."""
    pixels = height * width
    return pixels <= SMALL_MAP_PIXELS or (
        pixels <= WIDE_MAP_PIXELS and in_channels >= WIDE_CHANNELS
    )


def _im2col_conv(lhs, rhs, padding, precision):
    kh, kw, cin, cout = rhs.shape
    b, h, w, _ = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    windows = [padded[:, i : i + out_h, j : j + out_w, :] for i in range(kh) for j in range(kw)]
    columns = jnp.concatenate(windows, axis=-1)
    return jnp.dot(columns, rhs.reshape(kh * kw * cin, cout), precision=precision)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` for NHWC × HWIO (what ``flax.linen.Conv`` passes)."""
    plain = (
        jax.default_backend() == "cpu"
        and lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and feature_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and not isinstance(padding, str)
        and tuple(dimension_numbers or ())
        == tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
    )
    if plain and rhs.shape[:2] != (1, 1) and uses_matmul(*lhs.shape[1:4]):
        return _im2col_conv(lhs, rhs, padding, precision)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
    )

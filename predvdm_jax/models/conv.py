"""The denoiser's 2-D convolution: OHWI kernels, and tiny maps as im2col + matmul on the CPU.

Kernel layout. XLA:GPU runs bf16 and fp16 convolutions in cuDNN with NHWC
activations and OHWI filters (its conv layout heuristic). A kernel stored HWIO,
as ``flax.linen.Conv`` stores it, is transposed to OHWI before every forward and
input-gradient convolution, and every kernel gradient is transposed back: in an
H200 profile of the bf16 KTH train step such weight-shaped transposes took
4.7 ms of the 28 ms step. Stored OHWI (PyTorch's OIHW with the input channels
moved last), a kernel is already in the layout cuDNN reads, and its gradient
comes out in it.

Small maps. XLA:CPU runs 3×3 convolutions on 2×2 maps 40-100× below its matmul
speed (1.4 GFLOP/s at 896 channels, forward; the kernel gradient is worse), and
on 4×4 maps with hundreds of channels about 2× below. The UNet's deepest levels
are exactly such maps. There, on the CPU, the same convolution is computed as the
concatenated shifted windows times the kernel reshaped to a matrix: the same
parameters and, up to float rounding, the same result. Other CPU convolutions
transpose the kernel to HWIO, the layout XLA:CPU convolves.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "OHWI", "NHWC")
KERNEL_AXES = ("conv_out", "height", "width", "conv_in")  # logical names for training/sharding.py
SMALL_MAP_PIXELS = 4
WIDE_MAP_PIXELS, WIDE_CHANNELS = 16, 256


def torch_uniform_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv / Linear init of weight and bias: uniform in ``±1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def uses_matmul(height: int, width: int, in_channels: int) -> bool:
    """Whether a stride-1 convolution on this map is computed as im2col + matmul on the CPU."""
    pixels = height * width
    return pixels <= SMALL_MAP_PIXELS or (
        pixels <= WIDE_MAP_PIXELS and in_channels >= WIDE_CHANNELS
    )


def _im2col_conv(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
    cout, kh, kw, cin = kernel.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    windows = [padded[:, i : i + out_h, j : j + out_w, :] for i in range(kh) for j in range(kw)]
    columns = jnp.concatenate(windows, axis=-1)  # channel (i * kw + j) * cin + c
    matrix = kernel.reshape(cout, kh * kw * cin)
    return lax.dot_general(columns, matrix, (((3,), (1,)), ((), ())))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 0) -> jax.Array:
    """``(B, H, W, I)`` × OHWI kernel -> ``(B, H', W', O)``, zero padding ``pad`` on each side."""
    _, height, width, cin = x.shape
    if kernel.ndim != 4 or kernel.shape[-1] != cin:
        raise ValueError(
            f"conv2d: kernel of shape {kernel.shape} is not OHWI for {cin} input channels."
        )
    window = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    if jax.default_backend() != "cpu":
        return lax.conv_general_dilated(x, kernel, **window, dimension_numbers=DIMENSION_NUMBERS)
    if stride == 1 and kernel.shape[1:3] != (1, 1) and uses_matmul(height, width, cin):
        return _im2col_conv(x, kernel, pad)
    # XLA:CPU convolves HWIO kernels. Left to XLA, an OHWI kernel inside the sampler's loop
    # made the compiled demo rollout 2.5x slower (21.9 against 53.7 frames/s); transposed here,
    # it is as fast as before.
    hwio = jnp.transpose(kernel, (1, 2, 3, 0))
    return lax.conv_general_dilated(x, hwio, **window, dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
    """PyTorch's ``Conv2d`` (padding ``kernel_size // 2``, default init) on channels-last input.

    ``kernel`` is OHWI, ``bias`` ``(features,)``, both float32; the convolution
    runs in ``dtype``. ``zero_init`` zeroes both (LDM's ``zero_module``).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    use_bias: bool = True
    zero_init: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        init = nn.initializers.zeros if self.zero_init else torch_uniform_init(k * k * cin)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, KERNEL_AXES),
            (self.features, k, k, cin),
            jnp.float32,
        )
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, k // 2)
        if self.use_bias:
            y = y + self.param("bias", init, (self.features,), jnp.float32).astype(self.dtype)
        return y

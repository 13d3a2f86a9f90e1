"""The denoiser's 2-D convolution: OHWI kernels, and some small maps as im2col + matmul.

Kernel layout. XLA:GPU runs bf16 and fp16 convolutions in cuDNN with NHWC
activations and OHWI filters (its conv layout heuristic). A kernel stored HWIO,
as ``flax.linen.Conv`` stores it, is transposed to OHWI before every forward and
input-gradient convolution, and every kernel gradient is transposed back: in an
H200 profile of the bf16 KTH train step such weight-shaped transposes took
4.7 ms of the 28 ms step. Stored OHWI (PyTorch's OIHW with the input channels
moved last), a kernel is already in the layout cuDNN reads, and its gradient
comes out in it (measured on an H100: 28.4 against 32.0 ms per step).

Small maps, on a GPU. When a convolution's output map is no larger than its
kernel (the UNet's 2×2 level), XLA:GPU does not run the kernel gradient as
cuDNN's backward-filter convolution but as a forward one whose output has the
kernel's input and output channels swapped; the gradient is then transposed,
and XLA moves that transpose into AdamW's update, transposing the kernel and
both moments of every such kernel each step (3.1 ms of an H100 profile's 28.1 ms).
There the convolution is computed as im2col + matmul, whose kernel gradient
comes out in the kernel's own layout: the step took 26.1 ms instead of 28.4.

Small maps, on the CPU. XLA:CPU runs 3×3 convolutions on 2×2 maps 40-100× below
its matmul speed (1.4 GFLOP/s at 896 channels, forward; the kernel gradient is
worse), and on 4×4 maps with hundreds of channels about 2× below. The UNet's
deepest levels are exactly such maps, so these use im2col + matmul too. Other
CPU convolutions transpose the kernel to HWIO, the layout XLA:CPU convolves.

im2col + matmul: the concatenated shifted windows times the kernel reshaped to
a matrix; the same parameters and, up to float rounding, the same result.

Gradients on the CPU, inside loops and conditionals. XLA:CPU brings a
convolution into the layout its fast (Eigen) path takes only in the program's
top level. Inside a ``lax.scan`` or ``lax.cond`` (gradient accumulation, the
VQGAN step's discriminator switch) the kernel gradient (a convolution with batch
and feature dimensions swapped) and the input gradient (kernel channels swapped)
fall back to a slow generic loop: the kernel gradient of a 3×3, 64-channel layer
on 16×16 maps ran 16× slower. :func:`conv_general_dilated` writes both gradients
as explicit top-layout convolutions of transposed operands, as XLA does itself at
the top level, so they stay fast everywhere (the demo denoiser's step in 4
accumulated microbatches: 0.83 s before, 0.10 s after; one pass: 0.08 s). Every
convolution that training differentiates goes through it (the VQ's, the
discriminator's and LPIPS's as ``nn.Conv``'s ``conv_general_dilated``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from predvdm_jax.models.linear import add_bias

DIMENSION_NUMBERS = ("NHWC", "OHWI", "NHWC")
CPU_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
KERNEL_AXES = ("conv_out", "height", "width", "conv_in")  # logical names for training/sharding.py
SMALL_MAP_PIXELS = 4
WIDE_MAP_PIXELS, WIDE_CHANNELS = 16, 256


def torch_uniform_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv / Linear init of weight and bias: uniform in ``±1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def output_size(size: int, kernel_size: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel_size) // stride + 1


def uses_matmul(
    height: int,
    width: int,
    in_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    pad: int | None = None,
    backend: str | None = None,
) -> bool:
    """Whether :func:`conv2d` computes this convolution as im2col + matmul on ``backend``
    (default: JAX's default backend); ``pad`` defaults to ``kernel_size // 2``."""
    backend = backend or jax.default_backend()
    if kernel_size == 1 or backend not in ("cpu", "gpu"):  # TPUs: not measured, plain convs
        return False
    if backend == "gpu":
        pad = kernel_size // 2 if pad is None else pad
        out_h, out_w = (output_size(n, kernel_size, stride, pad) for n in (height, width))
        return out_h <= kernel_size and out_w <= kernel_size
    pixels = height * width
    return stride == 1 and (
        pixels <= SMALL_MAP_PIXELS or (pixels <= WIDE_MAP_PIXELS and in_channels >= WIDE_CHANNELS)
    )


def im2col_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """``(B, H, W, I)`` × OHWI kernel as the shifted windows' concatenation times a matrix."""
    cout, kh, kw, cin = kernel.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = (output_size(n, k, stride, pad) for n, k in zip(x.shape[1:3], (kh, kw)))
    windows = [
        padded[
            :, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    columns = jnp.concatenate(windows, axis=-1)  # channel (i * kw + j) * cin + c
    matrix = kernel.reshape(cout, kh * kw * cin)
    return lax.dot_general(columns, matrix, (((3,), (1,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _nhwc_hwio_conv(x, kernel, strides, padding, precision):
    return lax.conv_general_dilated(
        x, kernel, strides, padding, precision=precision, dimension_numbers=CPU_DIMENSION_NUMBERS
    )


def _nhwc_hwio_conv_forward(x, kernel, strides, padding, precision):
    return _nhwc_hwio_conv(x, kernel, strides, padding, precision), (x, kernel)


def _nhwc_hwio_conv_backward(strides, padding, precision, residuals, dy):
    """Both gradients as top-layout convolutions (NHWC input, HWIO kernel):

    * dx: dy dilated by the stride, padded, convolved with the kernel flipped in space
      and with its channel axes swapped;
    * dkernel[i, j, c, o] = Σ x_padded[b, s·y + i, s·x + j, c] dy[b, y, x, o]: x as
      (C, H, W, B), with the forward padding, convolved with dy as an (H', W', B, O)
      kernel dilated by the stride.
    """
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    dy = dy.astype(x.dtype)
    transposed_padding = []
    for size, out, k, s, (lo, _) in zip(x.shape[1:3], dy.shape[1:3], (kh, kw), strides, padding):
        dilated = s * (out - 1) + 1
        transposed_padding.append((k - 1 - lo, size - dilated + lo))
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    dx = lax.conv_general_dilated(
        dy,
        flipped,
        (1, 1),
        transposed_padding,
        lhs_dilation=strides,
        precision=precision,
        dimension_numbers=CPU_DIMENSION_NUMBERS,
    )
    dkernel = lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)),
        jnp.transpose(dy, (1, 2, 0, 3)),
        (1, 1),
        padding,
        rhs_dilation=strides,
        precision=precision,
        dimension_numbers=CPU_DIMENSION_NUMBERS,
    )
    # rows past the last window a stride skips over come out too; they are not kernel taps
    dkernel = jnp.transpose(dkernel[:, :kh, :kw, :], (1, 2, 0, 3))
    return dx, dkernel.astype(kernel.dtype)


_nhwc_hwio_conv.defvjp(_nhwc_hwio_conv_forward, _nhwc_hwio_conv_backward)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated``; on the CPU, plain NHWC × HWIO convolutions get gradients
    that stay fast inside loops and conditionals (module docstring)."""
    plain = (
        jax.default_backend() == "cpu"
        and lhs.ndim == 4
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, CPU_DIMENSION_NUMBERS)
        and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and feature_group_count == 1
        and not kwargs
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
            **kwargs,
        )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _nhwc_hwio_conv(lhs, rhs, strides, pads, precision)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 0) -> jax.Array:
    """``(B, H, W, I)`` × OHWI kernel -> ``(B, H', W', O)``, zero padding ``pad`` on each side."""
    _, height, width, cin = x.shape
    if kernel.ndim != 4 or kernel.shape[-1] != cin:
        raise ValueError(
            f"conv2d: kernel of shape {kernel.shape} is not OHWI for {cin} input channels."
        )
    _, kh, kw, _ = kernel.shape
    if kh == kw and uses_matmul(height, width, cin, kh, stride, pad):
        return im2col_conv(x, kernel, stride, pad)
    window = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    if jax.default_backend() != "cpu":
        return lax.conv_general_dilated(x, kernel, **window, dimension_numbers=DIMENSION_NUMBERS)
    # XLA:CPU convolves HWIO kernels. Left to XLA, an OHWI kernel inside the sampler's loop
    # made the compiled demo rollout 2.5x slower (21.9 against 53.7 frames/s); transposed here,
    # it is as fast as before.
    hwio = jnp.transpose(kernel, (1, 2, 3, 0))
    return conv_general_dilated(x, hwio, **window, dimension_numbers=CPU_DIMENSION_NUMBERS)


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
            y = add_bias(y, self.param("bias", init, (self.features,), jnp.float32))
        return y

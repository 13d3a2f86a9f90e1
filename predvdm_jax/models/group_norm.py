"""GroupNorm over channels-last maps that reads its input once for statistics each way.

``flax.linen.GroupNorm`` with a two-pass variance, differentiated by autodiff, reduces over
its input in two reductions in the forward pass (the mean, then the variance around it) and
several in the backward pass, and XLA fused the scale and bias gradients' sums over all
positions with the input gradient, which ran on a few thread blocks on small maps. Here:

* forward: one multi-output reduction gives every (example, channel)'s sum and sum of
  squares around a per-(example, channel) shift (its first element); the channels of a
  group are then combined exactly (Chan, Golub & LeVeque's pairwise update) on the small
  ``(B, C)`` arrays. The shift keeps a large mean from cancelling the variance away (a mean
  300σ from zero costs nothing). What is left grows with the first element's distance d
  from the mean: on a 16×16 map, ``1/sqrt(var + eps)`` is off by 1e-5 (relative) at
  d = 10σ and 3e-5 at d = 100σ, where Flax's two-pass variance stays below 1e-6; both are
  far below bf16's resolution;
* backward (``jax.custom_vjp``): one multi-output reduction gives every (example, channel)'s
  ``Σ dy`` and ``Σ dy·x̂``, from which the input, scale and bias gradients all follow
  (``dx = rstd·(γ·dy − mean_g(γ·dy) − x̂·mean_g(γ·dy·x̂))``).

Statistics and arithmetic are float32 whatever the input's dtype; the output has the input's
dtype. Same parameters (``scale``, ``bias``) and results as ``torch.nn.GroupNorm``. On an
H100 (bf16, KTH UNet) the one-pass statistics alone made a block's VQ decode 1.048× and the
train step 1.013× faster than Flax's GroupNorm; with the barrier below, and the bias
gradients of ``models/linear.py``, the step went from 25.9 to 23.9 ms.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))


def _per_group(per_channel: jax.Array, num_groups: int) -> jax.Array:
    """``(B, C)`` -> ``(B, G, C/G)``."""
    b, c = per_channel.shape
    return per_channel.reshape(b, num_groups, c // num_groups)


def _per_channel(per_group: jax.Array, channels: int) -> jax.Array:
    """``(B, G)`` -> ``(B, C)``, each group's value repeated over its channels."""
    return jnp.repeat(per_group, channels // per_group.shape[1], axis=1)


def _broadcast(per_channel: jax.Array, ndim: int) -> jax.Array:
    """``(B, C)`` -> ``(B, 1, ..., 1, C)`` against an ``ndim``-rank input."""
    return per_channel.reshape(per_channel.shape[0], *(1,) * (ndim - 2), per_channel.shape[1])


def _statistics(x: jax.Array, num_groups: int, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Each group's mean and ``1/sqrt(var + eps)``, repeated per channel, ``(B, C)`` float32."""
    axes = _spatial_axes(x)
    n = math.prod(x.shape[1:-1])
    xf = x.astype(jnp.float32)
    shift = xf[(slice(None), *(slice(0, 1),) * len(axes))]
    centred = xf - shift
    sums = jnp.sum(centred, axis=axes)
    squares = jnp.sum(centred * centred, axis=axes)
    channel_mean = shift.reshape(sums.shape) + sums / n
    channel_m2 = jnp.maximum(squares - sums * sums / n, 0.0)
    channel_mean = _per_group(channel_mean, num_groups)
    group_mean = jnp.mean(channel_mean, axis=-1, keepdims=True)
    group_m2 = jnp.sum(_per_group(channel_m2, num_groups), axis=-1) + n * jnp.sum(
        jnp.square(channel_mean - group_mean), axis=-1
    )
    variance = group_m2 / (n * channel_mean.shape[-1])
    channels = x.shape[-1]
    return (
        _per_channel(group_mean[..., 0], channels),
        _per_channel(jax.lax.rsqrt(variance + epsilon), channels),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float
) -> jax.Array:
    """Normalise ``x`` ``(B, ..., C)`` over each group of ``C/num_groups`` channels and all
    positions, then ``· scale + bias`` per channel; the result has ``x``'s dtype."""
    return _forward(x, scale, bias, num_groups, epsilon)[0]


def _forward(x, scale, bias, num_groups, epsilon):
    mean, rstd = _statistics(x, num_groups, epsilon)
    centred = x.astype(jnp.float32) - _broadcast(mean, x.ndim)
    y = centred * _broadcast(rstd * scale, x.ndim) + bias
    y = y.astype(x.dtype)
    return y, (x, scale, mean, rstd)


def _backward(num_groups, epsilon, residuals, dy):
    x, scale, mean, rstd = residuals
    axes = _spatial_axes(x)
    n = math.prod(x.shape[1:-1]) * (x.shape[-1] // num_groups)
    dyf = dy.astype(jnp.float32)
    x_hat = (x.astype(jnp.float32) - _broadcast(mean, x.ndim)) * _broadcast(rstd, x.ndim)
    # The barrier keeps XLA from merging the scale and bias gradients' sums over the batch
    # into one reduction over all positions fused with dx: on an H100 that reduction ran on a
    # few thread blocks (0.12 ms for a 2.75 MB gradient of the 4×4 maps).
    dy_sum, dy_x_hat_sum = jax.lax.optimization_barrier(
        (jnp.sum(dyf, axis=axes), jnp.sum(dyf * x_hat, axis=axes))
    )

    def group_mean(sums: jax.Array) -> jax.Array:
        """Per-(example, channel) sums -> their group's mean per element, per channel."""
        return _per_channel(jnp.sum(_per_group(sums, num_groups), -1) / n, x.shape[-1])

    mean_dy, mean_dy_x_hat = group_mean(scale * dy_sum), group_mean(scale * dy_x_hat_sum)
    dx = _broadcast(rstd, x.ndim) * (
        dyf * scale - _broadcast(mean_dy, x.ndim) - x_hat * _broadcast(mean_dy_x_hat, x.ndim)
    )
    return dx.astype(x.dtype), jnp.sum(dy_x_hat_sum, 0), jnp.sum(dy_sum, 0)


group_norm.defvjp(_forward, _backward)


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm(num_groups, C, eps)`` on channels-last input (:func:`group_norm`),
    with float32 ``scale`` and ``bias``; ``dtype`` casts the output (default: the input's)."""

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        if x.ndim < 3 or channels % self.num_groups:
            raise ValueError(
                f"GroupNorm {self.name}: input {x.shape} needs a batch, positions and channels "
                f"divisible by its {self.num_groups} groups"
            )
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        y = group_norm(x, scale, bias, self.num_groups, self.epsilon)
        return y if self.dtype is None else y.astype(self.dtype)

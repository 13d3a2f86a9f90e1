"""``torch.nn.GroupNorm`` for channels-last maps, with per-channel reductions first.

The statistics are those of ``flax.linen.GroupNorm(use_fast_variance=False)``
(two-pass variance, float32), but each pass sums over the spatial axes per
channel, ``(B, H, W, C) -> (B, C)``, and only then over the channels of a group.
Reducing a ``(B, H, W, G, C/G)`` view over ``(H, W, C/G)`` directly, as Flax does,
makes XLA:GPU transpose every normalised activation (twice forward, twice
backward); per-channel sums are plain reductions over the leading spatial axes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class GroupNorm(nn.Module):
    """Normalise ``x`` (B, ..., C) per example and group of ``C / num_groups`` channels.

    Parameters ``scale`` (ones) and ``bias`` (zeros), float32, as Flax's GroupNorm
    (PyTorch ``weight`` / ``bias``). Computes in float32; returns ``dtype``
    (``None``: the input's dtype).
    """

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim < 3:
            raise ValueError(
                f"GroupNorm expects (B, ..., C) with spatial axes, got shape {x.shape}"
            )
        b, channels = x.shape[0], x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(
                f"GroupNorm: {channels} channels do not split into {self.num_groups} groups"
            )
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        per_group = channels // self.num_groups
        spatial = tuple(range(1, x.ndim - 1))
        count = math.prod(x.shape[1:-1]) * per_group
        as_map = (b,) + (1,) * len(spatial) + (channels,)

        def group_mean(per_channel_sums: jax.Array) -> jax.Array:
            """(B, C) sums -> each channel's group mean, shaped to broadcast against x."""
            sums = per_channel_sums.reshape(b, self.num_groups, per_group).sum(-1)
            return jnp.repeat(sums / count, per_group, axis=-1).reshape(as_map)

        xf = x.astype(jnp.float32)
        centred = xf - group_mean(xf.sum(spatial))
        variance = group_mean(jnp.square(centred).sum(spatial))
        y = centred * jax.lax.rsqrt(variance + self.epsilon) * scale + bias
        return y.astype(x.dtype if self.dtype is None else self.dtype)

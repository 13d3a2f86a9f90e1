"""Block-autoregressive video prediction in latent space (spec §E.1).

Predict ``k`` latents per diffusion sample; the next block conditions on the
last ``n_cond`` latents (real at first, then sampled). All blocks and all
sampler steps are one ``lax.scan`` program. Ground-truth future frames are
never an input.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from predvdm_jax.diffusion.samplers import DenoiseFn, SamplerSettings, fold_in, sample
from predvdm_jax.diffusion.schedule import DiffusionSchedule

DecodeFn = Callable[[jnp.ndarray], jnp.ndarray]


def rollout(
    denoise_fn: DenoiseFn,
    decode_fn: DecodeFn,
    schedule: DiffusionSchedule,
    z_cond: jnp.ndarray,
    key: jax.Array,
    num_frames: int,
    k: int,
    settings: SamplerSettings,
    reencode_fn: DecodeFn | None = None,
) -> dict[str, jnp.ndarray]:
    """Sample ``num_frames`` future latents after ``z_cond`` (B, n_cond, h, w, c).

    ``decode_fn`` maps latents (B, k, h, w, c) to frames (B, k, H, W, C) (the
    caller makes it quantize, then decode); frames are clamped to [−1, 1].
    By default the next window conditions on the raw sampled latents
    (PredVDM's "option 2"); with ``reencode_fn`` (frames → latents) it
    conditions on re-encoded decoded frames ("option 1"). Block ``i`` uses
    ``fold_in(key, i)``; ``key`` is one key or one per clip (``samplers.row_keys``). The last
    block is trimmed when ``k`` does not divide ``num_frames``. Returns
    ``{'latents': (B, num_frames, h, w, c), 'frames': (B, num_frames, H, W, C)}``.
    """
    if z_cond.ndim != 5:
        raise ValueError(f"z_cond must be (B, n_cond, h, w, c), got shape {z_cond.shape}")
    if z_cond.shape[1] < 1:
        raise ValueError("z_cond needs at least one conditioning latent")
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (latents per block) must be a positive integer, got {k!r}")
    num_frames, k = int(num_frames), int(k)
    z_cond = z_cond.astype(jnp.float32)  # the samplers' dtype: cached latents may be 16-bit
    batch, n_cond = z_cond.shape[:2]
    block_shape = (batch, k) + tuple(z_cond.shape[2:])
    num_blocks = math.ceil(num_frames / k)

    def block(cond, index):
        latents = sample(denoise_fn, schedule, cond, fold_in(key, index), block_shape, settings)
        frames = jnp.clip(decode_fn(latents), -1.0, 1.0)
        produced = latents if reencode_fn is None else reencode_fn(frames).astype(cond.dtype)
        next_cond = jnp.concatenate([cond, produced], axis=1)[:, -n_cond:]
        return next_cond, (latents, frames)

    _, (latents, frames) = jax.lax.scan(block, z_cond, jnp.arange(num_blocks))

    def blocks_to_time(blocks):
        merged = jnp.moveaxis(blocks, 0, 1)
        merged = merged.reshape((batch, num_blocks * k) + merged.shape[3:])
        return merged[:, :num_frames]

    return {"latents": blocks_to_time(latents), "frames": blocks_to_time(frames)}


def make_rollout_fn(
    denoise_apply: Callable[[Any, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray],
    decode_apply: Callable[[Any, jnp.ndarray], jnp.ndarray],
    schedule: DiffusionSchedule,
    num_frames: int,
    k: int,
    settings: SamplerSettings,
    reencode_apply: Callable[[Any, jnp.ndarray], jnp.ndarray] | None = None,
) -> Callable[[Any, Any, jnp.ndarray, jax.Array], dict[str, jnp.ndarray]]:
    """``fn(denoiser_params, first_stage_params, z_cond, key) -> rollout dict``, to be jitted.

    ``denoise_apply(denoiser_params, z_t, t, z_cond)``,
    ``decode_apply(first_stage_params, latents)`` and
    ``reencode_apply(first_stage_params, frames)``. Parameters are arguments,
    not constants, so new weights (e.g. each EMA evaluation) reuse the
    compiled program; it recompiles only for a new input shape.
    """

    def rollout_fn(denoiser_params, first_stage_params, z_cond, key):
        reencode_fn = None
        if reencode_apply is not None:
            reencode_fn = functools.partial(reencode_apply, first_stage_params)
        return rollout(
            functools.partial(denoise_apply, denoiser_params),
            functools.partial(decode_apply, first_stage_params),
            schedule,
            z_cond,
            key,
            num_frames,
            k,
            settings,
            reencode_fn=reencode_fn,
        )

    return rollout_fn

"""PredVDM's ε-prediction training loss (spec §D.2)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from predvdm_jax.diffusion.schedule import DiffusionSchedule, q_sample

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]

REDUCTIONS = ("sum", "mean")


def diffusion_loss(
    denoise_fn: DenoiseFn,
    schedule: DiffusionSchedule,
    z_target: jnp.ndarray,
    z_cond: jnp.ndarray,
    key: jax.Array,
    reduction: str = "sum",
    l_eps_weight: float = 1.0,
    elbo_weight: float = 0.0,
    t: jnp.ndarray | None = None,
    noise: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Noise ``z_target`` at t ~ U{0..T−1} per example and score ``denoise_fn``'s ε̂.

    ``reduction='sum'`` is PredVDM's per-sample sum of (ε̂ − ε)² over every
    latent element (LDM upstream uses ``'mean'``); either way the per-sample
    values are then averaged over the batch. The VLB term is
    ``mean_b(lvlb_weights[t] · loss_eps)``. ``t`` (int, (B,)) and ``noise``
    override the random draws, e.g. for a fixed-t validation loss.

    ``denoise_fn(z_t, t_float32 (B,), z_cond) -> ε̂``. Returns
    ``(loss, {'loss', 'loss_eps', 'loss_vlb'})``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
    if z_target.ndim < 2:
        raise ValueError(
            f"z_target must have a batch axis and data axes, got shape {z_target.shape}"
        )
    batch = z_target.shape[0]
    t_key, noise_key = jax.random.split(key)
    if t is None:
        t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
    if noise is None:
        noise = jax.random.normal(noise_key, z_target.shape, z_target.dtype)
    elif noise.shape != z_target.shape:
        raise ValueError(f"noise shape {noise.shape} must equal z_target shape {z_target.shape}")
    z_t = q_sample(schedule, z_target, t, noise)
    eps = denoise_fn(z_t, t.astype(jnp.float32), z_cond)
    squared = jnp.square(eps.astype(jnp.float32) - noise.astype(jnp.float32))
    data_axes = tuple(range(1, squared.ndim))
    per_sample = (
        jnp.sum(squared, axis=data_axes)
        if reduction == "sum"
        else jnp.mean(squared, axis=data_axes)
    )
    loss_eps = jnp.mean(per_sample)
    loss_vlb = jnp.mean(schedule.lvlb_weights[t] * per_sample)
    loss = l_eps_weight * loss_eps + elbo_weight * loss_vlb
    return loss, {"loss": loss, "loss_eps": loss_eps, "loss_vlb": loss_vlb}

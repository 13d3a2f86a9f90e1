"""PredVDM's training loss (spec §D.2), for ε-, x0- or v-prediction."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from predvdm_jax.diffusion.parameterization import (
    check_parameterization,
    eps_from_output,
    marginal_alpha_sigma,
    training_target,
)
from predvdm_jax.diffusion.samplers import DenoiseFn
from predvdm_jax.diffusion.schedule import DiffusionSchedule, q_sample

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
    parameterization: str = "eps",
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Noise ``z_target`` at t ~ U{0..T−1} per example and score ``denoise_fn``'s output.

    The simple loss compares the output with the ``parameterization``'s target
    (ε for PredVDM; x0; or v = α ε − σ z0). ``reduction='sum'`` is PredVDM's
    per-sample sum of squared errors over every latent element (LDM upstream
    uses ``'mean'``); either way the per-sample values are then averaged over
    the batch. The VLB term is ``mean_b(lvlb_weights[t] · ‖ε̂ − ε‖²)`` with ε̂
    implied by the output, so it is the same bound whatever the
    parameterization. ``t`` (int, (B,)) and ``noise`` override the random
    draws, e.g. for a fixed-t validation loss.

    ``denoise_fn(z_t, t_float32 (B,), z_cond) -> output``. Returns
    ``(loss, {'loss', 'loss_simple', 'loss_vlb'})``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
    check_parameterization(parameterization)
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
    output = denoise_fn(z_t, t.astype(jnp.float32), z_cond).astype(jnp.float32)
    z_target, noise = z_target.astype(jnp.float32), noise.astype(jnp.float32)
    alpha, sigma = marginal_alpha_sigma(schedule, t, z_target.ndim)
    target = training_target(parameterization, z_target, noise, alpha, sigma)
    eps = eps_from_output(parameterization, output, z_t.astype(jnp.float32), alpha, sigma)
    data_axes = tuple(range(1, z_target.ndim))
    reduce = jnp.sum if reduction == "sum" else jnp.mean
    per_sample = reduce(jnp.square(output - target), axis=data_axes)
    per_sample_eps = reduce(jnp.square(eps - noise), axis=data_axes)
    loss_simple = jnp.mean(per_sample)
    loss_vlb = jnp.mean(schedule.lvlb_weights[t] * per_sample_eps)
    loss = l_eps_weight * loss_simple + elbo_weight * loss_vlb
    return loss, {"loss": loss, "loss_simple": loss_simple, "loss_vlb": loss_vlb}

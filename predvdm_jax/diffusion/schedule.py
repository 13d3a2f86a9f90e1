"""Discrete DDPM noise schedule (spec §D.1) and the forward process q(z_t | z_0).

Buffers are computed in float64 with NumPy, exactly as LDM's
``register_schedule`` does, and stored as float32 JAX arrays.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from flax import struct

BETA_SCHEDULES = ("linear", "linear_beta", "cosine")


def make_betas(
    beta_schedule: str = "linear",
    num_timesteps: int = 1000,
    linear_start: float = 0.0015,
    linear_end: float = 0.0195,
    cosine_s: float = 8e-3,
) -> np.ndarray:
    """β_t in float64.

    ``linear`` is LDM's "linear": ``linspace(√start, √end, T)²``;
    ``linear_beta`` is a plain ``linspace(start, end, T)``;
    ``cosine`` is Nichol & Dhariwal's cosine schedule (β clipped to 0.999).
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if beta_schedule == "linear":
        return np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2
    if beta_schedule == "linear_beta":
        return np.linspace(linear_start, linear_end, num_timesteps, dtype=np.float64)
    if beta_schedule == "cosine":
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps + cosine_s
        f = np.cos(steps / (1 + cosine_s) * np.pi / 2) ** 2
        f = f / f[0]
        return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use one of {BETA_SCHEDULES}")


@struct.dataclass
class DiffusionSchedule:
    """Every buffer of LDM's ``DDPM.register_schedule`` as float32 arrays of length T.

    A pytree: it can be closed over (constants) or passed through ``jax.jit``.
    """

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    log_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    lvlb_weights: jnp.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas) -> "DiffusionSchedule":
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise ValueError(
                f"betas must be a 1-D array of at least 2 values, got shape {betas.shape}"
            )
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must lie strictly between 0 and 1")
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        with np.errstate(divide="ignore"):
            lvlb = betas**2 / (2.0 * posterior_variance * alphas * (1.0 - ac))
        lvlb[0] = lvlb[1]
        buffers = dict(
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            sqrt_alphas_cumprod=np.sqrt(ac),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
            log_one_minus_alphas_cumprod=np.log(1.0 - ac),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=np.log(np.maximum(posterior_variance, 1e-20)),
            posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            lvlb_weights=lvlb,
        )
        return cls(
            **{name: jnp.asarray(value, dtype=jnp.float32) for name, value in buffers.items()}
        )


def make_schedule(
    num_timesteps: int = 1000,
    linear_start: float = 0.0015,
    linear_end: float = 0.0195,
    beta_schedule: str = "linear",
    cosine_s: float = 8e-3,
) -> DiffusionSchedule:
    """PredVDM's default: LDM linear schedule, T=1000, 0.0015 → 0.0195."""
    return DiffusionSchedule.from_betas(
        make_betas(beta_schedule, num_timesteps, linear_start, linear_end, cosine_s)
    )


def _per_example(values: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """``values[t]`` reshaped to broadcast against an array of rank ``ndim``."""
    gathered = values[t]
    return gathered.reshape(gathered.shape + (1,) * (ndim - gathered.ndim))


def q_sample(
    schedule: DiffusionSchedule, z_start: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray
) -> jnp.ndarray:
    """z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε, with integer ``t`` of shape (B,)."""
    a = _per_example(schedule.sqrt_alphas_cumprod, t, z_start.ndim)
    b = _per_example(schedule.sqrt_one_minus_alphas_cumprod, t, z_start.ndim)
    return a * z_start + b * noise


def predict_start_from_noise(
    schedule: DiffusionSchedule, z_t: jnp.ndarray, t: jnp.ndarray, eps: jnp.ndarray
) -> jnp.ndarray:
    """x̂0 = √(1/ᾱ_t) z_t − √(1/ᾱ_t − 1) ε̂, with integer ``t`` of shape (B,)."""
    a = _per_example(schedule.sqrt_recip_alphas_cumprod, t, z_t.ndim)
    b = _per_example(schedule.sqrt_recipm1_alphas_cumprod, t, z_t.ndim)
    return a * z_t - b * eps

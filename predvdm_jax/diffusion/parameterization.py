"""What the denoiser's output means: ε (PredVDM, LDM's default), x0, or v.

With z_t = α z0 + σ ε (α = √ᾱ_t, σ = √(1−ᾱ_t)), the velocity is v = α ε − σ z0,
so ε = σ z_t + α v and z0 = α z_t − σ v. The samplers are written for ε; every
other parameterization reaches them through ``as_eps_predictor``. ε-prediction
turns a small ε error at high noise into an x̂0 error amplified by σ/α (≈ 15 at
t = 999), which is what hurts a small, briefly trained model; v and x0 bound it.
"""

from __future__ import annotations

import jax.numpy as jnp

from predvdm_jax.diffusion.samplers import DenoiseFn, DiscreteVPSchedule
from predvdm_jax.diffusion.schedule import DiffusionSchedule

PARAMETERIZATIONS = ("eps", "x0", "v")


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"unknown parameterization {parameterization!r}; use one of {PARAMETERIZATIONS}"
        )
    return parameterization


def marginal_alpha_sigma(
    schedule: DiffusionSchedule, t: jnp.ndarray, ndim: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(α_t, σ_t) at model times ``t`` (B,), shaped to broadcast against rank ``ndim``.

    ``t`` may be fractional (DPM-Solver's times between grid points): α and σ
    are DPM-Solver's discrete VP schedule at the matching continuous time.
    """
    vp = DiscreteVPSchedule(schedule)
    continuous_t = (t.astype(jnp.float32) + 1.0) / vp.total_n  # inverse of vp.model_time
    alpha, sigma = vp.marginal_alpha(continuous_t), vp.marginal_std(continuous_t)
    shape = t.shape + (1,) * (ndim - t.ndim)
    return alpha.reshape(shape), sigma.reshape(shape)


def training_target(
    parameterization: str,
    z0: jnp.ndarray,
    noise: jnp.ndarray,
    alpha: jnp.ndarray,
    sigma: jnp.ndarray,
) -> jnp.ndarray:
    """What the denoiser should output for z_t = α z0 + σ ε."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return noise
    if parameterization == "x0":
        return z0
    return alpha * noise - sigma * z0


def eps_from_output(
    parameterization: str,
    output: jnp.ndarray,
    z_t: jnp.ndarray,
    alpha: jnp.ndarray,
    sigma: jnp.ndarray,
) -> jnp.ndarray:
    """The ε̂ that the denoiser's ``output`` implies at z_t."""
    check_parameterization(parameterization)
    if parameterization == "eps":
        return output
    if parameterization == "x0":
        return (z_t - alpha * output) / sigma
    return sigma * z_t + alpha * output


def as_eps_predictor(
    denoise_fn: DenoiseFn, schedule: DiffusionSchedule, parameterization: str
) -> DenoiseFn:
    """``denoise_fn`` seen as an ε-predictor ``fn(z_t, t, z_cond) -> ε̂`` (itself for ``eps``)."""
    if check_parameterization(parameterization) == "eps":
        return denoise_fn

    def eps_fn(z_t, t, z_cond):
        alpha, sigma = marginal_alpha_sigma(schedule, t, z_t.ndim)
        output = denoise_fn(z_t, t, z_cond).astype(jnp.float32)
        return eps_from_output(parameterization, output, z_t, alpha, sigma).astype(z_t.dtype)

    return eps_fn

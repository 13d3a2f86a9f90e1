"""ε-, x0- and v-prediction against closed forms.

Gaussian data x0 ~ N(MU, VAR) has an exact posterior mean E[x0 | z_t], so the
exact ε-, x0- and v-predictors are known in closed form (float64 NumPy here);
seen through ``as_eps_predictor`` all three must be the same ε-predictor and
give the same samples from every sampler.
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from predvdm_jax.diffusion.loss import diffusion_loss
from predvdm_jax.diffusion.parameterization import (
    as_eps_predictor,
    eps_from_output,
    marginal_alpha_sigma,
    training_target,
)
from predvdm_jax.diffusion.samplers import SamplerSettings, sample
from predvdm_jax.diffusion.schedule import make_schedule

SCHEDULE = make_schedule()
AC = np.cumprod(1 - np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2)
MU, VAR = 1.0, 0.25


def _alpha_sigma_np(t):
    """α, σ at (fractional) model time t: log √ᾱ linear between integer steps."""
    log_alpha = np.interp(np.asarray(t, np.float64), np.arange(1000.0), 0.5 * np.log(AC))
    alpha = np.exp(log_alpha)
    return alpha, np.sqrt(1 - alpha**2)


def _exact(kind):
    """The exact ``kind`` prediction for Gaussian data, as a denoiser."""

    def denoise(z_t, t, z_cond):
        log_alpha = jnp.interp(t, jnp.arange(1000.0), jnp.asarray(0.5 * np.log(AC), jnp.float32))
        alpha = jnp.exp(log_alpha)[:, None, None, None, None]
        sigma = jnp.sqrt(1 - alpha**2)
        x0 = MU + alpha * VAR / (alpha**2 * VAR + sigma**2) * (z_t - alpha * MU)
        eps = (z_t - alpha * x0) / sigma
        return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[kind]

    return denoise


def test_alpha_sigma_on_and_between_grid_points():
    t = jnp.asarray([0.0, 1.0, 499.0, 999.0, 10.25, 700.5])
    alpha, sigma = marginal_alpha_sigma(SCHEDULE, t, 3)
    assert alpha.shape == (6, 1, 1)
    ref_alpha, ref_sigma = _alpha_sigma_np(np.asarray(t))
    np.testing.assert_allclose(alpha.ravel(), ref_alpha, rtol=1e-6)
    np.testing.assert_allclose(sigma.ravel(), ref_sigma, rtol=1e-5)
    np.testing.assert_allclose(alpha.ravel()[:4], np.sqrt(AC[[0, 1, 499, 999]]), rtol=1e-6)


def test_targets_and_their_eps_are_the_noise():
    rng = np.random.default_rng(0)
    z0, noise = rng.normal(size=(2, 3, 4, 4, 3))
    t = np.array([0, 600, 999])[:, None, None, None]
    alpha, sigma = np.sqrt(AC[t]), np.sqrt(1 - AC[t])
    z_t = alpha * z0 + sigma * noise
    closed = {"eps": noise, "x0": z0, "v": alpha * noise - sigma * z0}
    for kind, expected in closed.items():
        target = training_target(kind, z0, noise, alpha, sigma)
        np.testing.assert_allclose(target, expected, rtol=1e-12)
        np.testing.assert_allclose(
            eps_from_output(kind, target, z_t, alpha, sigma), noise, atol=1e-9
        )


@pytest.mark.parametrize("kind", ["x0", "v"])
def test_exact_predictors_are_one_eps_predictor(kind):
    rng = np.random.default_rng(1)
    z_t = jnp.asarray(rng.normal(size=(5, 1, 2, 2, 1)), jnp.float32)
    t = jnp.asarray([0.0, 3.5, 400.0, 871.25, 999.0])
    eps = as_eps_predictor(_exact(kind), SCHEDULE, kind)(z_t, t, None)
    np.testing.assert_allclose(eps, _exact("eps")(z_t, t, None), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings("ddim", steps=20, eta=1.0),
        SamplerSettings("dpm_solver_pp", steps=10, order=2, skip_type="logSNR"),
    ],
    ids=["ddim_eta1", "dpm_solver_pp_2"],
)
def test_samples_do_not_depend_on_the_parameterization(settings):
    shape = (64, 1, 2, 2, 1)
    samples = {
        kind: sample(
            as_eps_predictor(_exact(kind), SCHEDULE, kind),
            SCHEDULE,
            None,
            jax.random.PRNGKey(0),
            shape,
            settings,
        )
        for kind in ("eps", "x0", "v")
    }
    for kind in ("x0", "v"):
        np.testing.assert_allclose(samples[kind], samples["eps"], atol=2e-4)
    assert abs(float(samples["v"].mean()) - MU) < 0.2


def test_v_loss_and_eps_space_vlb_match_hand_computation():
    rng = np.random.default_rng(2)
    z0, noise = rng.normal(size=(2, 3, 2, 4, 4, 3))
    t = np.array([0, 500, 999])
    alpha = np.sqrt(AC[t])[:, None, None, None, None]
    sigma = np.sqrt(1 - AC[t])[:, None, None, None, None]
    z_t = alpha * z0 + sigma * noise

    def denoise(z, time, cond):
        return 0.5 * z + 1e-3 * time[:, None, None, None, None]

    v_hat = 0.5 * z_t + 1e-3 * t[:, None, None, None, None]
    simple = ((v_hat - (alpha * noise - sigma * z0)) ** 2).reshape(3, -1).sum(1)
    eps_hat = sigma * z_t + alpha * v_hat
    vlb = np.asarray(SCHEDULE.lvlb_weights, np.float64)[t] * ((eps_hat - noise) ** 2).reshape(
        3, -1
    ).sum(1)
    loss, aux = diffusion_loss(
        denoise,
        SCHEDULE,
        jnp.asarray(z0, jnp.float32),
        None,
        jax.random.PRNGKey(0),
        elbo_weight=0.1,
        t=jnp.asarray(t),
        noise=jnp.asarray(noise, jnp.float32),
        parameterization="v",
    )
    np.testing.assert_allclose(aux["loss_simple"], simple.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["loss_vlb"], vlb.mean(), rtol=1e-4)
    np.testing.assert_allclose(loss, simple.mean() + 0.1 * vlb.mean(), rtol=1e-5)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="parameterization 'score'"):
        as_eps_predictor(_exact("eps"), SCHEDULE, "score")

"""diffusion_loss against a NumPy float64 hand computation."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from predvdm_jax.diffusion.loss import diffusion_loss
from predvdm_jax.diffusion.schedule import make_schedule

SCHEDULE = make_schedule()


def linear_denoiser(z_t, t, z_cond):
    """A known ε̂: mixes z_t, the time and the conditioning mean."""
    cond_mean = jnp.mean(z_cond, axis=(1, 2, 3, 4), keepdims=True)
    return 0.5 * z_t + 1e-3 * t[:, None, None, None, None] + cond_mean


def numpy_denoiser(z_t, t, z_cond):
    cond_mean = z_cond.mean(axis=(1, 2, 3, 4), keepdims=True)
    return 0.5 * z_t + 1e-3 * t[:, None, None, None, None] + cond_mean


def _data():
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(3, 2, 4, 4, 3))
    cond = rng.normal(size=(3, 2, 4, 4, 3))
    noise = rng.normal(size=z0.shape)
    t = np.array([0, 500, 999])
    return z0, cond, noise, t


def _hand_per_sample(z0, cond, noise, t):
    ac = np.cumprod(1 - np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2)[t][
        :, None, None, None, None
    ]
    z_t = np.sqrt(ac) * z0 + np.sqrt(1 - ac) * noise
    return ((numpy_denoiser(z_t, t.astype(float), cond) - noise) ** 2).reshape(len(t), -1)


def test_sum_and_mean_reductions_match_hand_computation():
    z0, cond, noise, t = _data()
    per = _hand_per_sample(z0, cond, noise, t)
    args = (
        linear_denoiser,
        SCHEDULE,
        jnp.asarray(z0, jnp.float32),
        jnp.asarray(cond, jnp.float32),
        jax.random.PRNGKey(0),
    )
    kw = dict(t=jnp.asarray(t), noise=jnp.asarray(noise, jnp.float32))
    loss_sum, aux_sum = diffusion_loss(*args, **kw)
    loss_mean, aux_mean = diffusion_loss(*args, reduction="mean", **kw)
    np.testing.assert_allclose(loss_sum, per.sum(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(loss_mean, per.mean(1).mean(), rtol=1e-5)
    elements = 2 * 4 * 4 * 3
    np.testing.assert_allclose(loss_sum / loss_mean, elements, rtol=1e-5)
    np.testing.assert_allclose(aux_sum["loss_simple"], loss_sum, rtol=1e-6)
    # VLB weight: lvlb_weights[t] · per-sample loss, batch mean.
    w = np.asarray(SCHEDULE.lvlb_weights, np.float64)[t]
    loss_vlb, aux = diffusion_loss(*args, l_eps_weight=0.5, elbo_weight=2.0, **kw)
    expected_vlb = (w * per.sum(1)).mean()
    np.testing.assert_allclose(aux["loss_vlb"], expected_vlb, rtol=1e-5)
    np.testing.assert_allclose(loss_vlb, 0.5 * per.sum(1).mean() + 2.0 * expected_vlb, rtol=1e-5)


def test_random_draws_are_used_consistently():
    """With t and ε drawn inside, the loss equals the hand value for the z_t the model saw."""
    z0, cond, _, _ = _data()
    seen = {}

    def spy(z_t, t, z_cond):
        seen["z_t"], seen["t"] = np.asarray(z_t, np.float64), np.asarray(t)
        return linear_denoiser(z_t, t, z_cond)

    loss, _ = diffusion_loss(
        spy,
        SCHEDULE,
        jnp.asarray(z0, jnp.float32),
        jnp.asarray(cond, jnp.float32),
        jax.random.PRNGKey(3),
    )
    t = seen["t"].astype(int)
    assert (
        seen["t"].dtype == np.float32 and np.all(t == seen["t"]) and np.all((t >= 0) & (t < 1000))
    )
    ac = np.asarray(SCHEDULE.alphas_cumprod, np.float64)[t][:, None, None, None, None]
    noise = (seen["z_t"] - np.sqrt(ac) * z0) / np.sqrt(1 - ac)
    np.testing.assert_allclose(loss, _hand_per_sample(z0, cond, noise, t).sum(1).mean(), rtol=1e-3)


def test_timesteps_are_uniform_over_all_steps():
    seen = []

    def spy(z_t, t, z_cond):
        seen.append(t)
        return z_t

    z0 = jnp.zeros((4096, 1))
    diffusion_loss(spy, SCHEDULE, z0, None, jax.random.PRNGKey(1))
    t = np.asarray(seen[0])
    assert t.min() < 10 and t.max() > 990
    # Mean and variance of U{0..999}: 499.5 and (1000²−1)/12.
    assert abs(t.mean() - 499.5) < 15
    assert abs(t.var() / ((1000**2 - 1) / 12) - 1) < 0.06


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        diffusion_loss(
            linear_denoiser,
            SCHEDULE,
            jnp.zeros((1, 1, 1, 1, 1)),
            jnp.zeros((1, 1, 1, 1, 1)),
            jax.random.PRNGKey(0),
            reduction="avg",
        )

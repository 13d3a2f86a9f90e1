"""Schedule values against spec §D.1 numbers and an independent float64 computation."""

import numpy as np
import pytest
import jax.numpy as jnp

from predvdm_jax.diffusion.schedule import (
    make_betas,
    make_schedule,
    predict_start_from_noise,
    q_sample,
)


def test_predvdm_linear_schedule_values():
    s = make_schedule()
    assert s.num_timesteps == 1000
    np.testing.assert_allclose(s.betas[0], 0.0015, rtol=1e-6)
    np.testing.assert_allclose(s.betas[999], 0.0195, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod[0], 0.9985, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod[999], 1.423e-4, rtol=2e-3)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod[999], 0.0119, rtol=5e-3)
    # β is linear in √β, not in β: the midpoint of √β, squared.
    mid = ((0.0015**0.5 + 0.0195**0.5) / 2) ** 2
    betas_odd = make_betas("linear", 1001)
    np.testing.assert_allclose(betas_odd[500], mid, rtol=1e-12)


def test_mcvd_variant_alphas_cumprod_end():
    s = make_schedule(linear_start=1e-4, linear_end=2e-2)
    np.testing.assert_allclose(s.alphas_cumprod[999], 7.33e-4, rtol=2e-3)


def test_buffers_match_closed_forms():
    s = make_schedule()
    b = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    a = 1 - b
    ac = np.cumprod(a)
    acp = np.concatenate([[1.0], ac[:-1]])
    pv = b * (1 - acp) / (1 - ac)
    expected = {
        "alphas_cumprod_prev": acp,
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "sqrt_recip_alphas_cumprod": 1 / np.sqrt(ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "posterior_variance": pv,
        "posterior_mean_coef1": b * np.sqrt(acp) / (1 - ac),
        "posterior_mean_coef2": (1 - acp) * np.sqrt(a) / (1 - ac),
    }
    for name, value in expected.items():
        got = np.asarray(getattr(s, name))
        assert got.dtype == np.float32, name
        np.testing.assert_allclose(got, value, rtol=2e-6, atol=1e-30, err_msg=name)
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(1e-20), rtol=1e-6)
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(pv[1:]), rtol=1e-6)
    lvlb = b[1:] ** 2 / (2 * pv[1:] * a[1:] * (1 - ac[1:]))
    np.testing.assert_allclose(s.lvlb_weights[1:], lvlb, rtol=2e-6)
    assert s.lvlb_weights[0] == s.lvlb_weights[1]
    assert np.all(np.isfinite(s.lvlb_weights))


def test_other_beta_schedules():
    np.testing.assert_allclose(make_betas("linear_beta", 5, 0.1, 0.5), [0.1, 0.2, 0.3, 0.4, 0.5])
    cos = make_betas("cosine", 1000)
    f = np.cos((np.arange(1001) / 1000 + 8e-3) / 1.008 * np.pi / 2) ** 2
    ac = f[1:] / f[0]
    np.testing.assert_allclose(np.cumprod(1 - cos)[:-1], ac[:-1], rtol=1e-9)
    with pytest.raises(ValueError, match="beta_schedule"):
        make_betas("quadratic")


def test_q_sample_and_inverse():
    s = make_schedule()
    z0 = jnp.arange(12.0).reshape(2, 6) / 10
    noise = jnp.ones((2, 6)) * 0.3
    t = jnp.array([0, 999])
    zt = q_sample(s, z0, t, noise)
    ac = np.asarray(s.alphas_cumprod, np.float64)[[0, 999]][:, None]
    np.testing.assert_allclose(zt, np.sqrt(ac) * np.asarray(z0) + np.sqrt(1 - ac) * 0.3, rtol=1e-5)
    np.testing.assert_allclose(predict_start_from_noise(s, zt, t, noise), z0, atol=1e-4)

"""Samplers against closed forms: Gaussian data has an exact ε-predictor, so
sample moments follow a linear-Gaussian recursion and the probability-flow
ODE has a closed-form solution. DPM-Solver++ is also checked against a
float64 NumPy transcription of the original's multistep loop."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from predvdm_jax.diffusion.schedule import make_schedule
from predvdm_jax.diffusion.samplers import (
    SamplerSettings,
    ddim_max_eta,
    ddim_parameters,
    ddim_sample,
    ddim_timesteps,
    dpm_solver_pp_sample,
    dpm_solver_step_orders,
    process_x0,
    sample,
)

SCHEDULE = make_schedule()
BETAS = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
AC = np.cumprod(1 - BETAS)
AC_PREV = np.r_[1.0, AC[:-1]]
MU, VAR = 1.0, 0.25
GAUSS_SHAPE = (4000, 1, 2, 2, 1)


def exact_eps(z_t, t, z_cond):
    """E[ε | z_t] for x0 ~ N(MU, VAR), with ᾱ at (fractional) model time t interpolated
    as DPM-Solver's discrete schedule does (log √ᾱ linear between integer steps)."""
    log_alpha = jnp.interp(t, jnp.arange(1000.0), jnp.asarray(0.5 * np.log(AC), jnp.float32))
    a = jnp.exp(2 * log_alpha)[:, None, None, None, None]
    return (z_t - jnp.sqrt(a) * MU) * jnp.sqrt(1 - a) / (a * VAR + 1 - a)


def nonlinear_eps(xp):
    def eps(z_t, t, z_cond):
        t = t.reshape((-1,) + (1,) * (z_t.ndim - 1))
        return (
            0.8 * xp.tanh(z_t) + 0.1 * xp.sin(t / 100.0) + 0.1 * xp.cos(z_t) + 0.2 * xp.tanh(z_cond)
        )

    return eps


def _x0_affine(a):
    """x̂0 = g·z + h for the Gaussian data."""
    g = VAR * np.sqrt(a) / (a * VAR + 1 - a)
    return g, MU - g * np.sqrt(a) * MU


def ddpm_moments():
    m, v = 0.0, 1.0
    for t in range(999, -1, -1):
        g, h = _x0_affine(AC[t])
        c1 = BETAS[t] * np.sqrt(AC_PREV[t]) / (1 - AC[t])
        c2 = (1 - AC_PREV[t]) * np.sqrt(1 - BETAS[t]) / (1 - AC[t])
        pv = BETAS[t] * (1 - AC_PREV[t]) / (1 - AC[t])
        a_lin = c1 * g + c2
        m, v = a_lin * m + c1 * h, a_lin**2 * v + (pv if t > 0 else 0.0)
    return m, v


def ddim_moments(steps, eta):
    ts = np.arange(0, 1000, 1000 // steps) + 1
    ts[ts == 1000] = 999
    a, ap = AC[ts], np.r_[AC[0], AC[ts[:-1]]]
    sig = eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    m, v = 0.0, 1.0
    for i in reversed(range(len(ts))):
        g, h = _x0_affine(a[i])
        ge, he = (1 - np.sqrt(a[i]) * g) / np.sqrt(1 - a[i]), -np.sqrt(a[i]) * h / np.sqrt(1 - a[i])
        d = np.sqrt(1 - ap[i] - sig[i] ** 2)
        a_lin = np.sqrt(ap[i]) * g + d * ge
        m, v = a_lin * m + np.sqrt(ap[i]) * h + d * he, a_lin**2 * v + sig[i] ** 2
    return m, v


def exact_flow(x_T):
    """Probability-flow ODE from t=T−1 to t=0: the standardised value is invariant."""
    a_T, a_0 = AC[-1], AC[0]
    scale = np.sqrt(a_0 * VAR + 1 - a_0) / np.sqrt(a_T * VAR + 1 - a_T)
    return np.sqrt(a_0) * MU + scale * (np.asarray(x_T, np.float64) - np.sqrt(a_T) * MU)


def _draw(settings, key=0):
    fn = jax.jit(lambda k: sample(exact_eps, SCHEDULE, None, k, GAUSS_SHAPE, settings))
    return np.asarray(fn(jax.random.PRNGKey(key)), np.float64)


# ---------------------------------------------------------------- DDIM grid


@pytest.mark.parametrize(
    "steps, first, second, last",
    [(10, 1, 101, 901), (20, 1, 51, 951), (100, 1, 11, 991), (200, 1, 6, 996)],
)
def test_ddim_grid_matches_spec(steps, first, second, last):
    ts = ddim_timesteps(steps, 1000)
    assert len(ts) == steps
    assert (ts[0], ts[1], ts[-1]) == (first, second, last)
    np.testing.assert_array_equal(np.diff(ts), 1000 // steps)


def test_ddim_grid_clamps_final_1000():
    ts = ddim_timesteps(1000, 1000)
    assert ts[-1] == 999 and ts[-2] == 999 and ts[0] == 1


def test_ddim_eta1_s1000_matches_ddpm_posterior_variance():
    ts = ddim_timesteps(1000, 1000)
    alphas, alphas_prev, sigmas = ddim_parameters(SCHEDULE, ts, eta=1.0)
    np.testing.assert_allclose(alphas_prev[0], 0.9985, rtol=1e-6)
    pv = BETAS * (1 - AC_PREV) / (1 - AC)
    # Entries 0..998 are steps t=1..999 with ᾱ_prev = ᾱ_{t−1}: exactly DDPM's β̃_t.
    np.testing.assert_allclose(np.asarray(sigmas[:-1]) ** 2, pv[ts[:-1]], rtol=2e-3)
    # The repeated 999 has ᾱ_prev = ᾱ_t, hence no noise.
    assert sigmas[-1] == 0.0
    # LDM computes σ in float64 from the float32 ᾱ (float32 is off by 2e-5 here).
    ac = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
    a, a_prev = ac[ts[:-1]], np.concatenate([ac[:1], ac[ts[:-2]]])
    expected = np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    np.testing.assert_allclose(sigmas[:-1], expected, rtol=2e-7)


@pytest.mark.parametrize("steps", [10, 100, 1000])
def test_ddim_eta_above_one_goes_as_far_as_the_noise_fits_in_one_minus_alpha_prev(steps):
    """σ_t(η)² ≤ 1 − ᾱ_prev keeps DDIM's direction term real; the largest η that does so on
    the grid is accepted, anything above is an error (it was clamped without a word)."""
    ts = ddim_timesteps(steps)
    a, a_prev = AC[ts], np.r_[AC[0], AC[ts[:-1]]]
    room = lambda eta: 1 - a_prev - eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    largest = ddim_max_eta(SCHEDULE, ts)
    assert largest >= 1
    assert abs(room(largest).min()) < 1e-6 and room(largest * 1.001).min() < 0
    ddim_parameters(SCHEDULE, ts, eta=largest)
    with pytest.raises(ValueError, match=rf"DDIM eta {largest * 1.01} exceeds .*use at most 1\."):
        ddim_parameters(SCHEDULE, ts, eta=largest * 1.01)


def test_ddim_first_model_call_is_991_for_100_steps():
    seen = []

    def spy(z_t, t, z_cond):
        jax.debug.callback(lambda v: seen.append(float(v[0])), t, ordered=True)
        return jnp.zeros_like(z_t)

    jax.jit(
        lambda key: ddim_sample(
            spy, SCHEDULE, None, key, (1, 1, 1, 1, 1), SamplerSettings(steps=100)
        )
    )(jax.random.PRNGKey(0))
    jax.effects_barrier()
    np.testing.assert_array_equal(seen, np.arange(991, 0, -10))


# ------------------------------------------------------- Gaussian moments


@pytest.mark.parametrize(
    "settings, moments",
    [
        (SamplerSettings("ddpm"), ddpm_moments),
        (SamplerSettings("ddim", steps=100, eta=0.0), lambda: ddim_moments(100, 0.0)),
        (SamplerSettings("ddim", steps=100, eta=1.0), lambda: ddim_moments(100, 1.0)),
        (SamplerSettings("ddim", steps=10, eta=1.0), lambda: ddim_moments(10, 1.0)),
    ],
    ids=["ddpm", "ddim100-eta0", "ddim100-eta1", "ddim10-eta1"],
)
def test_ddpm_ddim_moments_match_linear_gaussian_recursion(settings, moments):
    x = _draw(settings)
    mean, var = moments()
    assert abs(x.mean() - mean) < 0.02
    assert abs(x.var() / var - 1) < 0.05
    if settings.sampler == "ddpm" or settings.steps == 100:
        # Many steps: close to the data distribution itself (x0 ~ N(1, 0.25)).
        assert abs(x.mean() - MU) < 0.03 and abs(x.var() / VAR - 1) < 0.16


def test_few_step_stochastic_ddim_underestimates_variance():
    """Guards the recursion test against a loose tolerance: 10-step η=1 is far from 100-step."""
    assert ddim_moments(10, 1.0)[1] < 0.6 * ddim_moments(100, 1.0)[1]


GAUSS_X_T = jax.random.normal(jax.random.PRNGKey(7), GAUSS_SHAPE)


@functools.lru_cache(maxsize=None)
def _dpm_gauss(order, steps):
    """DPM-Solver++ on the Gaussian data from a fixed x_T (shared by the tests below)."""
    settings = SamplerSettings(
        "dpm_solver_pp", steps=steps, order=order, skip_type="logSNR", lower_order_final=False
    )
    fn = jax.jit(
        lambda x_T: sample(
            exact_eps, SCHEDULE, None, jax.random.PRNGKey(0), GAUSS_SHAPE, settings, x_T=x_T
        )
    )
    return np.asarray(fn(GAUSS_X_T), np.float64)


@pytest.mark.parametrize("order, steps", [(1, 80), (2, 40), (3, 40)])
def test_dpm_solver_pp_moments_and_probability_flow(order, steps):
    x = _dpm_gauss(order, steps)
    assert np.max(np.abs(x - exact_flow(GAUSS_X_T))) < 0.06
    # Output is z at t=1/T: N(√ᾱ₀ μ, ᾱ₀ s² + 1 − ᾱ₀).
    assert abs(x.mean() - np.sqrt(AC[0]) * MU) < 0.03
    assert abs(x.var() / (AC[0] * VAR + 1 - AC[0]) - 1) < 0.06


def test_dpm_solver_pp_convergence_orders():
    """Against the exact probability flow, the error halves per step doubling for
    order 1, quarters for order 2, and order 3 beats order 2 (its first-order
    warm-up step caps its global rate)."""
    target = exact_flow(GAUSS_X_T)
    e = {
        key: np.max(np.abs(_dpm_gauss(*key) - target))
        for key in [(1, 40), (1, 80), (2, 40), (2, 80), (3, 40)]
    }
    assert 1.8 < e[1, 40] / e[1, 80] < 2.2
    assert 3.5 < e[2, 40] / e[2, 80] < 4.5
    assert e[3, 40] < 0.6 * e[2, 40] and e[2, 40] < 0.1 * e[1, 40]


# --------------------------------------------- DPM-Solver++ reference loop


class _NumpyVP:
    def __init__(self, alphas_cumprod):
        self.n = len(alphas_cumprod)
        self.t_array = np.linspace(0.0, 1.0, self.n + 1)[1:]
        self.log_alpha = 0.5 * np.log(alphas_cumprod)

    def lmc(self, t):
        return np.interp(t, self.t_array, self.log_alpha)

    def alpha(self, t):
        return np.exp(self.lmc(t))

    def std(self, t):
        return np.sqrt(1.0 - np.exp(2 * self.lmc(t)))

    def lam(self, t):
        return self.lmc(t) - 0.5 * np.log(1.0 - np.exp(2 * self.lmc(t)))

    def inverse_lambda(self, lam):
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return np.interp(log_alpha, self.log_alpha[::-1], self.t_array[::-1])


def reference_dpm_solver_pp(model, x, cond, steps, order, skip_type):
    """The original's multistep loop (lists of previous times / x̂0), float64."""
    ns = _NumpyVP(AC)
    t_end = 1.0 / ns.n
    if skip_type == "time_uniform":
        ts = np.linspace(1.0, t_end, steps + 1)
    elif skip_type == "time_quadratic":
        ts = np.linspace(1.0, t_end**0.5, steps + 1) ** 2
    else:
        ts = ns.inverse_lambda(np.linspace(ns.lam(1.0), ns.lam(t_end), steps + 1))

    def model_fn(x, t):
        eps = model(x, np.full((x.shape[0],), (t - t_end) * ns.n), cond)
        return (x - ns.std(t) * eps) / ns.alpha(t)

    def update(x, models, times, t, step_order):
        lam_t, alpha_t = ns.lam(t), ns.alpha(t)
        lam0 = ns.lam(times[-1])
        h = lam_t - lam0
        phi_1 = np.expm1(-h)
        out = ns.std(t) / ns.std(times[-1]) * x - alpha_t * phi_1 * models[-1]
        if step_order == 1:
            return out
        lam1 = ns.lam(times[-2])
        r0 = (lam0 - lam1) / h
        d1_0 = (models[-1] - models[-2]) / r0
        if step_order == 2:
            return out - 0.5 * alpha_t * phi_1 * d1_0
        r1 = (lam1 - ns.lam(times[-3])) / h
        d1_1 = (models[-2] - models[-3]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        return out + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2

    times, models = [ts[0]], [model_fn(x, ts[0])]
    for step in range(1, order):
        x = update(x, models, times, ts[step], step)
        times.append(ts[step])
        models.append(model_fn(x, ts[step]))
    for step in range(order, steps + 1):
        if steps < 10:  # the original's lower_order_final
            step_order = min(order, steps + 1 - step)
        else:
            step_order = order
        x = update(x, models, times, ts[step], step_order)
        times = (times + [ts[step]])[-order:]
        if step < steps:
            models = (models + [model_fn(x, ts[step])])[-order:]
    return x


@pytest.mark.parametrize(
    "order, steps, skip_type",
    [
        (2, 5, "time_uniform"),
        (3, 5, "logSNR"),
        (3, 12, "time_uniform"),
        (3, 12, "logSNR"),
        (3, 7, "time_quadratic"),
    ],
)
def test_dpm_solver_pp_matches_reference_loop(order, steps, skip_type):
    rng = np.random.default_rng(order * 100 + steps)
    x_T = rng.normal(size=(2, 2, 3, 3, 1))
    cond = rng.normal(size=(2, 2, 3, 3, 1))
    settings = SamplerSettings(
        "dpm_solver_pp",
        steps=steps,
        order=order,
        skip_type=skip_type,
    )
    got = jax.jit(
        lambda c, x: dpm_solver_pp_sample(
            nonlinear_eps(jnp), SCHEDULE, c, jax.random.PRNGKey(0), x_T.shape, settings, x_T=x
        )
    )(jnp.asarray(cond, jnp.float32), jnp.asarray(x_T, jnp.float32))
    want = reference_dpm_solver_pp(nonlinear_eps(np), x_T, cond, steps, order, skip_type)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


def test_dpm_solver_step_orders():
    orders = lambda **kw: dpm_solver_step_orders(SamplerSettings("dpm_solver_pp", **kw)).tolist()
    assert orders(steps=5, order=3) == [1, 2, 3, 2, 1]
    assert orders(steps=9, order=3) == [1, 2] + [3] * 5 + [2, 1]
    assert orders(steps=10, order=3) == [1, 2] + [3] * 8  # 10 steps or more: no lowering
    assert orders(steps=5, order=2, lower_order_final=False) == [1, 2, 2, 2, 2]


def test_dpm_solver_order1_equals_ddim_eta0_on_same_grid():
    """time_uniform with 9 steps visits model times 999, 888, ..., 111, 0, which is
    DDIM on the grid [111, 222, ..., 999] (whose final ᾱ_prev is ᾱ₀ = time 0)."""
    rng = np.random.default_rng(1)
    x_T = jnp.asarray(rng.normal(size=(2, 2, 3, 3, 1)), jnp.float32)
    cond = jnp.asarray(rng.normal(size=(2, 2, 3, 3, 1)), jnp.float32)
    key = jax.random.PRNGKey(0)

    @jax.jit
    def both(cond, x_T):
        dpm = dpm_solver_pp_sample(
            nonlinear_eps(jnp),
            SCHEDULE,
            cond,
            key,
            x_T.shape,
            SamplerSettings("dpm_solver_pp", steps=9, order=1),
            x_T=x_T,
        )
        ddim = ddim_sample(
            nonlinear_eps(jnp),
            SCHEDULE,
            cond,
            key,
            x_T.shape,
            SamplerSettings("ddim", eta=0.0),
            x_T=x_T,
            timesteps=np.arange(111, 1000, 111),
        )
        return dpm, ddim

    dpm, ddim = both(cond, x_T)
    np.testing.assert_allclose(dpm, ddim, rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(np.asarray(dpm) - np.asarray(x_T))) > 0.1


# ---------------------------------------------------------- determinism


def test_ddim_eta0_is_deterministic_given_x_T_and_eta1_is_not():
    x_T = jax.random.normal(jax.random.PRNGKey(9), (2, 2, 3, 3, 1))
    cond = jnp.ones((2, 2, 3, 3, 1))

    @functools.partial(jax.jit, static_argnames="eta")
    def run(key, eta):
        return ddim_sample(
            nonlinear_eps(jnp),
            SCHEDULE,
            cond,
            key,
            x_T.shape,
            SamplerSettings(steps=20, eta=eta),
            x_T=x_T,
        )

    key1, key2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(run(key1, 0.0), run(key2, 0.0))
    stochastic = run(key1, 1.0)
    np.testing.assert_array_equal(stochastic, run(key1, 1.0))
    assert np.max(np.abs(stochastic - run(key2, 1.0))) > 1e-2


# ------------------------------------------------------------- clipping


def test_process_x0_identity_and_static_clip():
    x0 = jnp.asarray(np.random.default_rng(0).normal(scale=3.0, size=(3, 40)), jnp.float32)
    np.testing.assert_array_equal(process_x0(x0, SamplerSettings()), x0)
    np.testing.assert_allclose(process_x0(x0, SamplerSettings(clip_x0=1.5)), np.clip(x0, -1.5, 1.5))


def test_dynamic_threshold_per_sample_over_every_axis_with_a_bound():
    """Imagen / DPM-Solver: s = max(quantile_p(|x0| of each sample), c); x0 → clip(x0, ±s)/s·c,
    with c = clip_x0, or 1 when clip_x0 is unset."""
    rng = np.random.default_rng(4)
    x0 = rng.normal(size=(3, 2, 4, 4, 3)) * np.array([0.5, 2.0, 6.0])[:, None, None, None, None]
    p = 0.8
    flat = np.abs(x0).reshape(3, -1)
    for c, clip_x0 in ((1.5, 1.5), (1.0, None)):
        s = np.maximum(np.quantile(flat, p, axis=1), c).reshape(3, 1, 1, 1, 1)
        want = np.clip(x0, -s, s) / s * c
        settings = SamplerSettings(clip_x0=clip_x0, dynamic_threshold=p)
        got = process_x0(jnp.asarray(x0, jnp.float32), settings)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert s[0] == c and s[2] > c  # one sample only clipped to ±c, one rescaled
        np.testing.assert_allclose(got[0], np.clip(x0[0], -c, c), rtol=1e-5)
        assert np.max(np.abs(got[2])) == pytest.approx(c, rel=1e-5)


def test_ddpm_clip_bounds_final_sample():
    """DDPM's last step returns x̂0 (coef1[0]=1, coef2[0]=0), so it obeys the clip."""
    wild = lambda z, t, c: -5.0 * jnp.ones_like(z)
    x = jax.jit(
        lambda key: sample(
            wild, SCHEDULE, None, key, (2, 1, 2, 2, 1), SamplerSettings("ddpm", clip_x0=1.0)
        )
    )(jax.random.PRNGKey(0))
    assert np.all(np.abs(np.asarray(x)) <= 1.0 + 1e-5) and np.max(np.abs(np.asarray(x))) > 0.99


# ----------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="euler"), "unknown sampler"),
        (dict(order=4), "order"),
        (dict(order=0), "order"),
        (dict(steps=0), "steps"),
        (dict(eta=-1.0), "eta"),
        (dict(eta=float("nan")), "eta must be a finite number >= 0, got nan"),
        (dict(skip_type="uniform"), "skip_type"),
        (dict(sampler="dpm_solver_pp", steps=2, order=3), "steps >= order"),
        (dict(clip_x0=0.0), "clip_x0"),
        (dict(dynamic_threshold=1.5), "dynamic_threshold"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**kwargs)


def test_ddim_steps_above_timesteps_rejected():
    with pytest.raises(ValueError, match="must not exceed"):
        ddim_timesteps(1001, 1000)

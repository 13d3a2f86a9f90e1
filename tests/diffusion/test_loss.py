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


def test_latent_diffusion_loss_scales_and_slices_the_clip_like_a_float64_hand_value():
    """LatentDiffusion.loss on frames: the VQ latents × scale_factor, z[:, :C] the clean
    conditioning and z[:, C:C+k] the noised targets, PredVDM's per-sample sum then batch mean.
    (Ignoring scale_factor, swapping cond and target, or taking the frame after the target
    block each move the loss by 0.5-2 %, far outside the tolerance.)"""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.models.autoencoder import VQModel
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    cond, k, scale_factor = 2, 2, 0.37
    config = tiny_config(cond, k)
    config.scale_factor = scale_factor  # != 1: a loss that ignored it would differ
    config.unet.dropout = 0.0  # the training path (train=True) without random dropout
    d = config.diffusion
    assert (d.loss_reduction, d.l_eps_weight, d.elbo_weight) == ("sum", 1.0, 0.0)
    assert d.parameterization == "eps"
    model = LatentDiffusion.from_config(config)
    params = random_params_from_init(model.init_denoiser)
    vq_params = random_params_from_init(model.init_vq, 1)

    rng = np.random.default_rng(4)
    b, frames, size = 2, cond + k + 1, config.data.image_size  # a frame past the target block
    video = rng.uniform(-1, 1, (b, frames, size, size, 1)).astype(np.float32)
    h = size // model.vq.downsample_factor
    noise = rng.standard_normal((b, k, h, h, config.vq.embed_dim))
    t = np.array([40, 620])

    loss, aux = jax.jit(model.loss)(
        params,
        vq_params,
        {"video": jnp.asarray(video)},
        jax.random.PRNGKey(0),
        t=jnp.asarray(t),
        noise=jnp.asarray(noise, jnp.float32),
    )

    # The hand value: grayscale repeated to RGB, the VQ encoder frame by frame, then × scale.
    rgb = np.repeat(video, 3, axis=-1).reshape(b * frames, size, size, 3)
    encode = jax.jit(lambda x: model.vq.apply({"params": vq_params}, x, method=VQModel.encode))
    z = scale_factor * np.asarray(encode(rgb), np.float64).reshape(b, frames, h, h, -1)
    betas = np.linspace(d.linear_start**0.5, d.linear_end**0.5, d.timesteps) ** 2
    ac = np.cumprod(1.0 - betas)[t][:, None, None, None, None]
    noisy = np.sqrt(ac) * z[:, cond : cond + k] + np.sqrt(1.0 - ac) * noise
    eps_hat = jax.jit(model.denoiser.apply)(
        {"params": params},
        jnp.asarray(noisy, jnp.float32),
        jnp.asarray(t, jnp.float32),
        jnp.asarray(z[:, :cond], jnp.float32),
    )
    per_sample = np.sum((np.asarray(eps_hat, np.float64) - noise) ** 2, axis=(1, 2, 3, 4))
    np.testing.assert_allclose(float(loss), per_sample.mean(), rtol=2e-6)
    np.testing.assert_allclose(float(aux["loss_simple"]), per_sample.mean(), rtol=2e-6)

"""Autoregressive rollout with closed-form denoisers whose samples are known exactly."""

import functools
import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from predvdm_jax.diffusion.rollout import make_rollout_fn, rollout
from predvdm_jax.diffusion.samplers import SamplerSettings, sample
from predvdm_jax.diffusion.schedule import make_schedule

SCHEDULE = make_schedule()
DETERMINISTIC = SamplerSettings("ddim", steps=4, eta=0.0)
AC = np.asarray(SCHEDULE.alphas_cumprod, np.float64)


def next_frames_denoiser(z_t, t, z_cond):
    """ε̂ for which deterministic DDIM (ending at ᾱ₀) returns exactly
    y_j = last conditioning latent + (j + 1), j = index in the block.

    Solving √ᾱ₀ x̂0 + √(1−ᾱ₀) ε̂ = y with x̂0 = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t gives
    ε̂ = (z_t − (a/a₀) y) / (b − a b₀/a₀), a = √ᾱ_t, b = √(1−ᾱ_t)."""
    k = z_t.shape[1]
    steps_ahead = jnp.arange(1, k + 1, dtype=jnp.float32).reshape(1, k, 1, 1, 1)
    return eps_for_target(z_t, t, z_cond[:, -1:] + steps_ahead)


def eps_for_target(z_t, t, y):
    """ε̂ for which deterministic DDIM returns exactly ``y`` (derivation above)."""
    a = jnp.sqrt(SCHEDULE.alphas_cumprod[t.astype(jnp.int32)]).reshape(-1, 1, 1, 1, 1)
    b = jnp.sqrt(1 - a**2)
    a0, b0 = AC[0] ** 0.5, (1 - AC[0]) ** 0.5
    return (z_t - a / a0 * y) / (b - a * b0 / a0)


def upsample_decode(z, gain=0.1):
    """Latents (B, k, h, w, 1) -> frames (B, k, 2h, 2w, 3)."""
    frames = gain * jnp.repeat(jnp.repeat(z, 2, axis=2), 2, axis=3)
    return jnp.concatenate([frames, frames, frames], axis=-1)


def _cond(batch=2, n_cond=2, seed=0):
    return jnp.asarray(
        0.1 * np.random.default_rng(seed).normal(size=(batch, n_cond, 2, 2, 1)), jnp.float32
    )


@functools.partial(
    jax.jit, static_argnames=("num_frames", "k", "gain", "reencode_offset", "settings")
)
def _run(z_cond, key, num_frames, k, gain=0.1, reencode_offset=None, settings=DETERMINISTIC):
    reencode = None
    if reencode_offset is not None:
        reencode = lambda frames: frames[:, :, ::2, ::2, :1] / gain + reencode_offset
    return rollout(
        next_frames_denoiser,
        functools.partial(upsample_decode, gain=gain),
        SCHEDULE,
        z_cond,
        key,
        num_frames,
        k,
        settings,
        reencode_fn=reencode,
    )


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_16_bit_conditioning_latents_roll_out_as_their_float32_values(dtype):
    """Latent caches store float16: the window then holds float32 samples beside them (the
    scan's carry once changed dtype and failed)."""
    z_cond = _cond().astype(dtype)
    out = _run(z_cond, jax.random.PRNGKey(0), num_frames=5, k=3)
    last = np.asarray(z_cond[:, -1:].astype(jnp.float32))
    assert out["latents"].dtype == jnp.float32
    np.testing.assert_allclose(
        out["latents"], last + np.arange(1, 6).reshape(1, 5, 1, 1, 1), atol=2e-3
    )


def test_reencode_option_conditions_on_decoded_frames():
    """Re-encoding adds 0.5 to every conditioning latent, so each block starts 0.5 higher."""
    z_cond = _cond()
    out = _run(z_cond, jax.random.PRNGKey(0), num_frames=7, k=3, reencode_offset=0.5)
    j = np.arange(7)
    expected = np.asarray(z_cond[:, -1:]) + (j + 1 + 0.5 * (j // 3)).reshape(1, 7, 1, 1, 1)
    np.testing.assert_allclose(out["latents"], expected, atol=3e-3)


@pytest.mark.parametrize("n_cond, k", [(4, 3), (2, 5)])
def test_each_block_conditions_on_the_last_n_cond_latents(n_cond, k):
    windows = []

    def spy(z_t, t, z_cond):
        jax.debug.callback(lambda c: windows.append(np.asarray(c)), z_cond, ordered=True)
        return next_frames_denoiser(z_t, t, z_cond)

    z_cond = _cond(n_cond=n_cond)
    num_frames = 3 * k - 1
    out = jax.jit(
        lambda c, key: rollout(spy, upsample_decode, SCHEDULE, c, key, num_frames, k, DETERMINISTIC)
    )(z_cond, jax.random.PRNGKey(0))
    jax.effects_barrier()
    history = np.concatenate([np.asarray(z_cond), np.asarray(out["latents"])], axis=1)
    per_block = [windows[i * DETERMINISTIC.steps : (i + 1) * DETERMINISTIC.steps] for i in range(3)]
    assert len(windows) == 3 * DETERMINISTIC.steps
    for block, calls in enumerate(per_block):
        for window in calls:
            np.testing.assert_allclose(
                window, history[:, block * k : block * k + n_cond], atol=1e-6
            )


def test_blocks_use_folded_keys():
    settings = SamplerSettings("ddim", steps=4, eta=1.0)
    z_cond = _cond()
    key = jax.random.PRNGKey(3)
    out = _run(z_cond, key, num_frames=6, k=3, settings=settings)
    first = jax.jit(
        lambda c: sample(
            next_frames_denoiser, SCHEDULE, c, jax.random.fold_in(key, 0), (2, 3, 2, 2, 1), settings
        )
    )(z_cond)
    np.testing.assert_allclose(out["latents"][:, :3], first, atol=1e-5)
    second_cond = out["latents"][:, 1:3]
    second = jax.jit(
        lambda c: sample(
            next_frames_denoiser, SCHEDULE, c, jax.random.fold_in(key, 1), (2, 3, 2, 2, 1), settings
        )
    )(second_cond)
    np.testing.assert_allclose(out["latents"][:, 3:], second, atol=1e-5)


def test_a_clip_keyed_by_itself_samples_alike_in_any_batch():
    """Per-clip keys: each clip's stochastic rollout equals the one it gets alone or beside
    other clips; one key gives the rows of a batch different noise."""
    settings = SamplerSettings("ddim", steps=4, eta=1.0)
    z_cond = _cond(batch=3)
    clip_keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(5), i))(jnp.arange(3))
    together = _run(z_cond, clip_keys, num_frames=4, k=2, settings=settings)["latents"]
    first = _run(z_cond[:1], clip_keys[:1], num_frames=4, k=2, settings=settings)["latents"]
    rest = _run(z_cond[1:], clip_keys[1:], num_frames=4, k=2, settings=settings)["latents"]
    np.testing.assert_allclose(together, np.concatenate([first, rest]), atol=1e-6)
    deterministic = _run(z_cond, clip_keys, num_frames=4, k=2)["latents"]
    assert np.abs(np.asarray(together) - deterministic).min() > 1e-4  # the noise is in it

    same_cond = jnp.repeat(z_cond[:1], 3, axis=0)
    one_key = _run(same_cond, jax.random.PRNGKey(5), num_frames=4, k=2, settings=settings)
    rows = np.asarray(one_key["latents"]).reshape(3, -1)
    assert np.abs(rows[0] - rows[1]).min() > 1e-6 and np.abs(rows[1] - rows[2]).min() > 1e-6

    with pytest.raises(ValueError, match=r"one key or one per example \(3\).*\(2,\)"):
        _run(z_cond, clip_keys[:2], num_frames=4, k=2, settings=settings)


N_COND = 10
WINDOW_WEIGHTS = np.arange(1.0, N_COND + 1) / np.arange(1.0, N_COND + 1).sum()


def _counting_rollout_fn(num_frames, k, counter):
    """Deterministic DDIM whose block j-th latent is Σ_i w_i window_i + drift·(j + 1): a
    weighted mean of the whole conditioning window (weights rising with the position, so the
    window's order and alignment matter) plus ``params['drift']`` per step ahead."""

    def denoise_apply(params, z_t, t, z_cond):
        counter["traces"] += 1
        k_ = z_t.shape[1]
        steps_ahead = jnp.arange(1, k_ + 1, dtype=jnp.float32).reshape(1, k_, 1, 1, 1)
        weights = jnp.asarray(WINDOW_WEIGHTS, jnp.float32).reshape(1, -1, 1, 1, 1)
        y = jnp.sum(weights * z_cond, axis=1, keepdims=True) + params["drift"] * steps_ahead
        return eps_for_target(z_t, t, y)

    def decode_apply(params, z):
        return upsample_decode(z, gain=params["gain"])

    return jax.jit(
        make_rollout_fn(denoise_apply, decode_apply, SCHEDULE, num_frames, k, DETERMINISTIC)
    )


def _reference_rollout(z_cond, num_frames, k, drift, gain):
    """NumPy float64: block by block, each latent the weighted mean of the last N_COND
    latents (real, then sampled) plus drift per step ahead; the last block trimmed; frames
    the 2×2-upsampled latents × gain in 3 channels, clamped to [-1, 1]."""
    history = list(np.moveaxis(np.asarray(z_cond, np.float64), 1, 0))  # (B, h, w, c) each
    latents = []
    while len(latents) < num_frames:
        base = np.einsum("i,ib...->b...", WINDOW_WEIGHTS, np.stack(history[-N_COND:]))
        block = [base + drift * (j + 1) for j in range(k)]
        history += block
        latents += block
    latents = np.stack(latents[:num_frames], axis=1)
    unclamped = gain * latents.repeat(2, axis=2).repeat(2, axis=3).repeat(3, axis=4)
    return latents, unclamped


@pytest.mark.parametrize("num_frames, k", [(30, 5), (40, 5), (30, 3), (40, 3)])
def test_rollout_values_shapes_and_single_compile(num_frames, k):
    """make_rollout_fn (the program behind LatentDiffusion.make_predict_fn) against a NumPy
    rollout: each block's latents and decoded, clamped frames, the window sliding over the
    sampled latents and the last block trimmed (40 = 13·3 + 1)."""
    counter = {"traces": 0}
    fn = _counting_rollout_fn(num_frames, k, counter)
    z_cond = 0.5 * np.random.default_rng(k).normal(size=(2, N_COND, 2, 2, 1)).astype(np.float32)
    out = fn({"drift": 0.05}, {"gain": 0.5}, jnp.asarray(z_cond), jax.random.PRNGKey(0))
    assert out["latents"].shape == (2, num_frames, 2, 2, 1)
    assert out["frames"].shape == (2, num_frames, 4, 4, 3)
    latents, unclamped = _reference_rollout(z_cond, num_frames, k, 0.05, 0.5)
    np.testing.assert_allclose(out["latents"], latents, rtol=0, atol=2e-5)
    np.testing.assert_allclose(out["frames"], np.clip(unclamped, -1, 1), rtol=0, atol=2e-5)
    traces = counter["traces"]
    assert traces >= 1
    # New parameter values, conditioning and key of the same shapes: no new trace, new values.
    again = fn({"drift": -0.1}, {"gain": 2.0}, jnp.asarray(z_cond + 1.0), jax.random.PRNGKey(1))
    assert counter["traces"] == traces
    latents, unclamped = _reference_rollout(z_cond + 1.0, num_frames, k, -0.1, 2.0)
    assert np.abs(unclamped).max() > 1.5  # the clamp matters here
    np.testing.assert_allclose(again["latents"], latents, rtol=0, atol=2e-5)
    np.testing.assert_allclose(again["frames"], np.clip(unclamped, -1, 1), rtol=0, atol=2e-5)
    if (num_frames, k) == (30, 5):
        # A new shape does trace again (so the counter can see retraces).
        fn({"drift": 0.0}, {"gain": 0.1}, jnp.zeros((1, N_COND, 2, 2, 1)), jax.random.PRNGKey(0))
        assert counter["traces"] > traces


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny LatentDiffusion with random weights (3 cond frames, k=2, scale_factor != 1) and
    its prediction built by hand from the parts, each part compiled once for both tests."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.models.autoencoder import VQModel
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    c = tiny_config(cond=3, k=2)
    c.scale_factor = 0.37
    assert c.diffusion.parameterization == "eps" and c.data.channels == 1
    assert (c.sampling.sampler, c.sampling.eta) == ("ddim", 1.0)  # every block's key counts
    model = LatentDiffusion.from_config(c)
    params = random_params_from_init(model.init_denoiser, 0)
    vq_params = random_params_from_init(model.init_vq, 1)
    n_cond, k, scale = c.data.cond_frames, c.data.pred_frames, c.scale_factor
    settings = SamplerSettings(c.sampling.sampler, steps=c.sampling.steps, eta=c.sampling.eta)
    vq = lambda vq_params, method, x, *a: model.vq.apply(
        {"params": vq_params}, x, *a, method=method
    )

    @jax.jit
    def encode(vq_params, video):  # (B, T, H, W, 1) -> (B, T, h, w, c): RGB-repeated, scaled
        b, t = video.shape[:2]
        frames = jnp.repeat(video, 3, axis=-1).reshape((b * t,) + video.shape[2:4] + (3,))
        z = vq(vq_params, VQModel.encode, frames) * scale
        return z.reshape((b, t) + z.shape[1:])

    @jax.jit
    def decode(vq_params, latents):  # (B, k, h, w, c) -> (B, k, H, W, 1)
        b, t = latents.shape[:2]
        z = latents.reshape((b * t,) + latents.shape[2:]) / scale
        z_q, _, _ = vq(vq_params, VQModel.quantize, z)
        frames = jnp.clip(vq(vq_params, VQModel.decode, z_q, False), -1.0, 1.0)
        return frames.reshape((b, t) + frames.shape[1:]).mean(axis=-1, keepdims=True)

    @jax.jit
    def sample_block(params, window, block_key):  # the raw denoiser: ε-parameterized
        denoise = lambda z_t, t, z_cond: model.denoiser.apply({"params": params}, z_t, t, z_cond)
        shape = (window.shape[0], k) + window.shape[2:]
        return sample(denoise, model.schedule, window, block_key, shape, settings)

    def hand_predict(cond_video, key, num_frames, reencode):
        """Encode the cond frames; per block sample with ``fold_in(key, block)`` on the last
        ``n_cond`` latents, quantize and decode, clamp, average RGB; the next window takes
        the sampled latents, or with ``reencode`` the decoded frames re-encoded."""
        window = encode(vq_params, cond_video)
        latents, frames = [], []
        for block in range(-(-num_frames // k)):
            z = sample_block(params, window, jax.random.fold_in(key, block))
            x = decode(vq_params, z)
            produced = encode(vq_params, x) if reencode else z
            window = jnp.concatenate([window, produced], axis=1)[:, -n_cond:]
            latents.append(z)
            frames.append(x)
        cut = lambda blocks: np.concatenate(blocks, axis=1)[:, :num_frames]
        return cut(latents), cut(frames)

    return model, params, vq_params, hand_predict


@pytest.mark.parametrize("reencode", [False, True])
def test_predict_fn_equals_the_prediction_built_by_hand(tiny_model, reencode):
    """make_predict_fn (predict, eval, preview and sample.py): 5 frames in 3 blocks of 2
    (the last trimmed), the window of 3 sliding over real then sampled latents, DDIM η=1; with
    ``sampling.reencode`` PredVDM's option 1 (re-encoded frames condition the next block)."""
    model, params, vq_params, hand_predict = tiny_model
    cond = np.random.default_rng(2).uniform(-1, 1, (2, 3, 16, 16, 1)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    sampling = model.config.sampling.copy_and_resolve_references()
    sampling.reencode = reencode
    out = model.make_predict_fn(5, sampling)(params, vq_params, cond, key)
    latents, frames = hand_predict(cond, key, 5, reencode)
    assert out["latents"].shape == latents.shape == (2, 5, 8, 8, 3)
    assert out["frames"].shape == frames.shape == (2, 5, 16, 16, 1)
    np.testing.assert_allclose(out["latents"], latents, rtol=0, atol=5e-5)
    np.testing.assert_allclose(out["frames"], frames, rtol=0, atol=5e-5)


def test_predict_fn_refuses_frames_of_another_shape_or_uint8(tiny_model):
    """Checked while tracing, so nothing runs: uint8 frames as stored would be encoded as
    0..255, other sizes and channel counts would run on."""
    model, params, vq_params, _ = tiny_model  # 3 cond frames of 16x16x1
    predict = model.make_predict_fn(2)
    shapes = "must be (B, 3, 16, 16, 1) with B >= 1 (the model's data.cond_frames"
    for cond, message in (
        (np.zeros((2, 3, 16, 16, 1), np.uint8), "must be floats in [-1, 1], got uint8"),
        (np.zeros((0, 3, 16, 16, 1), np.float32), shapes),
        (np.zeros((2, 2, 16, 16, 1), np.float32), shapes),
        (np.zeros((2, 3, 12, 12, 1), np.float32), shapes),
        (np.zeros((2, 3, 16, 16, 3), np.float32), shapes),  # colour into a gray model
        (np.zeros((3, 16, 16, 1), np.float32), shapes),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            predict(params, vq_params, cond, jax.random.PRNGKey(0))
    # PredVDM's gray-as-RGB scoring hands a gray model its frames repeated to RGB.
    model.check_cond_video(np.zeros((1, 3, 16, 16, 3), np.float32), rgb=True)


@pytest.mark.parametrize(
    "z_shape, num_frames, k, message",
    [
        ((2, 2, 2, 1), 6, 3, "z_cond must be"),
        ((2, 2, 2, 2, 1), 0, 3, "num_frames"),
        ((2, 2, 2, 2, 1), 6, 0, "k "),
    ],
)
def test_rollout_rejects_bad_arguments(z_shape, num_frames, k, message):
    with pytest.raises(ValueError, match=message):
        rollout(
            next_frames_denoiser,
            upsample_decode,
            SCHEDULE,
            jnp.zeros(z_shape),
            jax.random.PRNGKey(0),
            num_frames,
            k,
            DETERMINISTIC,
        )

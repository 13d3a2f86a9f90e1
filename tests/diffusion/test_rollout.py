"""Autoregressive rollout with closed-form denoisers whose samples are known exactly."""

import functools
import inspect

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
    y = z_cond[:, -1:] + steps_ahead
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


def test_window_slides_on_sampled_latents_and_trims():
    z_cond = _cond()
    out = _run(z_cond, jax.random.PRNGKey(0), num_frames=7, k=3)
    last = np.asarray(z_cond[:, -1:])
    expected = last + np.arange(1, 8).reshape(1, 7, 1, 1, 1)
    np.testing.assert_allclose(out["latents"], expected, atol=2e-3)
    np.testing.assert_allclose(
        out["frames"], np.clip(np.asarray(upsample_decode(out["latents"])), -1, 1), atol=1e-6
    )
    assert out["frames"].shape == (2, 7, 4, 4, 3)


def test_frames_are_clamped():
    out = _run(_cond(), jax.random.PRNGKey(0), num_frames=7, k=3, gain=1.0)
    frames = np.asarray(out["frames"])
    assert frames.max() == 1.0 and frames.min() >= -1.0
    np.testing.assert_allclose(
        frames, np.clip(np.asarray(upsample_decode(out["latents"], 1.0)), -1, 1), atol=1e-6
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


def _counting_rollout_fn(num_frames, k, counter):
    def denoise_apply(params, z_t, t, z_cond):
        counter["traces"] += 1
        return next_frames_denoiser(z_t, t, z_cond) + params["bias"]

    def decode_apply(params, z):
        return upsample_decode(z) * params["gain"]

    return jax.jit(
        make_rollout_fn(
            denoise_apply, decode_apply, SCHEDULE, num_frames, k, SamplerSettings("ddim", steps=2)
        )
    )


@pytest.mark.parametrize("num_frames, k", [(30, 5), (40, 5), (30, 3), (40, 3)])
def test_rollout_shapes_and_single_compile(num_frames, k):
    counter = {"traces": 0}
    fn = _counting_rollout_fn(num_frames, k, counter)
    z_cond = jnp.zeros((2, 10, 2, 2, 1))
    out = fn({"bias": 0.0}, {"gain": 0.1}, z_cond, jax.random.PRNGKey(0))
    assert out["latents"].shape == (2, num_frames, 2, 2, 1)
    assert out["frames"].shape == (2, num_frames, 4, 4, 3)
    traces = counter["traces"]
    assert traces >= 1
    # New parameter values, conditioning and key of the same shapes: no new trace.
    again = fn({"bias": 0.3}, {"gain": 0.05}, z_cond + 1.0, jax.random.PRNGKey(1))
    assert counter["traces"] == traces
    assert not np.allclose(again["latents"], out["latents"])
    if (num_frames, k) == (30, 5):
        # A new shape does trace again (so the counter can see retraces).
        fn({"bias": 0.0}, {"gain": 0.1}, jnp.zeros((1, 10, 2, 2, 1)), jax.random.PRNGKey(0))
        assert counter["traces"] > traces


def test_rollout_takes_only_conditioning_latents():
    """No ground-truth future can reach the rollout: its only video input is ``z_cond`` (the
    evaluation protocol's side, predict_fn seeing the cond frames alone, is tested in
    tests/evaluation/test_protocol.py)."""
    assert list(inspect.signature(rollout).parameters) == [
        "denoise_fn",
        "decode_fn",
        "schedule",
        "z_cond",
        "key",
        "num_frames",
        "k",
        "settings",
        "reencode_fn",
    ]


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

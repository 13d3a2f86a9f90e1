"""VQ-f4 model pieces against closed-form / brute-force references (PyTorch parity: tests/interop/test_ldm_vq.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from predvdm_jax.models.autoencoder import (
    AttnBlock,
    VQModel,
    decode_video,
    encode_video,
    nearest_code_indices,
    quantize_with_codebook,
)
from random_params import random_params

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, n_embed=16, embed_dim=3, z_channels=3)


def test_default_is_vq_f4_with_55_322_782_params():
    shapes = jax.eval_shape(
        VQModel().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == 55_322_782
    assert flat["quantize/embedding"].shape == (8192, 3)
    assert flat["encoder/down_1/block_0/nin_shortcut/kernel"].shape == (1, 1, 128, 256)
    assert flat["decoder/mid/attn_1/proj_out/kernel"].shape == (1, 1, 512, 512)
    assert flat["decoder/up_2/upsample/conv/kernel"].shape == (3, 3, 512, 512)
    out = jax.eval_shape(
        lambda p, x: VQModel().apply(p, x),
        shapes,
        jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32),
    )
    assert out.z.shape == (2, 16, 16, 3) and out.indices.shape == (2, 16, 16)
    assert out.reconstruction.shape == (2, 64, 64, 3)


def test_nearest_code_matches_brute_force_float64():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 3)).astype(np.float32)
    codebook = rng.standard_normal((37, 3)).astype(np.float32)
    ref = np.argmin(
        ((z[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)) ** 2).sum(-1),
        axis=1,
    )
    np.testing.assert_array_equal(
        np.asarray(nearest_code_indices(jnp.asarray(z), jnp.asarray(codebook))), ref
    )


def test_quantize_straight_through_and_loss_terms():
    codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
    z = jnp.array([[[[0.9, 1.2], [0.1, -0.1]], [[-1.5, 0.4], [3.0, 3.0]]]])  # (1, 2, 2, 2)
    z_q, indices, terms = quantize_with_codebook(z, codebook)
    np.testing.assert_array_equal(np.asarray(indices), [[[1, 0], [2, 1]]])
    np.testing.assert_allclose(
        np.asarray(z_q), np.asarray(codebook)[[[[1, 0], [2, 1]]]].reshape(1, 2, 2, 2), atol=1e-7
    )
    expected = np.mean((np.asarray(z_q) - np.asarray(z)) ** 2)
    np.testing.assert_allclose(float(terms.commitment), expected, rtol=1e-6)
    np.testing.assert_allclose(float(terms.codebook), expected, rtol=1e-6)
    weights = jnp.arange(8.0).reshape(z.shape)
    grad = jax.grad(lambda z: jnp.sum(quantize_with_codebook(z, codebook)[0] * weights))(z)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(weights))


def test_attention_block_matches_closed_form():
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 32))
    block = AttnBlock()
    params = random_params(block, x.shape)
    out = np.asarray(jax.jit(block.apply)({"params": params}, x), np.float64)

    xn = np.asarray(x, np.float64).reshape(2, 12, 32, 1)  # 32 groups of 1 channel
    mean, var = xn.mean(axis=(1, 3), keepdims=True), xn.var(axis=(1, 3), keepdims=True)
    h = ((xn - mean) / np.sqrt(var + 1e-6)).reshape(2, 12, 32)
    h = h * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    dense = lambda name, v: (
        v @ np.asarray(params[name]["kernel"])[0, 0] + np.asarray(params[name]["bias"])
    )
    q, k, v = dense("q", h), dense("k", h), dense("v", h)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(32)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ref = np.asarray(x, np.float64) + dense("proj_out", w @ v).reshape(2, 3, 4, 32)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_a_bfloat16_attention_block_keeps_its_logits_float32():
    """q and k are bf16 in bf16 compute, but their products accumulate into float32 logits: no
    rounding to bf16 before the softmax (on large logits it moved the block's output further
    from float32's: 2.4 % against 2.1 % of its norm in a test of logits of std ~20)."""
    x = jnp.zeros((1, 4, 4, 32))
    block = AttnBlock(jnp.bfloat16)
    params = random_params(AttnBlock(), x.shape)
    jaxpr = jax.make_jaxpr(lambda p, x: block.apply({"params": p}, x))(params, x)
    products = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    logits = [e for e in products if e.outvars[0].aval.shape == (1, 16, 16)]
    assert len(logits) == 1
    assert [v.aval.dtype for v in logits[0].invars] == [jnp.bfloat16, jnp.bfloat16]
    assert logits[0].outvars[0].aval.dtype == jnp.float32


@pytest.fixture(scope="module")
def tiny():
    model = VQModel(**TINY)
    return model, random_params(model, (1, 8, 8, 3))


def test_call_decode_and_video_helpers(tiny):
    model, params = tiny
    frames = jax.random.uniform(jax.random.key(3), (2, 3, 8, 8, 3), minval=-1, maxval=1)

    @jax.jit
    def run(params, frames):
        out = model.apply({"params": params}, frames.reshape(6, 8, 8, 3))
        z_video = encode_video(model, params, frames, chunk=4, scale_factor=0.5)
        rec_video = decode_video(model, params, z_video, chunk=4, scale_factor=0.5)
        return out, z_video, rec_video

    out, z_video, rec_video = run(params, frames)
    codebook = np.asarray(params["quantize"]["embedding"])
    assert len(np.unique(np.asarray(out.indices))) > 1
    np.testing.assert_allclose(np.asarray(out.z_q), codebook[np.asarray(out.indices)], atol=1e-6)
    # Chunked video helpers (6 frames in chunks of 4: the last chunk is padded) = the batched forward;
    # decode_video divides by scale_factor and quantizes before decoding, like __call__.
    assert z_video.shape == (2, 3, 4, 4, 3) and rec_video.shape == (2, 3, 8, 8, 3)
    np.testing.assert_allclose(
        np.asarray(z_video), 0.5 * np.asarray(out.z).reshape(2, 3, 4, 4, 3), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(rec_video),
        np.asarray(out.reconstruction).reshape(2, 3, 8, 8, 3),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bad_inputs_raise_clear_errors(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="channels-last"):
        model.apply({"params": params}, jnp.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 2"):
        model.apply({"params": params}, jnp.zeros((1, 9, 8, 3)))
    with pytest.raises(ValueError, match="chunk must be a positive"):
        encode_video(model, params, jnp.zeros((1, 2, 8, 8, 3)), chunk=0)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        encode_video(model, params, jnp.zeros((2, 8, 8, 3)), chunk=2)
    with pytest.raises(ValueError, match="not divisible by the 32 GroupNorm groups"):
        VQModel(ch=48).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_latent_diffusion_vq_computes_in_model_dtype_and_quantizes_in_float32(tiny):
    from predvdm_jax import config as config_lib
    from predvdm_jax.diffusion.latent_diffusion import build_vq

    _, params = tiny
    config = config_lib.default_config()
    config.vq.update(TINY)
    latents = jax.random.normal(jax.random.key(4), (2, 3, 4, 4, 3))
    frames = {}
    for dtype in ("float32", "bfloat16"):
        config.model.dtype = dtype
        model = build_vq(config)
        assert model.dtype == jnp.dtype(dtype)
        z = encode_video(model, params, jnp.tanh(latents.repeat(2, 2).repeat(2, 3)))
        assert z.dtype == jnp.float32
        codes = model.apply({"params": params}, z.reshape(6, 4, 4, 3), method=VQModel.quantize)
        assert codes[0].dtype == jnp.float32  # the nearest-code search stays float32
        frames[dtype] = np.asarray(decode_video(model, params, latents), np.float32)
    error = np.abs(frames["bfloat16"] - frames["float32"]).max() / np.abs(frames["float32"]).max()
    assert 0 < error < 3e-2

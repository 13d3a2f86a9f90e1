"""PredVDMDenoiser pieces against explicit numpy references: channel flattening
semantics, LinearAttention, parameter layout per mode, and input validation.
Whole-model PyTorch parity for every mode is in tests/interop/test_predvdm_ckpt.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from predvdm_jax.models.predictor import (
    LinearAttention,
    PredVDMDenoiser,
    flatten_frames,
    unet_in_out_channels,
    unflatten_frames,
)

TINY_UNET = dict(
    model_channels=32,
    attention_resolutions=(2,),
    num_res_blocks=1,
    channel_mult=(1, 2),
    num_head_channels=16,
)


def test_unet_channels_of_the_published_configs():
    assert unet_in_out_channels(5, 10, 3) == (45, 15)  # KTH / SMMNIST
    assert unet_in_out_channels(5, 2, 3) == (21, 15)  # Cityscapes


def test_flatten_orders_follow_the_original_channel_indices():
    b, t, h, w, c = 2, 4, 3, 2, 3
    frames = np.random.default_rng(0).standard_normal((b, t, h, w, c)).astype(np.float32)
    tc = np.asarray(flatten_frames(jnp.asarray(frames), "tc"))
    ct = np.asarray(flatten_frames(jnp.asarray(frames), "ct"))
    for ti in range(t):
        for ci in range(c):
            np.testing.assert_array_equal(tc[..., ti * c + ci], frames[:, ti, :, :, ci])
            np.testing.assert_array_equal(ct[..., ci * t + ti], frames[:, ti, :, :, ci])


def test_unflatten_reads_output_channel_o_as_frame_and_channel():
    k, c = 5, 3
    out = np.random.default_rng(1).standard_normal((2, 4, 4, k * c)).astype(np.float32)
    tc = np.asarray(unflatten_frames(jnp.asarray(out), "tc", c))
    ct = np.asarray(unflatten_frames(jnp.asarray(out), "ct", c))
    for o in range(k * c):
        np.testing.assert_array_equal(tc[:, o // c, :, :, o % c], out[..., o])
        np.testing.assert_array_equal(ct[:, o % k, :, :, o // k], out[..., o])


def test_linear_attention_matches_the_spec_formula():
    heads, dim_head, dim = 3, 4, 6
    x = np.random.default_rng(2).standard_normal((2, 3, 5, dim)).astype(np.float32)
    module = LinearAttention(heads, dim_head)
    params = nn.unbox(module.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"])
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))

    hidden = heads * dim_head
    n = 3 * 5
    # (b, n, 3 * hidden), no bias; the 1x1 kernels are OHWI
    qkv = x.reshape(2, n, dim) @ params["to_qkv"]["kernel"][:, 0, 0].T
    out = np.zeros((2, n, hidden))
    for head in range(heads):
        q = qkv[..., head * dim_head : (head + 1) * dim_head]  # channel split (qkv, heads, c)
        k = qkv[..., hidden + head * dim_head : hidden + (head + 1) * dim_head]
        v = qkv[..., 2 * hidden + head * dim_head : 2 * hidden + (head + 1) * dim_head]
        k = np.exp(k - k.max(axis=1, keepdims=True))
        k /= k.sum(axis=1, keepdims=True)  # softmax over positions; q unscaled
        context = np.einsum("bnd,bne->bde", k, v)
        out[..., head * dim_head : (head + 1) * dim_head] = np.einsum("bde,bnd->bne", context, q)
    expected = out @ params["to_out"]["kernel"][:, 0, 0].T + params["to_out"]["bias"]
    np.testing.assert_allclose(got, expected.reshape(x.shape), rtol=1e-4, atol=1e-5)
    assert np.any(params["to_out"]["kernel"]) and "bias" not in params["to_qkv"]


def param_counts(mode):
    model = PredVDMDenoiser(mode=mode, k=5, n_cond=10, latent_channels=3, unet=TINY_UNET)
    x, cond = jnp.zeros((1, 5, 2, 2, 3)), jnp.zeros((1, 10, 2, 2, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), cond))[
        "params"
    ]
    return {
        name: sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(nn.unbox(sub)))
        for name, sub in shapes.items()
    }


@pytest.mark.parametrize(
    "mode, attention",
    [
        ("tc", ()),
        ("ct", ()),
        ("tcct_para", ()),
        ("tc_attn", ("tc_attn",)),
        ("tcct_para_attn", ("tc_attn", "ct_attn")),
    ],
)
def test_each_mode_has_one_unet_and_its_wrapper_attentions(mode, attention):
    """Which LinearAttention gates each mode adds next to its one UNet; their sizes (9,615 /
    5,775 parameters, spec §C.2) are checked on the published configs in
    tests/models/test_unet.py::test_config_files_build_the_published_parameter_counts."""
    counts = param_counts(mode)
    assert set(counts) == {"diffusion_model", *attention}
    assert all(size > 0 for size in counts.values())


@pytest.mark.parametrize(
    "kwargs, x_shape, cond_shape, match",
    [
        ({"mode": "tcct"}, (1, 2, 4, 4, 3), (1, 2, 4, 4, 3), "mode 'tcct' is not one of"),
        (
            {"unet": dict(TINY_UNET, in_channels=45)},
            (1, 2, 4, 4, 3),
            (1, 2, 4, 4, 3),
            "unet.in_channels=45",
        ),
        ({}, (1, 3, 4, 4, 3), (1, 2, 4, 4, 3), "expected x_noisy of shape"),
        ({}, (1, 2, 4, 4, 3), (1, 1, 4, 4, 3), "expected cond of shape"),
    ],
)
def test_bad_mode_config_or_shapes_raise_a_clear_error(kwargs, x_shape, cond_shape, match):
    model = PredVDMDenoiser(**dict(dict(mode="tc", k=2, n_cond=2, unet=TINY_UNET), **kwargs))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(
            lambda: model.init(
                jax.random.PRNGKey(0), jnp.zeros(x_shape), jnp.zeros((1,)), jnp.zeros(cond_shape)
            )
        )


def test_a_config_section_with_lists_gives_a_hashable_module_equal_to_the_tuple_form():
    import ml_collections

    section = ml_collections.ConfigDict(
        dict(TINY_UNET, attention_resolutions=[2], channel_mult=[1, 2])
    )
    from_config = PredVDMDenoiser(mode="tc", k=2, n_cond=2, unet=section)
    from_tuples = PredVDMDenoiser(mode="tc", k=2, n_cond=2, unet=TINY_UNET)
    assert hash(from_config) == hash(from_tuples) and from_config == from_tuples
    assert from_config.unet_kwargs()["in_channels"] == 12

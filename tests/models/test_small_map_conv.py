"""The im2col path of small_map_conv against lax.conv_general_dilated, values and gradients."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

from predvdm_jax.models import small_map_conv

DIMS = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, padding):
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DIMS)
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dims)


def _small_conv(x, w, padding):
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DIMS)
    return small_map_conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dims)


@pytest.mark.parametrize(
    "size, channels, kernel",
    [(2, 8, 3), (1, 8, 3), (4, 256, 3), (2, 4, 5)],
    ids=["2x2", "1x1", "4x4_wide", "2x2_k5"],
)
def test_matmul_path_equals_lax_conv_with_gradients(size, channels, kernel):
    assert small_map_conv.uses_matmul(size, size, channels)
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (3, size, size, channels))
    w = jax.random.normal(kw, (kernel, kernel, channels, 16)) / np.sqrt(kernel * kernel * channels)
    pad = [(kernel // 2, kernel // 2)] * 2
    # The matmul path has no convolution in its program.
    assert "conv_general_dilated" not in str(
        jax.make_jaxpr(lambda x, w: _small_conv(x, w, pad))(x, w)
    )
    np.testing.assert_allclose(_small_conv(x, w, pad), _lax_conv(x, w, pad), rtol=1e-5, atol=1e-5)
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, pad)))
    got = jax.grad(loss(_small_conv), argnums=(0, 1))(x, w)
    want = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_large_maps_and_strided_convs_stay_convolutions():
    assert not small_map_conv.uses_matmul(4, 4, 64) and not small_map_conv.uses_matmul(8, 8, 512)
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DIMS)
    for strides, shape in (((1, 1), (8, 8)), ((2, 2), (2, 2))):
        x = jnp.ones((1,) + shape + (4,))
        jaxpr = jax.make_jaxpr(
            lambda x: small_map_conv.conv_general_dilated(
                x, w, strides, [(1, 1), (1, 1)], dimension_numbers=dims
            )
        )(x)
        assert "conv_general_dilated" in str(jaxpr)

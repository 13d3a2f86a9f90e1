"""models/linear.py: the two-stage bias gradient and Dense against flax.linen.Dense."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import linen as nn

from predvdm_jax.models.linear import Dense, add_bias


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 5), (2, 7, 5)], ids=["2d", "4d", "3d"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_bias_value_and_gradients(shape, dtype):
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=shape), dtype)
    bias = jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=shape), dtype)
    out, vjp = jax.vjp(add_bias, y, bias)
    dy, dbias = vjp(cotangent)
    assert out.dtype == dtype and dy.dtype == dtype and dbias.dtype == jnp.float32
    np.testing.assert_array_equal(out, y + bias.astype(dtype))
    np.testing.assert_array_equal(dy, cotangent)
    want = np.asarray(cotangent, np.float64).reshape(-1, shape[-1]).sum(0)
    np.testing.assert_allclose(dbias, want, rtol=1e-5, atol=1e-5)


def test_dense_equals_flax_dense_with_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
    init = nn.initializers.normal(1.0)
    ours = Dense(4, kernel_init=init, bias_init=init)
    params = ours.init(jax.random.PRNGKey(1), x)
    reference = nn.Dense(4, kernel_init=init, bias_init=init)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, reference.init(jax.random.PRNGKey(1), x)
    )
    loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
    got = jax.value_and_grad(loss(ours), argnums=(0, 1))(params, x)
    want = jax.value_and_grad(loss(reference), argnums=(0, 1))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)

"""models/group_norm.py against torch.nn.GroupNorm (float64): values and all three gradients."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from predvdm_jax.models.group_norm import GroupNorm, group_norm

torch = pytest.importorskip("torch")


def _torch_reference(x, scale, bias, groups, eps, cotangent):
    """torch's output and the gradients of ``Σ out · cotangent`` w.r.t. x, scale, bias."""
    xt = torch.tensor(np.moveaxis(x, -1, 1), dtype=torch.float64, requires_grad=True)
    norm = torch.nn.GroupNorm(groups, x.shape[-1], eps=eps).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(scale, dtype=torch.float64))
        norm.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    out = norm(xt)
    (out * torch.tensor(np.moveaxis(cotangent, -1, 1), dtype=torch.float64)).sum().backward()
    as_nhwc = lambda t: np.moveaxis(t.detach().numpy(), 1, -1)
    return as_nhwc(out), as_nhwc(xt.grad), norm.weight.grad.numpy(), norm.bias.grad.numpy()


def _inputs(shape, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    x = (offset + rng.normal(size=shape) * rng.uniform(0.5, 2.0, channels)).astype(np.float32)
    scale = rng.normal(1.0, 0.3, channels).astype(np.float32)
    bias = rng.normal(0.0, 0.3, channels).astype(np.float32)
    cotangent = rng.normal(size=shape).astype(np.float32)
    return x, scale, bias, cotangent


def _ours(x, scale, bias, groups, eps, cotangent):
    out, vjp = jax.vjp(lambda *a: group_norm(*a, groups, eps), x, scale, bias)
    return (out, *vjp(jnp.asarray(cotangent, out.dtype)))


@pytest.mark.parametrize(
    "shape, groups, eps, offset",
    [
        ((2, 4, 4, 64), 32, 1e-5, 0.0),
        ((3, 5, 3, 12), 4, 1e-6, 0.0),
        ((2, 8, 8, 32), 32, 1e-5, 300.0),  # mean 300σ away from zero: no cancellation
        ((2, 6, 4), 2, 1e-5, 0.0),  # one spatial axis
    ],
    ids=["unet_4x4", "odd_map", "large_mean", "1d"],
)
def test_values_and_gradients_match_torch(shape, groups, eps, offset):
    x, scale, bias, cotangent = _inputs(shape, offset)
    got = _ours(x, scale, bias, groups, eps, cotangent)
    want = _torch_reference(x, scale, bias, groups, eps, cotangent)
    for name, g, w in zip(("out", "dx", "dscale", "dbias"), got, want):
        tolerance = 2e-5 * max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=tolerance, err_msg=name)


def test_first_element_far_from_the_mean_stays_accurate():
    """The shift is each channel's first element: an outlier there (100σ) costs precision
    (5e-4 on outputs up to 24 here; Flax's two-pass 1e-5) but nothing breaks."""
    x, scale, bias, cotangent = _inputs((2, 16, 16, 64), offset=5.0, seed=2)
    x[:, 0, 0, :] += 100.0
    got = _ours(x, scale, bias, 32, 1e-5, cotangent)
    want = _torch_reference(x, scale, bias, 32, 1e-5, cotangent)
    for name, g, w in zip(("out", "dx", "dscale", "dbias"), got, want):
        tolerance = 1e-4 * max(1.0, float(np.abs(w).max()))
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=tolerance, err_msg=name)


def test_bfloat16_input_keeps_dtype_and_float32_statistics():
    x, scale, bias, cotangent = _inputs((2, 4, 4, 64), offset=4.0, seed=1)
    x16 = jnp.asarray(x, jnp.bfloat16)
    got = _ours(x16, scale, bias, 32, 1e-5, cotangent)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
    assert got[2].dtype == jnp.float32 and got[3].dtype == jnp.float32
    # _ours casts the cotangent to the output's dtype: the reference gets the same bf16 values.
    cotangent16 = np.asarray(jnp.asarray(cotangent, jnp.bfloat16), np.float64)
    want = _torch_reference(np.asarray(x16, np.float32), scale, bias, 32, 1e-5, cotangent16)
    np.testing.assert_allclose(np.asarray(got[0], np.float32), want[0], atol=0.04)
    # dx is float32 arithmetic rounded once to bf16: within half an ulp, 2^-9 |dx|, of torch's
    # float64 value; 2^-8 leaves room for float32 rounding, and fails at a 0.5% error in the
    # group means (0.05 max|dx| would let a 10% one through).
    dx = np.asarray(got[1], np.float32)
    np.testing.assert_allclose(dx, want[1], rtol=2**-8, atol=1e-4 * np.abs(want[1]).max())
    np.testing.assert_allclose(np.asarray(got[2]), want[2], rtol=0.02, atol=0.02)
    # dbias = Σ cotangent over batch and positions, summed in float32 from bf16 values.
    np.testing.assert_allclose(np.asarray(got[3]), cotangent16.sum(axis=(0, 1, 2)), rtol=1e-5)


def test_module_parameters_and_output_dtype():
    x = jnp.ones((1, 2, 2, 64), jnp.bfloat16)
    module = GroupNorm(32, dtype=jnp.float32)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    assert {k: (v.shape, v.dtype) for k, v in params.items()} == {
        "scale": ((64,), jnp.float32),
        "bias": ((64,), jnp.float32),
    }
    assert module.apply({"params": params}, x).dtype == jnp.float32


def test_channels_not_divisible_by_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by its 32 groups"):
        GroupNorm(32).init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 48)))

"""models/conv.py against lax.conv_general_dilated with PyTorch's OIHW kernel, and its im2col path."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

from predvdm_jax.models import conv


def _reference(x, w_oihw, stride, pad):
    """NHWC x OIHW convolution, the layout PyTorch stores."""
    return lax.conv_general_dilated(
        x, w_oihw, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "OIHW", "NHWC")
    )


def _ohwi(w_oihw):
    return jnp.transpose(w_oihw, (0, 2, 3, 1))


def _assert_same_values_and_gradients(ours, want, x, w):
    """``ours(x, w)`` equals ``want(x, w)``, and so do the gradients of a nonlinear loss."""
    np.testing.assert_allclose(ours(x, w), want(x, w), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
    got = jax.grad(loss(ours), argnums=(0, 1))(x, w)
    expected = jax.grad(loss(want), argnums=(0, 1))(x, w)
    for g, r in zip(got, expected):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "size, channels, kernel",
    [(2, 8, 3), (1, 8, 3), (4, 256, 3), (2, 4, 5)],
    ids=["2x2", "1x1", "4x4_wide", "2x2_k5"],
)
def test_matmul_path_equals_lax_conv_with_gradients(size, channels, kernel):
    assert conv.uses_matmul(size, size, channels, kernel, backend="cpu")
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (3, size, size, channels))
    w = jax.random.normal(kw, (16, channels, kernel, kernel)) / np.sqrt(kernel * kernel * channels)
    pad = kernel // 2
    ours = lambda x, w: conv.conv2d(x, _ohwi(w), 1, pad)
    # The matmul path has no convolution in its program.
    assert "conv_general_dilated" not in str(jax.make_jaxpr(ours)(x, w))
    _assert_same_values_and_gradients(ours, lambda x, w: _reference(x, w, 1, pad), x, w)


def test_gpu_uses_matmul_where_the_output_map_is_no_larger_than_the_kernel_tpu_never():
    on_gpu = lambda size, stride=1, kernel=3: conv.uses_matmul(
        size, size, 896, kernel, stride, backend="gpu"
    )
    assert on_gpu(2) and on_gpu(3) and on_gpu(1) and on_gpu(4, stride=2)  # 4x4 -> 2x2
    assert not on_gpu(4) and not on_gpu(8, stride=2) and not on_gpu(2, kernel=1)
    assert on_gpu(4, kernel=5)
    assert not conv.uses_matmul(2, 2, 896, backend="tpu")


@pytest.mark.parametrize("size, stride, pad", [(4, 2, 1), (5, 2, 1), (3, 1, 0)])
def test_strided_and_unpadded_im2col_equals_lax_conv_with_gradients(size, stride, pad):
    kx, kw = jax.random.split(jax.random.PRNGKey(size))
    x = jax.random.normal(kx, (2, size, size, 6))
    w = jax.random.normal(kw, (5, 6, 3, 3)) / np.sqrt(54)
    ours = lambda x, w: conv.im2col_conv(x, _ohwi(w), stride, pad)
    _assert_same_values_and_gradients(ours, lambda x, w: _reference(x, w, stride, pad), x, w)


def test_large_maps_and_strided_convs_stay_convolutions_with_ohwi_kernels():
    assert not conv.uses_matmul(4, 4, 64, backend="cpu")
    assert not conv.uses_matmul(8, 8, 512, backend="cpu")
    w = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 3, 3))
    for stride, size in ((1, 8), (2, 2), (2, 8)):
        x = jax.random.normal(jax.random.PRNGKey(size), (2, size, size, 4))
        jaxpr = jax.make_jaxpr(lambda x: conv.conv2d(x, _ohwi(w), stride, 1))(x)
        assert "conv_general_dilated" in str(jaxpr)
        np.testing.assert_allclose(
            conv.conv2d(x, _ohwi(w), stride, 1), _reference(x, w, stride, 1), rtol=1e-5, atol=1e-5
        )


def test_conv_module_stores_ohwi_with_pytorch_default_init():
    module = conv.Conv(64, 3, name="c")
    x = jnp.ones((1, 8, 8, 32))
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    kernel, bias = np.asarray(params["kernel"].value), np.asarray(params["bias"])
    assert kernel.shape == (64, 3, 3, 32) and bias.shape == (64,)
    assert params["kernel"].names == conv.KERNEL_AXES
    bound = 1 / np.sqrt(3 * 3 * 32)  # PyTorch: U(±1/sqrt(fan_in)) for weight and bias
    for value in (kernel, bias):
        assert np.abs(value).max() <= bound and np.abs(value).max() > 0.9 * bound
    y = module.apply({"params": {"kernel": kernel, "bias": bias}}, x)
    oihw = np.transpose(kernel, (0, 3, 1, 2))
    np.testing.assert_allclose(y, _reference(x, oihw, 1, 1) + bias, rtol=1e-5, atol=1e-5)
    zero = conv.Conv(8, 1, zero_init=True).init(jax.random.PRNGKey(0), x)["params"]
    assert not np.any(zero["kernel"].value) and not np.any(zero["bias"])


def test_conv2d_rejects_a_kernel_that_is_not_ohwi_for_the_input():
    with pytest.raises(ValueError, match="not OHWI for 4 input channels"):
        conv.conv2d(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 4, 8)))  # HWIO


@pytest.mark.parametrize(
    "size, kernel, stride, padding",
    [
        (6, 3, 1, ((1, 1), (1, 1))),
        (8, 3, 2, ((0, 1), (0, 1))),
        (7, 4, 2, ((1, 1), (1, 1))),
        (17, 11, 4, ((2, 2), (2, 2))),
        (5, 1, 1, "VALID"),
        (9, 3, 2, "VALID"),
    ],
    ids=["same", "vq_downsample", "discriminator_odd", "alexnet_first", "1x1", "valid_strided"],
)
def test_cpu_kernel_gradient_rule_equals_lax_inside_a_scan(size, kernel, stride, padding):
    """The rule that keeps XLA:CPU's kernel gradients fast in loops gives lax's gradients, in a
    scan as in gradient accumulation, with flax's dimension-number objects."""
    kx, kw = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (3, 2, size, size, 5))
    w = jax.random.normal(kw, (kernel, kernel, 5, 7)) / np.sqrt(kernel * kernel * 5)
    numbers = lax.conv_dimension_numbers(x.shape[1:], w.shape, conv.CPU_DIMENSION_NUMBERS)

    def summed(convolve):
        def loss(x, w):
            step = lambda total, xb: (total + jnp.sum(jnp.sin(convolve(xb, w))), None)
            return lax.scan(step, 0.0, x)[0]

        return loss

    ours = lambda xb, w: conv.conv_general_dilated(
        xb, w, (stride, stride), padding, dimension_numbers=numbers
    )
    want = lambda xb, w: lax.conv_general_dilated(
        xb, w, (stride, stride), padding, dimension_numbers=numbers
    )
    assert "custom_vjp_call" in str(jax.make_jaxpr(ours)(x[0], w))
    np.testing.assert_allclose(summed(ours)(x, w), summed(want)(x, w), rtol=1e-5)
    got = jax.grad(summed(ours), argnums=(0, 1))(x, w)
    expected = jax.grad(summed(want), argnums=(0, 1))(x, w)
    for g, r in zip(got, expected):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_cpu_kernel_gradient_rule_leaves_other_convolutions_to_lax():
    x, w = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, conv.CPU_DIMENSION_NUMBERS)
    dilated = conv.conv_general_dilated(
        x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=numbers
    )
    np.testing.assert_allclose(
        dilated,
        lax.conv_general_dilated(
            x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=numbers
        ),
    )
    jaxpr = jax.make_jaxpr(
        lambda x: conv.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=numbers, feature_group_count=2
        )
    )(jnp.ones((1, 6, 6, 8)))
    assert "custom_vjp_call" not in str(jaxpr)

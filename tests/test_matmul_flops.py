"""benchmarks/common.matmul_flops, the numerator of every MFU the benchmarks report,
against closed-form FLOP counts."""

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
from common import matmul_flops  # noqa: E402


def _conv(x, k, stride=1):
    return lax.conv_general_dilated(
        x, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_matmul_and_batched_einsum():
    a, b = jnp.ones((64, 128)), jnp.ones((128, 256))
    assert matmul_flops(lambda a, b: jnp.tanh(a @ b), a, b) == 2 * 64 * 128 * 256
    q = jnp.ones((2, 16, 4, 8))
    logits = lambda q: jnp.einsum("bthc,bshc->bhts", q, q)
    assert matmul_flops(logits, q) == 2 * (2 * 4 * 16 * 16) * 8


def test_convolution_its_gradient_and_strides():
    x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 32))
    forward = 2 * (2 * 8 * 8 * 32) * (3 * 3 * 16)
    assert matmul_flops(_conv, x, k) == forward
    assert matmul_flops(lambda x, k: _conv(x, k, 2), x, k) == forward // 4
    # loss value + input gradient + kernel gradient: three convolutions of equal cost
    grads = jax.grad(lambda x, k: (_conv(x, k) ** 2).sum(), argnums=(0, 1))
    assert matmul_flops(grads, x, k) == 3 * forward


def test_scans_count_every_iteration_and_jit_is_looked_into():
    a, w = jnp.ones((64, 128)), jnp.ones((128, 128))
    body = lambda carry, _: (carry @ w, None)
    scanned = lambda a: lax.scan(body, a, length=5)[0]
    assert matmul_flops(jax.jit(scanned), a) == 5 * 2 * 64 * 128 * 128

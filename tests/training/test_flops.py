"""training.flops: matmul_flops (the numerator of every MFU the benchmarks and the training
log report) against closed-form FLOP counts, and the peak table's lookup."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from predvdm_jax.training.flops import matmul_flops, peak_bf16_flops


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


def _xla_cpu_flops(fn, *args) -> float:
    """XLA:CPU's cost analysis of the compiled ``fn`` (it counts a convolution's valid taps)."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


@pytest.mark.parametrize("stride", [1, 2])
def test_convolution_and_its_gradients_count_the_taps_on_real_input(stride):
    """Padding taps and the zeros of a strided convolution's input gradient are no work: per
    axis a 3x3 SAME convolution of 8 pixels has 3·8 − 2 = 22 real (output, tap) pairs at
    stride 1, and 4 outputs × 3 taps − 1 (the padding past the edge) = 11 at stride 2."""
    x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 32))
    pairs = {1: 22, 2: 11}[stride]
    forward = 2 * (2 * 32) * 16 * pairs**2
    conv = lambda x, k: _conv(x, k, stride)
    assert matmul_flops(conv, x, k) == forward == _xla_cpu_flops(conv, x, k)
    # loss value + input gradient + kernel gradient: each multiply-add once more
    grads = jax.grad(lambda x, k: (conv(x, k) ** 2).sum(), argnums=(0, 1))
    assert matmul_flops(grads, x, k) == 3 * forward
    _check_gradient_convolutions_against_xla(conv, x, k)


def _check_gradient_convolutions_against_xla(conv, x, k):
    """The input gradient (a transposed, input-dilated convolution when strided) and the
    kernel gradient alone, each against XLA:CPU's count."""
    out = jax.eval_shape(conv, x, k)
    g = jnp.ones(out.shape, out.dtype)
    input_grad = lambda k, g: jax.linear_transpose(lambda x: conv(x, k), x)(g)[0]
    kernel_grad = lambda x, g: jax.linear_transpose(lambda k: conv(x, k), k)(g)[0]
    assert matmul_flops(input_grad, k, g) == _xla_cpu_flops(input_grad, k, g)
    assert matmul_flops(kernel_grad, x, g) == _xla_cpu_flops(kernel_grad, x, g)


def test_grouped_dilated_and_channels_first_convolutions_agree_with_xla():
    x, k = jnp.ones((2, 6, 9, 7)), jnp.ones((4, 3, 3, 2))  # NCHW, OIHW: 2 groups of 3 inputs
    conv = lambda x, k: lax.conv_general_dilated(
        x, k, (2, 1), [(1, 2), (0, 3)], rhs_dilation=(1, 2), feature_group_count=2
    )
    assert matmul_flops(conv, x, k) == _xla_cpu_flops(conv, x, k)
    _check_gradient_convolutions_against_xla(conv, x, k)


def test_scans_count_every_iteration_and_jit_is_looked_into():
    a, w = jnp.ones((64, 128)), jnp.ones((128, 128))
    body = lambda carry, _: (carry @ w, None)
    scanned = lambda a: lax.scan(body, a, length=5)[0]
    assert matmul_flops(jax.jit(scanned), a) == 5 * 2 * 64 * 128 * 128


def test_peak_lookup_matches_the_most_specific_device_kind():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 NVL") == peak_bf16_flops("NVIDIA H200 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("TPU v5 lite") == 197e12
    assert peak_bf16_flops("TPU v5") == 459e12
    assert peak_bf16_flops("cpu") is None


def test_cond_counts_its_costliest_branch():
    a = jnp.ones((8, 16))
    small = lambda x: (x @ jnp.ones((16, 4))).sum()
    large = lambda x: (x @ jnp.ones((16, 32))).sum()
    branches = lambda p, x: lax.cond(p, small, large, x)
    assert matmul_flops(branches, True, a) == 2 * 8 * 16 * 32


def test_the_training_log_reports_the_step_s_model_flops(tmp_path):
    from predvdm_jax.training import loop

    from .tiny_setup import HIDDEN, IN_DIM, OUT_DIM, StreamIterator, init_fn, make_config
    from .tiny_setup import make_loss_fn, read_jsonl

    config = make_config(num_steps=4, save_every=4, log_every=2)
    batch = config.data.batch_size
    stream = StreamIterator(config.seed, batch)
    loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(), stream)
    # forward x·W1 and h·W2; backward dW2, dh and dW1 (the input needs no gradient)
    per_step = 2 * batch * (2 * IN_DIM * HIDDEN + 3 * HIDDEN * OUT_DIM)
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "steps_per_sec" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        flops = r["tflops_per_device"] * 1e12 * jax.device_count() / r["steps_per_sec"]
        assert flops == pytest.approx(per_step, rel=1e-6)
        assert r["examples_per_sec"] == pytest.approx(batch * r["steps_per_sec"], rel=1e-9)
        assert "mfu_bf16" not in r  # no bf16 peak is known for a CPU


def test_the_logged_steps_per_second_leave_out_compilation_and_evaluations(tmp_path):
    """The first step (its compilation; here its batch also takes 1 s) and the evaluations (1 s)
    are not training time: every logged rate is that of the steps alone, timed to the end of
    their work on the device."""
    import time

    from predvdm_jax.training import loop

    from .tiny_setup import StreamIterator, init_fn, make_config, make_loss_fn, read_jsonl

    class SlowFirstBatch(StreamIterator):
        def __next__(self):
            if self.position == 0:
                time.sleep(1.0)
            return super().__next__()

    def slow_evaluation(state):
        time.sleep(1.0)
        return {"val/score": 0.0}

    def slow_loss(*args):  # each step computes for tens of ms after its dispatch returns
        square = jnp.full((256, 256), 1e-3)
        busy = jax.lax.fori_loop(0, 200, lambda _, m: m @ square, square)  # 6.7 GFLOP
        loss, aux = make_loss_fn()(*args)
        return loss + 0.0 * jnp.sum(busy), aux

    config = make_config(num_steps=6, save_every=6, log_every=2)
    loop.train_loop(
        config,
        str(tmp_path),
        init_fn,
        slow_loss,
        SlowFirstBatch(config.seed, config.data.batch_size),
        evaluations=[(2, slow_evaluation)],
    )
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "steps_per_sec" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    # A window holding a 1 s pause runs under 2 steps/s. A 2-core CPU computes well under 1
    # TFLOP/s: a clock stopped at the steps' dispatch, before they ran, read several times that.
    assert all(r["steps_per_sec"] > 5 for r in rows), [r["steps_per_sec"] for r in rows]
    assert all(r["tflops_per_device"] < 1.0 for r in rows), [r["tflops_per_device"] for r in rows]

"""Denoiser train-step time on the current backend, from cached latents.

* KTH config (259 M UNet, `tcct_para_attn`, 10 + 5 latents of 16×16×3) at batch 4, against
  the same step of the PyTorch original run in the same process: the LDM-named PyTorch
  UNet + DiffusionWrapper of tests/torch_reference/denoiser.py, summed ε-loss, AdamW, global
  norm clipping (skipped with --notorch or when PyTorch is missing);
* the demo config (configs/digits_demo.py): seconds per step and examples/s, against the
  same PyTorch step sized like the demo UNet.

  python benchmarks/bench_train_step.py [--kth_batch=4] [--demo_batch=16] [--repeats=3] [--warmup=5]
"""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import common  # noqa: E402

from predvdm_jax import xla_cpu  # noqa: E402
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion  # noqa: E402
from predvdm_jax.training import optim  # noqa: E402
from predvdm_jax.training.flops import matmul_flops  # noqa: E402
from tests.random_params import random_params_from_init  # noqa: E402

flags.DEFINE_integer("kth_batch", 4, "Batch of the KTH step.")
flags.DEFINE_integer("demo_batch", 16, "Batch of the demo step.")
flags.DEFINE_integer("repeats", 3, "Timed steps (median).")
flags.DEFINE_bool("torch", True, "Time the PyTorch baseline too.")
flags.DEFINE_bool("kth", True, "Time the 259 M KTH step (slow to compile on a CPU).")
flags.DEFINE_integer(
    "warmup",
    5,
    "Untimed steps first. On a CPU the KTH step's first steps fault in fresh pages for its "
    "temporaries (measured: ~830k minor faults and 6-8 s per step for the first 2-4 steps, "
    "sometimes one more later, then under 100k faults and 2.4-2.7 s, as the allocator starts "
    "to reuse freed memory).",
)
FLAGS = flags.FLAGS


def jax_step_seconds(config, batch, repeats):
    """(seconds per step, model FLOPs of the step) for ``config`` at ``batch``."""
    model = LatentDiffusion.from_config(config)
    optimizer, _ = optim.make_optimizer(config)
    params = jax.device_put(random_params_from_init(model.init_denoiser))
    frames = config.data.cond_frames + config.data.pred_frames
    size = model.latent_size
    latents = jax.random.normal(jax.random.PRNGKey(1), (batch, frames, size, size, 3))

    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(
            lambda p: model.loss(p, None, {"latents": latents}, key)[0]
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, loss

    state = [params, optimizer.init(params)]
    compiled = xla_cpu.jit(step).lower(state[0], state[1], jax.random.PRNGKey(2)).compile()
    flops = matmul_flops(step, state[0], state[1], jax.random.PRNGKey(2))

    def run():
        state[0], state[1], loss = compiled(state[0], state[1], jax.random.PRNGKey(2))
        loss.block_until_ready()

    return common.time_call(run, repeats=repeats, warmup=FLAGS.warmup), flops


def torch_step_seconds(config, batch, repeats):
    import torch

    from tests.torch_reference.denoiser import torch_wrapper_for_config

    k, cond = config.data.pred_frames, config.data.cond_frames
    model = torch_wrapper_for_config(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    sqrt_ab = torch.rand(1000)
    z = torch.randn(batch, k + cond, 3, 16, 16)

    def run():
        t = torch.randint(0, 1000, (batch,))
        eps = torch.randn(batch, k, 3, 16, 16)
        a = sqrt_ab[t].view(-1, 1, 1, 1, 1)
        noisy = a * z[:, :k] + (1 - a**2).sqrt() * eps
        loss = ((model(noisy, t, z[:, k:]) - eps) ** 2).sum(dim=(1, 2, 3, 4)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return common.time_call(run, repeats=repeats, warmup=FLAGS.warmup)


def compare_step(label, config, batch):
    """Times the JAX step (with its model FLOPs) and, with PyTorch, the original's; emits."""
    seconds, flops = jax_step_seconds(config, batch, FLAGS.repeats)
    print(
        f"{label}, batch {batch}: JAX {seconds:.3f} s/step, {batch / seconds:.2f} examples/s, "
        f"{flops / 1e12:.3f} TFLOP/step, {flops / seconds / 1e9:.1f} GFLOP/s"
    )
    if FLAGS.torch and importlib.util.find_spec("torch"):
        torch_seconds = torch_step_seconds(config, batch, FLAGS.repeats)
        print(
            f"{label}, batch {batch}: PyTorch {torch_seconds:.3f} s/step "
            f"(JAX speed-up {torch_seconds / seconds:.2f}x)"
        )
        common.emit(
            f"train step {label} batch {batch}",
            batch / seconds,
            "examples/s",
            "PyTorch original step",
            batch / torch_seconds,
        )


def main(argv):
    del argv
    print(common.hardware())
    if FLAGS.kth:
        compare_step("KTH 259M", common.load_config("kth64"), FLAGS.kth_batch)
    compare_step("demo", common.load_config("digits_demo"), FLAGS.demo_batch)
    print(f"peak RSS {common.peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    app.run(main)

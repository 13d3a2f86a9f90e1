"""Predicted frames per second of the autoregressive rollout (10 → 30 frames).

The rollout is one compiled program (every block and sampler step in lax.scan). Baselines
measured in the same run, both DDIM with the same steps and η = 1:

* the PyTorch original's rollout: the LDM-named PyTorch UNet + PredVDM wrapper and VQ of
  tests/torch_reference/, one denoiser call and one update per step from Python, quantize +
  decode per block, under ``torch.no_grad`` (skipped with --notorch or when PyTorch is missing);
* the same loop in JAX, one jitted denoiser call per step.

  python benchmarks/bench_rollout.py [--config=digits_demo] [--batch=16] [--frames=30]
"""

import importlib.util
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
import common  # noqa: E402

from predvdm_jax import xla_cpu  # noqa: E402
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion  # noqa: E402
from predvdm_jax.diffusion.samplers import ddim_parameters, ddim_timesteps  # noqa: E402

flags.DEFINE_string("config", "digits_demo", "Config name in configs/.")
flags.DEFINE_integer("batch", 16, "Clips per rollout.")
flags.DEFINE_integer("frames", 30, "Frames to predict.")
flags.DEFINE_integer("ddim_steps", 100, "DDIM steps.")
flags.DEFINE_integer("dpm_steps", 20, "DPM-Solver++ steps.")
flags.DEFINE_bool("torch", True, "Time the PyTorch baseline too.")
FLAGS = flags.FLAGS


def make_python_loop_rollout(model, frames, steps, eta=1.0):
    """DDIM rollout dispatched step by step from Python (the baseline); its pieces are compiled
    once, as the library compiles them (``xla_cpu.jit``)."""
    denoise = xla_cpu.jit(model.eps_prediction)
    decode, encode = xla_cpu.jit(model.decode), xla_cpu.jit(model.encode)
    ts = ddim_timesteps(steps, model.schedule.num_timesteps)
    alphas, alphas_prev, sigmas = (np.asarray(a) for a in ddim_parameters(model.schedule, ts, eta))

    def run(params, vq_params, cond, key):
        z_cond = encode(vq_params, cond)
        out = []
        for _ in range(math.ceil(frames / model.k)):
            key, sub = jax.random.split(key)
            x = jax.random.normal(sub, (cond.shape[0], model.k) + z_cond.shape[2:])
            for i in reversed(range(len(ts))):
                eps = denoise(params, x, jnp.full((x.shape[0],), float(ts[i])), z_cond)
                x0 = (x - np.sqrt(1 - alphas[i]) * eps) / np.sqrt(alphas[i])
                key, sub = jax.random.split(key)
                x = (
                    np.sqrt(alphas_prev[i]) * x0
                    + np.sqrt(1 - alphas_prev[i] - sigmas[i] ** 2) * eps
                    + sigmas[i] * jax.random.normal(sub, x.shape)
                )
            out.append(decode(vq_params, x))
            z_cond = jnp.concatenate([z_cond, x], axis=1)[:, -model.cond_frames :]
        return jnp.concatenate(out, axis=1)[:, :frames]

    return run


def make_torch_rollout(model, frames, steps, eta=1.0, device="cpu", bf16=False):
    """PredVDM's rollout in PyTorch, sized like ``model`` (random weights: only timing), on
    ``device``; ``bf16`` runs it under ``torch.autocast`` in bfloat16."""
    import contextlib

    import torch

    from tests.torch_reference.denoiser import torch_wrapper_for_config
    from tests.torch_reference.ldm_vq import torch_vq_for_config

    config = model.config
    k, n_cond = model.k, model.cond_frames
    denoiser = torch_wrapper_for_config(config).eval().to(device)
    vq = torch_vq_for_config(config).to(device)
    ts = ddim_timesteps(steps, model.schedule.num_timesteps)
    alphas, alphas_prev, sigmas = (np.asarray(a) for a in ddim_parameters(model.schedule, ts, eta))
    device_type = torch.device(device).type
    precision = (
        torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )

    @torch.no_grad()
    def run(cond):
        b, _, size, _, _ = cond.shape
        video = torch.from_numpy(np.array(cond)).to(device).permute(0, 1, 4, 2, 3)
        if video.shape[2] == 1:
            video = video.repeat(1, 1, 3, 1, 1)
        with precision:
            z_cond = vq.encode(video.reshape(-1, 3, size, size))
            z_cond = z_cond.reshape(b, n_cond, *z_cond.shape[1:])
            out = []
            for _ in range(math.ceil(frames / k)):
                x = torch.randn(b, k, *z_cond.shape[2:], device=device)
                for i in reversed(range(len(ts))):
                    eps = denoiser(x, torch.full((b,), int(ts[i]), device=device), z_cond)
                    x0 = (x - np.sqrt(1 - alphas[i]) * eps) / np.sqrt(alphas[i])
                    x = (
                        np.sqrt(alphas_prev[i]) * x0
                        + np.sqrt(1 - alphas_prev[i] - sigmas[i] ** 2) * eps
                        + sigmas[i] * torch.randn_like(x)
                    )
                decoded = vq.decode(x.reshape(-1, *x.shape[2:])).clamp(-1, 1)
                out.append(decoded.reshape(b, k, *decoded.shape[1:]))
                z_cond = torch.cat([z_cond, x], dim=1)[:, -n_cond:]
        frames_out = torch.cat(out, dim=1)[:, :frames]
        if device_type == "cuda":
            torch.cuda.synchronize()
        return frames_out

    return run


def main(argv):
    del argv
    print(common.hardware())
    config = common.load_config(FLAGS.config)
    model = LatentDiffusion.from_config(config)
    params = jax.jit(model.init_denoiser)(jax.random.PRNGKey(0))
    vq_params = jax.jit(model.init_vq)(jax.random.PRNGKey(1))
    size = config.data.image_size
    cond = (
        jax.random.uniform(
            jax.random.PRNGKey(2),
            (FLAGS.batch, model.cond_frames, size, size, config.data.channels),
        )
        * 2
        - 1
    )
    total = FLAGS.batch * FLAGS.frames

    def rate(fn):
        jax.block_until_ready(fn())
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return total / (time.perf_counter() - start)

    python_loop = make_python_loop_rollout(model, FLAGS.frames, FLAGS.ddim_steps)
    loop = rate(lambda: python_loop(params, vq_params, cond, jax.random.PRNGKey(3)))
    print(f"Python-loop DDIM-{FLAGS.ddim_steps}: {loop:.2f} frames/s")
    torch_fps = None
    if FLAGS.torch and importlib.util.find_spec("torch"):
        torch_rollout = make_torch_rollout(model, FLAGS.frames, FLAGS.ddim_steps)
        torch_fps = rate(lambda: torch_rollout(cond))
        print(f"PyTorch original DDIM-{FLAGS.ddim_steps}: {torch_fps:.2f} frames/s")
    for sampler, steps in (("ddim", FLAGS.ddim_steps), ("dpm_solver_pp", FLAGS.dpm_steps)):
        sampling = config.sampling.copy_and_resolve_references()
        sampling.sampler, sampling.steps = sampler, steps
        predict = model.make_predict_fn(FLAGS.frames, sampling)
        fps = rate(lambda: predict(params, vq_params, cond, jax.random.PRNGKey(3))["frames"])
        print(
            f"compiled rollout {sampler}-{steps}: {fps:.2f} frames/s ({fps / loop:.2f}x the loop)"
        )
        # against DDIM baselines, another sampler is a switch of sampler, not of code
        switch = (sampler, steps) != ("ddim", FLAGS.ddim_steps)
        note = f" (another sampler: {FLAGS.ddim_steps / steps:g}x the UNet calls)" if switch else ""
        figure = f"rollout {FLAGS.config} 10->{FLAGS.frames} {sampler}-{steps} batch {FLAGS.batch}"
        common.emit(figure, fps, "frames/s", f"Python-loop DDIM-{FLAGS.ddim_steps}{note}", loop)
        if torch_fps:
            baseline = f"PyTorch original DDIM-{FLAGS.ddim_steps}{note}"
            common.emit(figure, fps, "frames/s", baseline, torch_fps)
    print(f"peak RSS {common.peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    app.run(main)

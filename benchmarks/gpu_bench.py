"""The accelerator figures of the issues, in one time-boxed run (used by benchmarks/gpu.sh).

1. correctness: a small PredVDM denoiser on the accelerator against the same
   computation on the host CPU (float32, highest matmul precision);
2. train step of the KTH config (259 M UNet, cached latents) at batch 64: float32
   (the baseline) and bfloat16 compute, examples/s and MFU (XLA's FLOP count over
   the measured time, against the chip's dense bf16 peak);
3. KTH 10 → 30 rollout at batch 256, bf16 UNet: DDIM-100 and DPM-Solver++-20
   (predicted frames/s, VQ decode included);
4. VQ-f4 (ch 128) encode/decode frames/s at 64×64;
5. I3D features/s for 40-frame clips at 224² (random weights: same cost).

Each figure is skipped once the time budget is spent, and results are appended
to $OUT/gpu_results.json as they come, so a cut-off run still reports.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from predvdm_jax import config as config_lib  # noqa: E402
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion  # noqa: E402
from predvdm_jax.training import optim  # noqa: E402
from tests.random_params import random_params_from_init  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM datasheets)
START = time.time()
BUDGET = float(os.environ.get("BENCH_BUDGET_S", 240))
OUT = os.environ.get("OUT", "/tmp")
TINY = bool(os.environ.get("BENCH_TINY"))  # a seconds-long smoke test of this script on CPU
results = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "rows": []}


def record(name, **values):
    values = {
        k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in values.items()
    }
    results["rows"].append(dict(name=name, elapsed_s=round(time.time() - START, 1), **values))
    print(name, values, flush=True)
    with open(os.path.join(OUT, "gpu_results.json"), "w") as f:
        json.dump(results, f, indent=1)


def time_it(fn, repeats=5):
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def out_of_time(reserve=0.0):
    return time.time() - START > BUDGET - reserve


def kth_config(dtype="float32", mode="tcct_para_attn"):
    c = config_lib.default_config()
    c.model.dtype = dtype
    c.model.mode = mode
    if TINY:
        c.unet.update(dict(model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,)))
        c.vq.update(dict(ch=32))
    return config_lib.validate(c)


def check_against_cpu():
    c = config_lib.default_config()
    c.unet.update(
        dict(
            model_channels=32,
            channel_mult=(1, 2),
            attention_resolutions=(2,),
            num_head_channels=16,
            num_res_blocks=1,
        )
    )
    c.data.update(dict(image_size=32, cond_frames=2, pred_frames=2, frames_per_sample=4))
    c.model.mode = "tcct_para_attn"
    model = LatentDiffusion.from_config(config_lib.validate(c))
    key = jax.random.PRNGKey(0)
    outs = {}
    for platform in ("cpu", jax.default_backend()):
        device = jax.devices(platform)[0]
        with jax.default_device(device), jax.default_matmul_precision("highest"):
            params = model.init_denoiser(key)
            noise_keys = iter(jax.random.split(jax.random.PRNGKey(3), len(jax.tree.leaves(params))))
            params = jax.tree.map(
                lambda p: p + 0.05 * jax.random.normal(next(noise_keys), p.shape), params
            )
            x = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 8, 8, 3))
            cond = jax.random.normal(jax.random.PRNGKey(2), (2, 2, 8, 8, 3))
            t = jnp.array([10.0, 900.0])
            outs[platform] = np.asarray(jax.jit(model.denoise)(params, x, t, cond))
    ref, got = outs["cpu"], outs[jax.default_backend()]
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    record(
        "correctness: denoiser accelerator vs CPU (f32, highest precision)",
        max_rel_err=rel,
        ok=bool(rel < 1e-4),
    )


def train_step_figures(batch=64):
    peak = next((v for k, v in PEAK_BF16.items() if k in results["device"]), 989e12)
    times = {}
    for dtype in ("bfloat16", "float32"):
        if out_of_time(60):
            record(f"train step {dtype}", skipped="time budget")
            continue
        config = kth_config(dtype)
        model = LatentDiffusion.from_config(config)
        optimizer, _ = optim.make_optimizer(config)
        params = jax.device_put(random_params_from_init(model.init_denoiser))
        opt_state = optimizer.init(params)
        latents = jax.random.normal(jax.random.PRNGKey(1), (batch, 15, 16, 16, 3))

        def step(params, opt_state, latents, key):
            grad_fn = jax.value_and_grad(
                lambda p: model.loss(p, None, {"latents": latents}, key)[0]
            )
            loss, grads = grad_fn(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return jax.tree.map(jnp.add, params, updates), opt_state, loss

        compiled = (
            jax.jit(step, donate_argnums=(0, 1))
            .lower(params, opt_state, latents, jax.random.PRNGKey(2))
            .compile()
        )
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", 0.0))
        state = [params, opt_state]

        def run():
            state[0], state[1], loss = compiled(state[0], state[1], latents, jax.random.PRNGKey(3))
            return loss

        seconds = time_it(run, repeats=10)
        times[dtype] = seconds
        record(
            f"train step KTH 259M batch {batch} {dtype}",
            step_s=seconds,
            examples_per_s=batch / seconds,
            xla_tflop_per_step=flops / 1e12,
            mfu_vs_bf16_peak=flops / seconds / peak,
        )
    if len(times) == 2:
        record("train step bf16 speed-up over f32", ratio=times["float32"] / times["bfloat16"])


def rollout_figures(batch=256, frames=30):
    config = kth_config("bfloat16")
    model = LatentDiffusion.from_config(config)
    params = jax.device_put(random_params_from_init(model.init_denoiser))
    vq_params = jax.device_put(random_params_from_init(model.init_vq, 1))
    cond = jax.random.uniform(jax.random.PRNGKey(2), (batch, 10, 64, 64, 1)) * 2 - 1
    for sampler, steps in (("dpm_solver_pp", 20), ("ddim", 100)):
        if out_of_time(40):
            record(f"rollout {sampler}-{steps}", skipped="time budget")
            continue
        sampling = config.sampling.copy_and_resolve_references()
        sampling.sampler, sampling.steps = sampler, steps
        predict = model.make_predict_fn(frames, sampling)
        seconds = time_it(
            lambda: predict(params, vq_params, cond, jax.random.PRNGKey(3))["frames"], repeats=2
        )
        record(
            f"rollout KTH 10->30 {sampler}-{steps} batch {batch} bf16 ({config.model.mode})",
            seconds=seconds,
            frames_per_s=batch * frames / seconds,
        )


def vq_figures(frames=1024):
    if out_of_time(20):
        record("VQ-f4", skipped="time budget")
        return
    model = LatentDiffusion.from_config(kth_config())
    vq_params = jax.device_put(random_params_from_init(model.init_vq))
    video = jax.random.uniform(jax.random.PRNGKey(1), (frames // 16, 16, 64, 64, 3)) * 2 - 1
    enc = jax.jit(model.encode)
    dec = jax.jit(model.decode)
    z = enc(vq_params, video)
    record(
        "VQ-f4 ch128 64x64 f32",
        encode_frames_per_s=frames / time_it(lambda: enc(vq_params, video)),
        decode_frames_per_s=frames / time_it(lambda: dec(vq_params, z)),
    )


def i3d_figures(clips=16):
    if out_of_time(20):
        record("I3D", skipped="time budget")
        return
    from predvdm_jax.models.i3d import InceptionI3d

    net = InceptionI3d()
    videos = jax.random.uniform(jax.random.PRNGKey(0), (clips, 40, 224, 224, 3)) * 2 - 1
    variables = jax.jit(net.init)(jax.random.PRNGKey(1), videos[:1])
    apply = jax.jit(lambda v, x: net.apply(v, x))
    record(
        "I3D 40x224x224 (random weights)",
        clips_per_s=clips / time_it(lambda: apply(variables, videos), repeats=3),
    )


if __name__ == "__main__":
    sizes = (
        dict(
            train_step_figures=dict(batch=2),
            rollout_figures=dict(batch=2, frames=7),
            vq_figures=dict(frames=32),
            i3d_figures=dict(clips=1),
        )
        if TINY
        else {}
    )
    for figure in (check_against_cpu, rollout_figures, train_step_figures, vq_figures, i3d_figures):
        try:
            figure(**sizes.get(figure.__name__, {}))
        except Exception as err:  # keep going: a failed figure must not lose the others
            record(figure.__name__, error=f"{type(err).__name__}: {err}"[:500])
    print(json.dumps(results, indent=1))

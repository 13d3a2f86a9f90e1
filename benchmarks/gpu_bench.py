"""The accelerator figures of the issues, in one time-boxed run (used by benchmarks/gpu.sh).

1. correctness: a small PredVDM denoiser on the accelerator against the same
   computation on the host CPU: float32 at highest matmul precision, and bf16
   with cuDNN's fused attention and with XLA's;
2. the training engine's step (gradient, grad norm, clipped AdamW, EMA) for the KTH
   config (259 M UNet, cached latents) at batch 64 in bfloat16 compute, examples/s
   and MFU (model FLOPs over the measured time, against the chip's dense bf16 peak);
   the same step, one denoiser call and one block's decode with the models' one-pass
   GroupNorm against flax's (the code before it);
3. KTH 10 → 30 rollout at batch 256, bf16: DPM-Solver++-20 and DDIM-100
   (predicted frames/s, VQ decode included, and the MFU of the same FLOP count), and
   profiler traces of one denoiser call and one block's decode at that batch;
4. the PyTorch original's DDIM-100 rollout on the same GPU (bf16 autocast), the
   baseline of the compiled rollout;
5. the float32 train step (the baseline of the bf16 speed-up) and bf16 with XLA's
   attention instead of cuDNN's (the fused attention's share);
6. the bf16 step taken apart: gradient alone, update (AdamW + EMA) alone, and the whole
   step at batch 128 (how much of the time is per-step rather than per-example); the
   engine's two-stage global gradient norm against optax's per-leaf one;
7. VQ-f4 (ch 128) encode/decode frames/s at 64×64;
8. I3D features/s for 40-frame clips at 224² (random weights: same cost);
9. the bf16 step's compiled memory with 2 accumulated microbatches and with remat, and
   the accumulated step's time;
10. one bf16 denoiser call at the rollout's batch with XLA's dot merger off against on (the
   merger fuses the attention's three q/k/v products back into one and slices its output
   apart: 1.0 ms of an H100 call's 20.8 ms in the eighth session's trace), and with the
   2×2 level's convolutions as cuDNN convolutions against im2col + matmul (its
   concatenations: about 0.6 ms of that call), and with the dense products as cuBLAS calls
   against Triton GEMM fusions.

The bf16 step at batch 64 leaves a profiler trace, $OUT/train_bfloat16_batch64.xplane.pb,
and its optimized HLO, $OUT/train_bfloat16_batch64.hlo.txt.gz: a kernel of the trace such as
``input_reduce_fusion_12`` is the HLO's ``input_reduce_fusion.12``.

Model FLOPs are the matrix products and convolutions of the program's jaxpr, counted as XLA's
cost analysis counts them (``training.flops.matmul_flops``), with XLA's attention in place of
cuDNN's fused one. XLA:GPU's own cost analysis cannot serve: cuDNN's convolutions and
attention are custom calls it counts as zero (it gave 0.38 TFLOP for a 4.35 TFLOP step).
``BENCH_FIGURES=a,b`` runs only those, in that order.

Each figure is skipped once the time budget (BENCH_BUDGET_S) is spent, and results are
appended to $OUT/gpu_results.json as they come, so a cut-off run still reports.
BENCH_TINY=1 is a smoke test of this script on the CPU: a small KTH-shaped model (its rows
say so), small batches and 9-frame I3D clips, every figure run whatever the budget (about
6 minutes on 2 cores, nearly all of it compiling; BENCH_FIGURES narrows it). On an
accelerator the compiled programs are cached in /tmp/jax_cache, for a rerun on a warm machine.
"""

import functools
import json
import os
import sys
import time
import traceback
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as flax_nn

sys.path.insert(0, os.path.dirname(__file__))
sys.path.append(os.path.join(os.path.dirname(__file__), ".."))  # after PYTHONPATH: BENCH_CODE

import predvdm_jax  # noqa: E402
from common import engine_step, time_call  # noqa: E402
from predvdm_jax import config as config_lib  # noqa: E402
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion  # noqa: E402
from predvdm_jax.models import conv  # noqa: E402
from predvdm_jax.training import optim  # noqa: E402
from predvdm_jax.training.diffusion_trainer import make_loss_fn  # noqa: E402
from predvdm_jax.training.flops import matmul_flops, peak_bf16_flops  # noqa: E402
from predvdm_jax.training.train_state import TrainState  # noqa: E402
from predvdm_jax.training.train_step import apply_gradients  # noqa: E402
from tests.random_params import random_params_from_init  # noqa: E402

if jax.default_backend() != "cpu":
    jax.config.update("jax_compilation_cache_dir", "/tmp/jax_cache")  # a rerun on a warm machine

START = time.time()
BUDGET = float(os.environ.get("BENCH_BUDGET_S", 240))
OUT = os.environ.get("OUT", "/tmp")
TINY = bool(os.environ.get("BENCH_TINY"))  # a smoke test of this script on the CPU
TINY_CHANNELS = 32  # the UNet's and the VQ's base channels under TINY
MODEL = f"tiny KTH-shaped (UNet/VQ ch {TINY_CHANNELS}, 1 ResBlock)" if TINY else "KTH 259M"
WARMUP_S = 0.0 if TINY else 3.0  # time_call's warm-up of a figure's first timing in a process
ONLY = [name for name in os.environ.get("BENCH_FIGURES", "").split(",") if name]
STEP_SECONDS = {}
ROLLOUT_FPS = {}
results = {
    "device": str(jax.devices()[0].device_kind),
    "jax": jax.__version__,
    "code": os.path.dirname(predvdm_jax.__file__),
    "rows": [],
}


def record(name, **values):
    values = {
        k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in values.items()
    }
    results["rows"].append(dict(name=name, elapsed_s=round(time.time() - START, 1), **values))
    print(name, values, flush=True)
    with open(os.path.join(OUT, "gpu_results.json"), "w") as f:
        json.dump(results, f, indent=1)


def out_of_time(reserve=0.0):
    """Whether the budget, less ``reserve`` seconds, is spent (never under BENCH_TINY)."""
    return not TINY and time.time() - START > BUDGET - reserve


def kth_config(dtype="float32", attention="auto", remat=False, grad_accum_steps=1):
    c = config_lib.default_config()
    c.model.update(dict(dtype=dtype, mode="tcct_para_attn", attention=attention, remat=remat))
    c.train.grad_accum_steps = grad_accum_steps
    if TINY:
        c.unet.update(
            dict(
                model_channels=TINY_CHANNELS,
                channel_mult=(1, 2),
                attention_resolutions=(2,),
                num_res_blocks=1,
            )
        )
        c.vq.update(dict(ch=TINY_CHANNELS, num_res_blocks=1))
    return config_lib.validate(c)


def save_profile(fn, filename, steps=2):
    """A profiler trace of ``steps`` calls, as one ``$OUT/filename`` (kernel names and times)."""
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as trace_dir:
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = 0
        options.host_tracer_level = 1
        options.enable_hlo_proto = False
        with jax.profiler.trace(trace_dir, profiler_options=options):
            for _ in range(steps):
                out = fn()
            jax.block_until_ready(out)
        traces = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        if traces and os.path.getsize(traces[0]) < 15 * 2**20:
            shutil.copy(traces[0], os.path.join(OUT, filename))


def save_hlo(compiled, filename):
    """The optimized HLO of ``compiled`` as ``$OUT/filename`` (gzip): which op each kernel of a
    trace is, for reading the profile after the machine is gone."""
    import gzip

    with gzip.open(os.path.join(OUT, filename), "wt") as f:
        f.write(compiled.as_text())


def mfu(flops, seconds):
    """``flops / seconds`` over the device's dense bf16 peak; None on a device without one in
    ``training.flops.PEAK_BF16_FLOPS`` (the CPU of a ``BENCH_TINY`` run)."""
    peak = peak_bf16_flops(results["device"])
    return None if peak is None else flops / seconds / peak


def check_against_cpu():
    c = config_lib.default_config()
    c.unet.update(
        dict(
            model_channels=32,
            channel_mult=(1, 2, 2),  # down to 2x2 maps: conv2d's matmul path on the GPU
            attention_resolutions=(1, 2),
            num_head_channels=16,
            num_res_blocks=1,
        )
    )
    c.data.update(dict(image_size=32, cond_frames=2, pred_frames=2, frames_per_sample=4))
    c.model.mode = "tcct_para_attn"
    c = config_lib.validate(c)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 8, 8, 3))
    cond = jax.random.normal(jax.random.PRNGKey(2), (2, 2, 8, 8, 3))
    t = jnp.array([10.0, 900.0])

    def denoise(platform, dtype="float32", attention="auto"):
        c.model.update(dict(dtype=dtype, attention=attention))
        model = LatentDiffusion.from_config(c)
        params = random_params_from_init(model.init_denoiser, 3)
        with (
            jax.default_device(jax.devices(platform)[0]),
            jax.default_matmul_precision("highest" if dtype == "float32" else "default"),
        ):
            return np.asarray(jax.jit(model.denoise)(params, x, t, cond), np.float32)

    ref = denoise("cpu")
    scale = np.abs(ref).max()
    accelerator = jax.default_backend()
    rel = lambda out: float(np.abs(out - ref).max() / scale)
    rel_f32 = rel(denoise(accelerator))
    record(
        "correctness: denoiser accelerator vs CPU (f32, highest precision)",
        max_rel_err=rel_f32,
        ok=bool(rel_f32 < 1e-4),
    )
    rel_fused = rel(denoise(accelerator, "bfloat16", "auto"))
    rel_xla = rel(denoise(accelerator, "bfloat16", "xla"))
    record(
        "correctness: bf16 denoiser vs CPU f32, fused (auto) and XLA attention",
        max_rel_err_auto=rel_fused,
        max_rel_err_xla=rel_xla,
        ok=bool(rel_fused < 1.5 * rel_xla + 1e-3),
    )


def engine_train_step(config, batch):
    """The training engine's jitted step (``common.engine_step``) for ``config`` on one
    device, and the function that makes its state (random params) and a batch of cached
    latents."""
    engine = engine_step(config)
    model, optimizer = engine.model, engine.optimizer

    def make_inputs():
        params = random_params_from_init(model.init_denoiser)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            ema_params=params,
            ema_updates=jnp.zeros((), jnp.int32),
            rng=jax.random.PRNGKey(2),
            extra=None,
        )
        latents = jax.random.normal(jax.random.PRNGKey(1), (batch, 15, 16, 16, 3))
        return jax.device_put(state, engine.shardings), {"latents": latents}

    return engine.step, make_inputs


def train_step_figure(dtype, attention="auto", batch=64, reserve=60, profile=False):
    """Times the engine's train step; returns its seconds. ``profile`` saves a trace of two
    steps."""
    name = f"train step {MODEL} batch {batch} {dtype} attention={attention}"
    if out_of_time(reserve):
        record(name, skipped="time budget")
        return None
    step, make_inputs = engine_train_step(kth_config(dtype, attention), batch)
    state, batch_data = make_inputs()
    counting_step, _ = engine_train_step(kth_config(dtype, "xla"), batch)
    flops = matmul_flops(counting_step, state, batch_data)
    start = time.time()
    compiled = step.lower(state, batch_data).compile()
    compile_s = time.time() - start
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch_data)
        return metrics["loss"]

    seconds = time_call(run, repeats=10, pipelined=True, warmup_s=WARMUP_S)
    if profile:
        save_profile(run, f"train_{dtype}_batch{batch}.xplane.pb")
        save_hlo(compiled, f"train_{dtype}_batch{batch}.hlo.txt.gz")
    record(
        name,
        step_s=seconds,
        examples_per_s=batch / seconds,
        model_tflop_per_step=flops / 1e12,
        mfu_vs_bf16_peak=mfu(flops, seconds),
        compile_s=compile_s,
        loss_finite=bool(np.isfinite(float(run()))),
    )
    return seconds


@functools.lru_cache(maxsize=1)
def rollout_setup(batch, frames):
    """Model, random params, conditioning frames and the FLOPs of one rollout's parts,
    shared by the rollout figures."""
    model = LatentDiffusion.from_config(kth_config("bfloat16"))
    counting = LatentDiffusion.from_config(kth_config("bfloat16", "xla"))
    params = jax.device_put(random_params_from_init(model.init_denoiser))
    vq_params = jax.device_put(random_params_from_init(model.init_vq, 1))
    cond = jax.random.uniform(jax.random.PRNGKey(2), (batch, 10, 64, 64, 1)) * 2 - 1
    z = jnp.zeros((batch, model.k, 16, 16, 3))
    z_cond = jnp.zeros((batch, model.cond_frames, 16, 16, 3))
    t = jnp.full((batch,), 500.0)
    return types.SimpleNamespace(
        model=model,
        params=params,
        vq_params=vq_params,
        cond=cond,
        denoise_flops=matmul_flops(counting.eps_prediction, params, z, t, z_cond),
        decode_flops=matmul_flops(counting.decode, vq_params, z),
        encode_flops=matmul_flops(counting.encode, vq_params, cond),
    )


def rollout_figure(sampler, steps, batch=256, frames=30):
    mode = kth_config().model.mode
    name = f"rollout {MODEL} 10->{frames} {sampler}-{steps} batch {batch} bf16 ({mode})"
    if out_of_time(60):
        record(name, skipped="time budget")
        return
    setup = rollout_setup(batch, frames)
    model = setup.model
    sampling = model.config.sampling.copy_and_resolve_references()
    sampling.sampler, sampling.steps = sampler, steps
    predict = model.make_predict_fn(frames, sampling)
    blocks = -(-frames // model.k)
    flops = setup.encode_flops + blocks * (steps * setup.denoise_flops + setup.decode_flops)
    rollout = lambda: predict(setup.params, setup.vq_params, setup.cond, jax.random.PRNGKey(3))
    start = time.time()
    first = jax.block_until_ready(rollout()["frames"])
    first_s = time.time() - start
    seconds = time_call(lambda: rollout()["frames"], repeats=1, warmup=0, pipelined=True)
    ROLLOUT_FPS[f"{sampler.split('_')[0]}-{steps}"] = batch * frames / seconds
    record(
        name,
        seconds=seconds,
        frames_per_s=batch * frames / seconds,
        compile_and_first_run_s=first_s,
        model_tflop=flops / 1e12,
        mfu_vs_bf16_peak=mfu(flops, seconds),
        unet_gflop_per_forward_example=setup.denoise_flops / batch / 1e9,
        vq_decode_gflop_per_frame=setup.decode_flops / (batch * model.k) / 1e9,
        finite=bool(np.isfinite(np.asarray(first, np.float32)).all()),
    )


def denoiser_call_inputs(batch):
    """The rollout setup and one denoiser call's arguments ``(params, z, t, z_cond)``."""
    setup = rollout_setup(batch, 30)
    z = jax.random.normal(jax.random.PRNGKey(4), (batch, setup.model.k, 16, 16, 3))
    z_cond = jax.random.normal(jax.random.PRNGKey(5), (batch, setup.model.cond_frames, 16, 16, 3))
    return setup, (setup.params, z, jnp.full((batch,), 500.0), z_cond)


def rollout_unet_profile(batch=256):
    """Profiler traces of the rollout's two parts at its batch: one denoiser call (the UNet
    over the tc and ct stackings, bf16) and one block's VQ decode, with their optimized
    HLO: ``$OUT/rollout_{denoise,decode}_batch{batch}.{xplane.pb,hlo.txt.gz}``."""
    name = f"rollout parts profiled, batch {batch} bf16"
    if out_of_time(40):
        record(name, skipped="time budget")
        return
    setup, denoise_args = denoiser_call_inputs(batch)
    seconds = {}
    for part, fn, args in (
        ("denoise", setup.model.eps_prediction, denoise_args),
        ("decode", setup.model.decode, (setup.vq_params, denoise_args[1])),
    ):
        compiled = jax.jit(fn).lower(*args).compile()
        seconds[part] = time_call(
            lambda: compiled(*args), repeats=5, pipelined=True, warmup_s=WARMUP_S
        )
        save_profile(lambda: compiled(*args), f"rollout_{part}_batch{batch}.xplane.pb")
        save_hlo(compiled, f"rollout_{part}_batch{batch}.hlo.txt.gz")
    record(
        name,
        denoise_ms=seconds["denoise"] * 1e3,
        decode_ms=seconds["decode"] * 1e3,
        denoise_tflop_per_s=setup.denoise_flops / seconds["denoise"] / 1e12,
        decode_tflop_per_s=setup.decode_flops / seconds["decode"] / 1e12,
    )


def denoiser_call_variants(name, batch, variants):
    """One bf16 denoiser call at ``batch`` compiled once per variant, ``{label: lower}`` with
    ``lower(fn, args)`` giving the jitted ``fn``'s ``Lowered``; timed alternately, recording
    each variant's best time in ms and the largest difference between their outputs."""
    if out_of_time(40):
        record(name, skipped="time budget")
        return
    setup, args = denoiser_call_inputs(batch)
    compiled = {  # a fresh function per variant: no trace is reused between them
        label: lower(lambda *a: setup.model.eps_prediction(*a), args).compile()
        for label, lower in variants.items()
    }
    seconds = {label: [] for label in compiled}
    for _ in range(3):
        for label, fn in compiled.items():
            seconds[label].append(time_call(lambda: fn(*args), repeats=5, pipelined=True))
    first, second = (np.asarray(fn(*args), np.float32) for fn in compiled.values())
    record(
        name,
        **{f"{label}_ms": min(times) * 1e3 for label, times in seconds.items()},
        max_abs_difference=float(np.max(np.abs(first - second))),
    )


def _lower(fn, args, compiler_options=None):
    return jax.jit(fn, compiler_options=compiler_options).lower(*args)


def rollout_dot_merger(batch=256):
    """XLA's dot merger fuses the attention's q/k/v products back into one and slices the
    result apart; ``xla_gpu_dot_merger_threshold_mb`` 0 turns it off."""
    unmerged = functools.partial(_lower, compiler_options={"xla_gpu_dot_merger_threshold_mb": 0})
    denoiser_call_variants(
        f"denoiser call batch {batch} bf16, dot merger on / off",
        batch,
        {"merged": _lower, "unmerged": unmerged},
    )


def rollout_triton_gemm(batch=256):
    """XLA:GPU's dense products as Triton GEMM fusions (the default) against cuBLAS calls
    (``xla_gpu_enable_triton_gemm`` off): the qkv and output projections, the 1×1 skips, and
    the 2×2 level's im2col products."""
    cublas = functools.partial(_lower, compiler_options={"xla_gpu_enable_triton_gemm": False})
    denoiser_call_variants(
        f"denoiser call batch {batch} bf16, dense products Triton / cuBLAS",
        batch,
        {"triton": _lower, "cublas": cublas},
    )


def rollout_small_map_convs(batch=256):
    """The 2×2 level's convolutions as im2col + matmul (``models/conv.uses_matmul``, chosen for
    the train step's kernel gradients) against cuDNN's, in the rollout, which takes none."""

    def as_convolutions(fn, args):
        with mock.patch.object(conv, "uses_matmul", lambda *a, **k: False):
            return _lower(fn, args)

    denoiser_call_variants(
        f"denoiser call batch {batch} bf16, 2x2-level convolutions im2col / cuDNN",
        batch,
        {"im2col": _lower, "cudnn": as_convolutions},
    )


def rollout_dpm_solver(batch=256, frames=30):
    rollout_figure("dpm_solver_pp", 20, batch, frames)


def rollout_ddim(batch=256, frames=30):
    rollout_figure("ddim", 100, batch, frames)


def rollout_torch_original(batch=256, frames=30, steps=100):
    """The PyTorch original's DDIM rollout (bench_rollout.make_torch_rollout) on the same
    GPU under bf16 autocast: the baseline of the compiled JAX rollout."""
    name = f"rollout {MODEL} 10->{frames} PyTorch original ddim-{steps} batch {batch} bf16 autocast"
    if out_of_time(60):
        record(name, skipped="time budget")
        return
    import torch
    from bench_rollout import make_torch_rollout

    torch.backends.cudnn.benchmark = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LatentDiffusion.from_config(kth_config("bfloat16"))
    cond = np.random.default_rng(0).uniform(-1, 1, (batch, 10, 64, 64, 1)).astype(np.float32)
    make_torch_rollout(model, model.k, 2, device=device, bf16=True)(cond)  # cuDNN autotuning
    run = make_torch_rollout(model, frames, steps, device=device, bf16=True)
    start = time.perf_counter()
    run(cond)
    seconds = time.perf_counter() - start
    jax_fps = ROLLOUT_FPS.get(f"ddim-{steps}")
    record(
        name,
        torch=torch.__version__,
        seconds=seconds,
        frames_per_s=batch * frames / seconds,
        jax_compiled_speedup=jax_fps / (batch * frames / seconds) if jax_fps else None,
    )


def flax_group_norm(x, scale, bias, num_groups, epsilon):
    """The GroupNorm the models used before ``models/group_norm.py``: flax's, two-pass
    variance, float32, differentiated by autodiff."""
    norm = flax_nn.GroupNorm(
        num_groups=num_groups, epsilon=epsilon, dtype=jnp.float32, use_fast_variance=False
    )
    params = {"params": {"scale": scale, "bias": bias}}
    return norm.apply(params, x.astype(jnp.float32)).astype(x.dtype)


def group_norm_speedup(batch=64, rollout_batch=256):
    """The one-pass GroupNorm (``models/group_norm.py``) against flax's (the code before it),
    in the same run: the bf16 train step at ``batch``, one denoiser call and one block's
    decode at ``rollout_batch``, and how far the two differ."""
    name = f"one-pass GroupNorm vs flax's: bf16 train step batch {batch}, rollout parts"
    if out_of_time(150):
        record(name, skipped="time budget")
        return
    from predvdm_jax.models import group_norm as group_norm_lib

    values = {}
    setup = rollout_setup(rollout_batch, 30)
    model = setup.model
    z = jax.random.normal(jax.random.PRNGKey(4), (rollout_batch, model.k, 16, 16, 3))
    z_cond = jax.random.normal(jax.random.PRNGKey(5), (rollout_batch, model.cond_frames, 16, 16, 3))
    t = jnp.full((rollout_batch,), 500.0)
    for label, norm in (("one_pass", group_norm_lib.group_norm), ("flax", flax_group_norm)):
        with mock.patch.object(group_norm_lib, "group_norm", norm):
            step, make_inputs = engine_train_step(kth_config("bfloat16"), batch)
            state, batch_data = make_inputs()
            compiled = step.lower(state, batch_data).compile()
            state, metrics = compiled(state, batch_data)
            values[f"{label}_first_loss"] = float(metrics["loss"])
            holder = [state]

            def run():
                holder[0], metrics = compiled(holder[0], batch_data)
                return metrics["loss"]

            values[f"{label}_step_ms"] = (
                time_call(run, repeats=10, pipelined=True, warmup_s=WARMUP_S) * 1e3
            )
            for part, fn, args in (
                ("denoise", model.eps_prediction, (setup.params, z, t, z_cond)),
                ("decode", model.decode, (setup.vq_params, z)),
            ):
                part_fn = jax.jit(lambda *a, fn=fn: fn(*a)).lower(*args).compile()  # no trace cache
                values[f"{label}_{part}_ms"] = (
                    time_call(lambda: part_fn(*args), pipelined=True) * 1e3
                )
                values[f"{label}_{part}_out"] = np.asarray(part_fn(*args), np.float32)
    for part in ("denoise", "decode"):
        ours, before = values.pop(f"one_pass_{part}_out"), values.pop(f"flax_{part}_out")
        values[f"{part}_max_rel_diff"] = float(np.abs(ours - before).max() / np.abs(before).max())
    for figure in ("step", "denoise", "decode"):
        values[f"{figure}_speedup"] = values[f"flax_{figure}_ms"] / values[f"one_pass_{figure}_ms"]
    record(name, **values)


def train_step_bf16(batch=64):
    STEP_SECONDS["bfloat16"] = train_step_figure("bfloat16", batch=batch, profile=True)


def train_step_breakdown(batch=64):
    """Where the bf16 step's time goes: the gradient alone and the update alone (clipped
    AdamW + EMA, the engine's ``apply_gradients``) at ``batch``, then the whole step at
    twice the batch (per-step costs amortised)."""
    name = f"train step {MODEL} batch {batch} bf16: gradient and update apart"
    if out_of_time(90):
        record(name, skipped="time budget")
        return
    config = kth_config("bfloat16")
    model = LatentDiffusion.from_config(config)
    optimizer, _ = optim.make_optimizer(config)
    _, make_inputs = engine_train_step(config, batch)
    state, batch_data = make_inputs()
    loss_fn = make_loss_fn(model, None)
    gradient = jax.jit(jax.grad(lambda p, b, key: loss_fn(p, b, key, state.step)[0]))
    update = jax.jit(
        lambda s, g: apply_gradients(s, g, optimizer, config.train.ema_rate), donate_argnums=0
    )

    key = jax.random.PRNGKey(2)
    grads = gradient(state.params, batch_data, key)
    gradient_s = time_call(
        lambda: gradient(state.params, batch_data, key), pipelined=True, warmup_s=WARMUP_S
    )
    holder = [state]  # donated and threaded, as in the step (undonated: 24.9 ms on an H100)

    def run_update():
        holder[0] = update(holder[0], grads)
        return holder[0].step

    update_s = time_call(run_update, pipelined=True, warmup_s=WARMUP_S)
    step_s = STEP_SECONDS.get("bfloat16")
    record(
        name,
        gradient_s=gradient_s,
        update_s=update_s,
        whole_step_s=step_s,
        update_share_of_step=update_s / step_s if step_s else None,
    )
    train_step_figure("bfloat16", batch=2 * batch)


def grad_norm_reduction():
    """The engine's global gradient norm (``optim.global_norm``: rows first, then the total)
    against ``optax.tree.norm`` (one full reduction per leaf), on float32 arrays of the KTH
    parameter shapes. The HWIO-era profile showed full reductions of large kernel
    gradients on 4-20 thread blocks at about 0.25 TB/s."""
    name = f"global grad norm of the {MODEL} shapes: rows first vs per-leaf full reductions"
    if out_of_time(30):
        record(name, skipped="time budget")
        return
    import optax

    model = LatentDiffusion.from_config(kth_config("bfloat16"))
    grads = jax.device_put(random_params_from_init(model.init_denoiser))
    engine, baseline = jax.jit(optim.global_norm), jax.jit(optax.tree.norm)
    engine_s = time_call(lambda: engine(grads), 20, pipelined=True)
    baseline_s = time_call(lambda: baseline(grads), 20, pipelined=True)
    want, got = float(baseline(grads)), float(engine(grads))
    record(
        name,
        engine_ms=engine_s * 1e3,
        optax_tree_norm_ms=baseline_s * 1e3,
        engine_speedup=baseline_s / engine_s,
        rel_diff=abs(got - want) / want,
    )


def train_step_f32(batch=64):
    f32 = train_step_figure("float32", batch=batch, reserve=110)  # its compile alone is ~60 s
    if STEP_SECONDS.get("bfloat16") and f32:
        record("train step bf16 speed-up over f32", ratio=f32 / STEP_SECONDS["bfloat16"])


def train_step_xla_attention(batch=64):
    xla = train_step_figure("bfloat16", "xla", batch=batch)
    if STEP_SECONDS.get("bfloat16") and xla:
        record(
            "train step bf16: cuDNN fused attention speed-up over XLA's",
            ratio=xla / STEP_SECONDS["bfloat16"],
        )


def train_step_memory_knobs(batch=64):
    """The bf16 step's compiled memory in one pass, in 2 accumulated microbatches and with
    remat (XLA:CPU drops remat's recomputation, so only an accelerator shows its saving), and
    the accumulated step's time (the kernel gradients now run inside a loop)."""
    name = f"train step {MODEL} batch {batch} bf16: accumulation and remat"
    if out_of_time(240):
        record(name, skipped="time budget")
        return
    values = {}
    for label, knobs in (
        ("one_pass", {}),
        ("accum2", dict(grad_accum_steps=2)),
        ("remat", dict(remat=True)),
    ):
        step, make_inputs = engine_train_step(kth_config("bfloat16", **knobs), batch)
        state, batch_data = make_inputs()
        compiled = step.lower(state, batch_data).compile()
        values[f"{label}_temp_gib"] = compiled.memory_analysis().temp_size_in_bytes / 2**30
        if label == "accum2":
            holder = [state]

            def run():
                holder[0], metrics = compiled(holder[0], batch_data)
                return metrics["loss"]

            values["accum2_step_s"] = time_call(run, repeats=10, pipelined=True, warmup_s=WARMUP_S)
    values["one_pass_step_s"] = STEP_SECONDS.get("bfloat16")
    record(name, **values)


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
        f"VQ-f4 ch{model.config.vq.ch} 64x64 f32",
        encode_frames_per_s=frames / time_call(lambda: enc(vq_params, video), pipelined=True),
        decode_frames_per_s=frames / time_call(lambda: dec(vq_params, z), pipelined=True),
    )


def i3d_figures(clips=16, frames=40):
    if out_of_time(20):
        record("I3D", skipped="time budget")
        return
    from predvdm_jax.models.i3d import InceptionI3d

    net = InceptionI3d()
    videos = jax.random.uniform(jax.random.PRNGKey(0), (clips, frames, 224, 224, 3)) * 2 - 1
    variables = jax.jit(net.init)(jax.random.PRNGKey(1), videos[:1])
    apply = jax.jit(lambda v, x: net.apply(v, x))
    record(
        f"I3D {frames}x224x224 (random weights)",
        clips_per_s=clips / time_call(lambda: apply(variables, videos), repeats=3, pipelined=True),
    )


if __name__ == "__main__":
    tiny_rollout = dict(batch=2, frames=7)
    sizes = (
        dict(
            train_step_bf16=dict(batch=2),
            group_norm_speedup=dict(batch=2, rollout_batch=2),
            train_step_f32=dict(batch=2),
            train_step_breakdown=dict(batch=2),
            train_step_xla_attention=dict(batch=2),
            train_step_memory_knobs=dict(batch=2),
            rollout_dpm_solver=tiny_rollout,
            rollout_ddim=tiny_rollout,
            rollout_unet_profile=dict(batch=2),
            rollout_dot_merger=dict(batch=2),
            rollout_small_map_convs=dict(batch=2),
            rollout_triton_gemm=dict(batch=2),
            rollout_torch_original=dict(batch=2, frames=7, steps=4),
            vq_figures=dict(frames=32),
            i3d_figures=dict(clips=1, frames=9),
        )
        if TINY
        else {}
    )
    figures = (
        check_against_cpu,
        train_step_bf16,
        group_norm_speedup,
        rollout_dpm_solver,
        rollout_ddim,
        rollout_unet_profile,
        rollout_dot_merger,
        rollout_small_map_convs,
        rollout_triton_gemm,
        rollout_torch_original,
        train_step_f32,
        train_step_xla_attention,
        train_step_breakdown,
        grad_norm_reduction,
        vq_figures,
        i3d_figures,
        train_step_memory_knobs,
    )
    by_name = {figure.__name__: figure for figure in figures}
    unknown = [name for name in ONLY if name not in by_name]
    if unknown:
        sys.exit(f"error: BENCH_FIGURES names unknown figures {unknown}; known: {list(by_name)}")
    for figure in [by_name[name] for name in ONLY] if ONLY else figures:
        try:
            figure(**sizes.get(figure.__name__, {}))
        except Exception as err:  # keep going: a failed figure must not lose the others
            where = traceback.extract_tb(err.__traceback__)[-3:]
            record(figure.__name__, error=f"{type(err).__name__}: {err}"[:500], where=str(where))
    print(json.dumps(results, indent=1))

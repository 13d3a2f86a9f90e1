"""Shared helpers for the benchmark scripts: hardware line, timing, peak memory, baselines."""

import itertools
import os
import platform
import statistics
import time
from typing import Any, NamedTuple

import jax

from predvdm_jax.evaluation.report import peak_rss_gb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_name() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> str:
    """One line: host CPU model and core count, JAX devices and backend, JAX version."""
    kinds = sorted({d.device_kind for d in jax.devices()})
    return (
        f"{cpu_name()} ({os.cpu_count()} CPU cores), {jax.device_count()} × "
        f"{'/'.join(kinds)} ({jax.default_backend()}), jax {jax.__version__}"
    )


def load_config(name: str):
    """``configs/<name>.py``'s ``get_config()``."""
    from predvdm_jax import config as config_lib

    return config_lib.load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))


class EngineStep(NamedTuple):
    step: Any  # jitted step(state, batch) -> (state, metrics)
    state: Any  # the abstract train state, carrying its shardings
    shardings: Any
    mesh: Any
    model: Any
    optimizer: Any


def engine_step(config) -> EngineStep:
    """The training engine's jitted denoiser step (gradient, grad norm, clipped AdamW, EMA,
    ``train.grad_accum_steps`` microbatches) for ``config`` over all devices, fed cached
    latents."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax import mesh as mesh_lib
    from predvdm_jax.training.diffusion_trainer import make_loss_fn
    from predvdm_jax.training.optim import make_optimizer
    from predvdm_jax.training.train_state import abstract_train_state
    from predvdm_jax.training.train_step import make_train_step

    model = LatentDiffusion.from_config(config)
    mesh = mesh_lib.make_mesh(-1, 1)
    optimizer, schedule = make_optimizer(config)
    state, shardings = abstract_train_state(
        model.init_denoiser, optimizer, jax.random.PRNGKey(0), mesh
    )
    step = make_train_step(
        make_loss_fn(model, None),
        optimizer,
        config.train.ema_rate,
        mesh,
        shardings,
        mesh_lib.batch_sharding(mesh),
        lr_schedule=schedule,
        grad_accum_steps=config.train.grad_accum_steps,
    )
    return EngineStep(step, state, shardings, mesh, model, optimizer)


def time_call(
    fn, repeats: int = 5, warmup: int = 1, pipelined: bool = False, warmup_s: float = 0.0
) -> float:
    """Median seconds per call of ``fn()`` (which must block until its result is ready).

    ``pipelined``: the mean instead, of ``repeats`` calls dispatched back to back and waited
    for once at the end (``jax.block_until_ready`` of the last result), as a training loop
    keeps an accelerator busy. ``warmup_s``: keep warming up until that many seconds have
    passed (an H100's first bf16 train steps in a fresh process ran at 62 ms for 11 steps,
    then at 24 ms).
    """
    start = time.perf_counter()
    for i in itertools.count():
        if i >= warmup and time.perf_counter() - start >= warmup_s:
            break
        jax.block_until_ready(fn())
    if pipelined:
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / repeats
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(figure: str, value: float, unit: str, baseline: str, baseline_value: float) -> None:
    """Prints one result line that benchmarks/run_all.py collects into its table.

    The ratio is value / baseline_value (for rates, > 1 means faster than the baseline).
    """
    import json

    print(
        "RESULT\t"
        + json.dumps(
            dict(
                figure=figure,
                value=value,
                unit=unit,
                baseline=baseline,
                baseline_value=baseline_value,
                ratio=value / baseline_value if baseline_value else None,
                peak_rss_gb=peak_rss_gb(),
            )
        ),
        flush=True,
    )

"""Shared helpers for the benchmark scripts: hardware line, timing, peak memory."""

import platform
import time

import jax

from predvdm_jax.evaluation.report import peak_rss_gb


def hardware() -> str:
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"{platform.processor() or platform.machine()}, {jax.device_count()} × "
        f"{'/'.join(kinds)} ({jax.default_backend()}), jax {jax.__version__}"
    )


def time_call(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds per call of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


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

"""Shared helpers for the benchmark scripts: hardware line, timing, peak memory."""

import platform
import resource
import time

import jax


def hardware() -> str:
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"{platform.processor() or platform.machine()}, {jax.device_count()} × "
          f"{'/'.join(kinds)} ({jax.default_backend()}), jax {jax.__version__}")


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


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

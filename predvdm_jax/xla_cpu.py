"""How the model programs compile on the CPU.

XLA:CPU hands convolutions and matrix products to YNNPACK fusions by default. On this project's
2-core x86-64 (AVX-512) CPU, jax 0.10.2, its Eigen kernels ran the VQ and denoiser programs
faster (same process unless stated): the demo rollout 1.33× (alternated), VQ-f4 encode and decode
1.30× and 1.22×, the demo VQ train step (L1 + codebook loss) 1.4× (separate runs); the denoiser
train step did not change; I3D (its convolutions in the CPU form of ``models/i3d.Conv3d``) ran
0.81 against 0.97 s per 40-frame clip. Programs on other devices keep the default.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}  # YNNPACK fusions off


def jit(fn: Callable, **jit_kwargs: Any):
    """``jax.jit(fn, **jit_kwargs)``, compiled with :data:`CPU_COMPILER_OPTIONS` on the CPU."""
    options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(fn, compiler_options=options, **jit_kwargs)

"""How the model programs compile on the CPU.

XLA:CPU hands convolutions, matrix products and reductions to YNNPACK fusions by default. On
this project's 2-core x86-64 (AVX-512) CPU, jax 0.10.2, its Eigen kernels ran the VQ's and the
denoiser's convolutions faster: with every YNNPACK fusion off (same process unless stated) the
demo rollout ran 1.33× faster (alternated), VQ-f4 encode and decode 1.30× and 1.22×, the demo
VQ train step (L1 + codebook loss) 1.4× (separate runs), I3D (its convolutions in the CPU form
of ``models/i3d.Conv3d``) 0.81 against 0.97 s per 40-frame clip.

Reductions are the other way round. Without YNNPACK's reduce fusions XLA rewrites every large
reduction into a tree of reduce-windows, ten times slower: the sum and sum of squares of an
(8, 64, 64, 256) map took 15.7 ms instead of 1.46, a GroupNorm + SiLU 32 ms instead of 16, and
the sums were ten times less accurate (9.5e-7 against 9.8e-8 relative to float64). So the model
programs keep the reduce fusions and nothing else. Against all fusions off, in one process,
alternated: VQ-f4 encode and decode 1.08× and 1.09×, the demo train step 1.08×, the demo
rollout 1.05–1.1×; I3D unchanged. YNNPACK's reduce fusion can absorb a convolution whose only
consumer is the reduction (4 of the VQ decoder's 36 convolutions and dots, 4 of the demo
step's 214); adding YNNPACK's elementwise fusions as well made the VQ 1.3× slower again.
Programs on other devices keep the default.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
"""For programs that run once (the training state's initialisation): their random-number
code is large, and optimising it took most of their compile time, for nothing. The demo
denoiser's init compiled in 26–27 s, in 3.4–6 s with these (its ``create_train_state`` took
33 s, then 3.2 s), the same values to 1.5e-8."""


def jit(fn: Callable, *, run_once: bool = False, **jit_kwargs: Any):
    """``jax.jit(fn, **jit_kwargs)``, compiled with :data:`CPU_COMPILER_OPTIONS` on the CPU
    (``run_once``: with :data:`RUN_ONCE_COMPILER_OPTIONS` instead)."""
    options = None
    if jax.default_backend() == "cpu":
        options = RUN_ONCE_COMPILER_OPTIONS if run_once else CPU_COMPILER_OPTIONS
    return jax.jit(fn, compiler_options=options, **jit_kwargs)

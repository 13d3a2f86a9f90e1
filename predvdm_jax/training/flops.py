"""Model FLOPs of a function, and accelerators' bf16 peaks: the parts of an MFU.

FLOPs are counted from the jaxpr: 2 per multiply-add of every matrix product and
convolution, a convolution's taps on its padding and on the zeros a transposed (input
gradient) convolution inserts left out, as XLA's cost analysis counts them; a ``scan``
counts ``length`` times, a ``while`` loop once, a ``cond`` its costliest branch. Counted
from the program rather than taken from the compiled one, because XLA:GPU's own cost
analysis leaves out cuDNN's convolutions and attention, which are custom calls.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

# Dense bf16 peaks (datasheets), matched as prefixes of ``device.device_kind`` in this order.
PEAK_BF16_FLOPS = (
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H100", 989e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
)


def peak_bf16_flops(device_kind: str) -> float | None:
    """The dense bf16 peak of a device kind, or None when it is not in ``PEAK_BF16_FLOPS``."""
    return next((peak for prefix, peak in PEAK_BF16_FLOPS if device_kind.startswith(prefix)), None)


def matmul_flops(fn: Callable, *args: Any) -> float:
    """FLOPs of the matrix products and convolutions in ``fn(*args)`` (traced, not run). A jitted
    ``fn`` is traced as the top-level program it is (its compiler options cannot be nested)."""
    closed = fn.trace(*args).jaxpr if hasattr(fn, "trace") else jax.make_jaxpr(fn)(*args)
    return _jaxpr_flops(closed.jaxpr)


def _conv_flops(eqn) -> float:
    """2 × (output batch × output features) × input features per group × the (output
    position, kernel tap) pairs that land on a real input element, per spatial axis."""
    params = eqn.params
    lhs, rhs, out = (v.aval.shape for v in (*eqn.invars[:2], eqn.outvars[0]))
    numbers = params["dimension_numbers"]  # (batch, feature, *spatial) for lhs and out
    lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
    total = 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]]
    for axis in range(len(lhs_spec) - 2):
        total *= _valid_taps(
            size=lhs[lhs_spec[2 + axis]],
            window=rhs[rhs_spec[2 + axis]],
            outputs=out[out_spec[2 + axis]],
            stride=params["window_strides"][axis],
            pad_low=params["padding"][axis][0],
            lhs_dilation=params["lhs_dilation"][axis],
            rhs_dilation=params["rhs_dilation"][axis],
        )
    return total


def _valid_taps(size, window, outputs, stride, pad_low, lhs_dilation, rhs_dilation) -> int:
    """Pairs (output o, tap t) of one axis whose input position, o·stride − pad_low +
    t·rhs_dilation in the ``lhs_dilation``-dilated input, holds an input element."""
    position = (
        np.arange(outputs)[:, None] * stride - pad_low + np.arange(window)[None] * rhs_dilation
    )
    real = (position >= 0) & (position <= (size - 1) * lhs_dilation)
    return int(np.sum(real & (position % lhs_dilation == 0)))


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name, params = eqn.primitive.name, eqn.params
        if name == "dot_general":
            (contract, _), _ = params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        if name == "cond":
            total += max(_jaxpr_flops(branch.jaxpr) for branch in params["branches"])
            continue
        inner = [v for v in params.values() if hasattr(v, "jaxpr") or hasattr(v, "eqns")]
        inner += [
            b for v in params.values() if isinstance(v, tuple) for b in v if hasattr(b, "jaxpr")
        ]
        times = params.get("length", 1) if name == "scan" else 1
        for sub in inner:
            total += times * _jaxpr_flops(getattr(sub, "jaxpr", sub))
    return total

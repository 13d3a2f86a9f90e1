"""Reading tensor files: ``.safetensors`` with one clear error for a truncated or corrupt
file, and one error listing every key a file has wrong.

Shared by the checkpoint converters (``interop``) and the models that load their own
weights (``models/lpips.py``, ``models/i3d.py``), which do not import ``interop``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from flax import traverse_util


def read_safetensors(
    path: str | os.PathLike, remedy: str = "re-create it"
) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file's tensors as numpy arrays; a file that is not a complete
    safetensors file raises ``ValueError`` naming it and ``remedy``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(os.fspath(path)))
    except SafetensorError as err:
        raise ValueError(
            f"{os.fspath(path)} is not a complete safetensors file ({err}); {remedy}."
        ) from err


def check_keys(
    expected: Mapping[str, tuple[int, ...]],
    got: Mapping[str, Any],
    what: str = "checkpoint",
    max_listed: int = 20,
    hint: str = "Check that the model config matches the checkpoint.",
    fix: str | None = None,
) -> None:
    """Raise one ValueError listing missing, unexpected, wrong-shape and not floating-point
    keys (weights of another dtype, e.g. a file cast to int32, would predict garbage), then
    `hint`; `expected` maps key -> shape. A concrete `fix` (e.g. the flags that would fit) comes
    first instead, and the lists are cut to 3 keys each (the dtypes always are)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(np.shape(got[k]))}"
        for k in set(expected) & set(got)
        if tuple(np.shape(got[k])) != tuple(expected[k])
    )
    dtypes = {k: _dtype(got[k]) for k in set(expected) & set(got)}
    not_float = sorted(f"{k}: {d}" for k, d in dtypes.items() if not is_floating(d))
    if not (missing or unexpected or wrong or not_float):
        return
    if fix is not None:
        max_listed = 3

    def listing(title: str, items: list[str], limit: int) -> str:
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"{title} ({len(items)}): " + ", ".join(items[:limit]) + more

    parts = [
        listing(title, items, limit)
        for title, items, limit in (
            ("missing", missing, max_listed),
            ("unexpected", unexpected, max_listed),
            ("wrong shape", wrong, max_listed),
            ("not floating point", not_float, min(max_listed, 3)),
        )
        if items
    ]
    if fix is not None:
        raise ValueError(f"{what} does not match the model: {fix}. Keys: {'; '.join(parts)}.")
    raise ValueError(f"{what} does not match the model: {'; '.join(parts)}. {hint}")


def _dtype(value: Any) -> np.dtype:
    """``value``'s numpy dtype, without copying an array that has one (a jax array, a tracer)."""
    try:
        return np.dtype(value.dtype)
    except (AttributeError, TypeError):  # no dtype, or a torch one
        return np.asarray(value).dtype


def is_floating(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a floating-point one (numpy's, or ml_dtypes' bfloat16)."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def check_finite(tree: Any, what: str, fix: str, max_listed: int = 3) -> None:
    """A ``ValueError`` naming the tensors of ``tree`` (a nested mapping of host arrays) that
    hold NaN or Inf, e.g. the weights of a diverged run or a damaged file: they would predict
    black frames without a word."""
    bad = []
    for name, leaf in traverse_util.flatten_dict(dict(tree), sep="/").items():
        values = np.asarray(leaf)
        if is_floating(values.dtype):
            count = values.size - int(np.count_nonzero(np.isfinite(values)))
            if count:
                bad.append(f"{name} ({count} of {values.size} values)")
    if bad:
        more = f" (+{len(bad) - max_listed} more tensors)" if len(bad) > max_listed else ""
        raise ValueError(f"{what} hold NaN or Inf: {', '.join(bad[:max_listed])}{more}; {fix}")


def check_weights_setting(path: str | os.PathLike | None, setting: str, how: str) -> None:
    """An error when the config ``setting`` names weights that are not a file: a folder
    (``ValueError``) or nothing (``FileNotFoundError``), with ``how`` to make the file. Unset
    (None or empty) passes: the caller then reports the metric as unavailable, while a mistyped
    path is an error rather than a silently skipped metric."""
    if path is None or not os.fspath(path):
        return
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"weights {path!r} ({setting}) is a folder, not a file; {how}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights {path!r} ({setting}) not found; {how}")

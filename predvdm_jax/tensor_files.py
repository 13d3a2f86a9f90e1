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
    """Raise one ValueError listing missing, unexpected and wrong-shape keys, then `hint`;
    `expected` maps key -> shape. A concrete `fix` (e.g. the flags that would fit) comes first
    instead, and the lists are cut to 3 keys each."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(np.shape(got[k]))}"
        for k in set(expected) & set(got)
        if tuple(np.shape(got[k])) != tuple(expected[k])
    )
    if not (missing or unexpected or wrong):
        return
    if fix is not None:
        max_listed = 3

    def listing(title: str, items: list[str]) -> str:
        shown = items[:max_listed]
        more = f" (+{len(items) - max_listed} more)" if len(items) > max_listed else ""
        return f"{title} ({len(items)}): " + ", ".join(shown) + more

    parts = [
        listing(title, items)
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if items
    ]
    if fix is not None:
        raise ValueError(f"{what} does not match the model: {fix}. Keys: {'; '.join(parts)}.")
    raise ValueError(f"{what} does not match the model: {'; '.join(parts)}. {hint}")


def check_finite(tree: Any, what: str, fix: str, max_listed: int = 3) -> None:
    """A ``ValueError`` naming the tensors of ``tree`` (a nested mapping of host arrays) that
    hold NaN or Inf, e.g. the weights of a diverged run or a damaged file: they would predict
    black frames without a word."""
    bad = []
    for name, leaf in traverse_util.flatten_dict(dict(tree), sep="/").items():
        values = np.asarray(leaf)
        if values.dtype.kind == "f" or values.dtype.name == "bfloat16":
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

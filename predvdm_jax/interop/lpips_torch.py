"""Convert PyTorch LPIPS-AlexNet weights into the Flax params of `models.lpips`.

Two sources, as the `lpips` package uses them:
- the AlexNet trunk: torchvision's ImageNet state_dict (`alexnet-owt-7be5be79.pth`,
  keys `features.{0,3,6,8,10}.{weight,bias}`; `classifier.*` is ignored), or a
  full `lpips.LPIPS` state_dict (keys `net.slice{k}.{i}.{weight,bias}`);
- the linear heads: the `lpips` package's `weights/v0.1/alex.pth`
  (keys `lin{k}.model.1.weight`, shape (1, C, 1, 1)).
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Mapping

import numpy as np

from predvdm_jax.interop import torch_checkpoint
from predvdm_jax.models.lpips import LPIPS_PARAM_SHAPES
from predvdm_jax.tensor_files import check_keys

_TORCHVISION_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")
_LPIPS_TRUNK_KEY = re.compile(r"^net\.slice\d\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^lin(\d)\.model\.1\.weight$")
_FLAX_LEAF = {"weight": "kernel", "bias": "bias"}
_SOURCE_KEY = {
    **{
        f"net/features_{layer}/{flax_leaf}": f"features.{layer}.{torch_leaf}"
        for layer in (0, 3, 6, 8, 10)
        for torch_leaf, flax_leaf in _FLAX_LEAF.items()
    },
    **{f"lin{k}/kernel": f"lin{k}.model.1.weight" for k in range(5)},
}


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Flax conv kernel shape (H, W, I, O) -> PyTorch (O, I, H, W); a bias shape is unchanged."""
    if len(flax_shape) != 4:
        return flax_shape
    height, width, cin, cout = flax_shape
    return (cout, cin, height, width)


_SOURCE_SHAPES = {
    source: _torch_shape(LPIPS_PARAM_SHAPES[key]) for key, source in _SOURCE_KEY.items()
}


def find_lpips_heads_file(version: str = "0.1") -> str | None:
    """Path of `weights/v{version}/alex.pth` inside an installed `lpips` package, or None.

    Located without importing `lpips` (its import needs torchvision).
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        candidate = os.path.join(directory, "weights", f"v{version}", "alex.pth")
        if os.path.isfile(candidate):
            return candidate
    return None


def convert_lpips_state_dicts(
    trunk_state_dict: Mapping[str, np.ndarray], heads_state_dict: Mapping[str, np.ndarray]
) -> dict:
    """Flax params tree (numpy) from the trunk and heads state_dicts (they may be the same dict).

    Missing keys and wrong shapes are reported together, under torchvision / lpips key names.
    """
    source: dict[str, np.ndarray] = {}
    for key, value in trunk_state_dict.items():
        match = _TORCHVISION_KEY.match(key) or _LPIPS_TRUNK_KEY.match(key)
        if match is not None:
            layer, leaf = match.groups()
            source[f"features.{layer}.{leaf}"] = np.asarray(value, np.float32)
    for key, value in heads_state_dict.items():
        if _HEAD_KEY.match(key) is not None:
            source[key] = np.asarray(value, np.float32)
    check_keys(
        _SOURCE_SHAPES,
        source,
        what="LPIPS-AlexNet weights (trunk + linear heads)",
        hint="The trunk must be torchvision's AlexNet state_dict (features.*) or an lpips.LPIPS "
        "one (net.slice*), and the heads the lpips package's weights/v0.1/alex.pth "
        "(lin*.model.1.weight).",
    )
    flat = {
        key: torch_checkpoint.conv_kernel_to_flax(source[name])
        if key.endswith("kernel")
        else source[name]
        for key, name in _SOURCE_KEY.items()
    }
    return torch_checkpoint.unflatten_params(flat)


LPIPS_METADATA_KIND = {"model": "lpips-alexnet"}  # the metadata of convert_lpips_files' output


def convert_lpips_files(
    trunk_path: str | os.PathLike,
    heads_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
) -> dict:
    """Read both PyTorch files, convert, and write the params as safetensors (atomically); returns
    the params. ``allow_pickle``: as in ``torch_checkpoint.load_torch_state_dict`` (trusted
    files only). ``output_path`` must pass ``torch_checkpoint.check_output_file`` (checked
    before anything is read)."""
    torch_checkpoint.check_output_file(output_path, LPIPS_METADATA_KIND, "LPIPS weights")
    trunk = torch_checkpoint.load_torch_state_dict(trunk_path, allow_pickle=allow_pickle)
    heads = (
        trunk
        if os.fspath(heads_path) == os.fspath(trunk_path)
        else torch_checkpoint.load_torch_state_dict(heads_path, allow_pickle=allow_pickle)
    )
    params = convert_lpips_state_dicts(trunk, heads)
    torch_checkpoint.save_params_safetensors(
        output_path, params, metadata={**LPIPS_METADATA_KIND, "lpips_version": "0.1"}
    )
    return params

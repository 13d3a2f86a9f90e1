"""Convert PyTorch LPIPS-AlexNet or LPIPS-VGG16 weights into the Flax params of `models.lpips`.

Two sources, as the `lpips` package (and taming-transformers' VGG16 `LPIPS`) uses them:
- the trunk: torchvision's ImageNet state_dict (`alexnet-owt-7be5be79.pth` or
  `vgg16-397923af.pth`, keys `features.{i}.{weight,bias}`; `classifier.*` is ignored), or a
  full `lpips.LPIPS` / taming `LPIPS` state_dict (keys `net.slice{k}.{i}.{weight,bias}`,
  where `i` is torchvision's index);
- the linear heads: the `lpips` package's `weights/v0.1/alex.pth` or `vgg.pth` (taming's
  `vgg.pth` is the same file), keys `lin{k}.model.1.weight`, shape (1, C, 1, 1).
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Mapping

import numpy as np

from predvdm_jax.interop import torch_checkpoint
from predvdm_jax.models.lpips import ALEXNET, PARAM_SHAPES, TRUNK_NAMES, VGG16
from predvdm_jax.tensor_files import check_finite, check_keys

_TORCHVISION_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")
_LPIPS_TRUNK_KEY = re.compile(r"^net\.slice\d\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^lin(\d)\.model\.1\.weight$")
_FLAX_LEAF = {"weight": "kernel", "bias": "bias"}


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Flax conv kernel shape (H, W, I, O) -> PyTorch (O, I, H, W); a bias shape is unchanged."""
    if len(flax_shape) != 4:
        return flax_shape
    height, width, cin, cout = flax_shape
    return (cout, cin, height, width)


def _source_key(flax_key: str) -> str:
    """`net/features_3/kernel` -> `features.3.weight`; `lin2/kernel` -> `lin2.model.1.weight`."""
    if flax_key.startswith("lin"):
        return f"{flax_key.split('/')[0]}.model.1.weight"
    _, layer, leaf = flax_key.split("/")
    torch_leaf = next(t for t, f in _FLAX_LEAF.items() if f == leaf)
    return f"features.{layer.removeprefix('features_')}.{torch_leaf}"


_SOURCE_KEYS = {
    trunk: {key: _source_key(key) for key in shapes} for trunk, shapes in PARAM_SHAPES.items()
}
_SOURCE_SHAPES = {
    trunk: {_SOURCE_KEYS[trunk][key]: _torch_shape(shape) for key, shape in shapes.items()}
    for trunk, shapes in PARAM_SHAPES.items()
}
LPIPS_HEADS_NAMES = {ALEXNET: "alex", VGG16: "vgg"}  # the lpips package's weights/v0.1/{name}.pth


def find_lpips_heads_file(version: str = "0.1", trunk: str = ALEXNET) -> str | None:
    """Path of `weights/v{version}/alex.pth` (`vgg.pth` for `VGG16`) inside an installed `lpips`
    package, or None.

    Located without importing `lpips` (its import needs torchvision).
    """
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        candidate = os.path.join(
            directory, "weights", f"v{version}", f"{LPIPS_HEADS_NAMES[trunk]}.pth"
        )
        if os.path.isfile(candidate):
            return candidate
    return None


def convert_lpips_state_dicts(
    trunk_state_dict: Mapping[str, np.ndarray],
    heads_state_dict: Mapping[str, np.ndarray],
    trunk: str = ALEXNET,
) -> dict:
    """Flax params tree (numpy) of `trunk` (`ALEXNET` or `VGG16`) from the trunk and heads
    state_dicts (they may be the same dict).

    Missing keys and wrong shapes are reported together, under torchvision / lpips key names.
    """
    if trunk not in PARAM_SHAPES:
        raise ValueError(f"unknown LPIPS trunk {trunk!r}; pick one of {sorted(PARAM_SHAPES)}.")
    source: dict[str, np.ndarray] = {}
    for key, value in trunk_state_dict.items():
        match = _TORCHVISION_KEY.match(key) or _LPIPS_TRUNK_KEY.match(key)
        if match is not None:
            layer, leaf = match.groups()
            source[f"features.{layer}.{leaf}"] = np.asarray(value)
    for key, value in heads_state_dict.items():
        if _HEAD_KEY.match(key) is not None:
            source[key] = np.asarray(value)
    torchvision_name = TRUNK_NAMES[trunk].removeprefix("LPIPS-")
    check_keys(
        _SOURCE_SHAPES[trunk],
        source,
        what=f"{TRUNK_NAMES[trunk]} weights (trunk + linear heads)",
        hint=f"The trunk must be torchvision's {torchvision_name} state_dict (features.*) or an "
        "lpips.LPIPS one (net.slice*), and the heads the lpips package's "
        f"weights/v0.1/{LPIPS_HEADS_NAMES[trunk]}.pth (lin*.model.1.weight).",
    )
    source = {key: value.astype(np.float32) for key, value in source.items()}
    flat = {
        key: torch_checkpoint.conv_kernel_to_flax(source[name])
        if key.endswith("kernel")
        else source[name]
        for key, name in _SOURCE_KEYS[trunk].items()
    }
    return torch_checkpoint.unflatten_params(flat)


# The metadata of convert_lpips_files' output, by trunk (an output only replaces one of its kind).
LPIPS_METADATA_KINDS = {ALEXNET: {"model": "lpips-alexnet"}, VGG16: {"model": "lpips-vgg16"}}


def convert_lpips_files(
    trunk_path: str | os.PathLike,
    heads_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    trunk: str = ALEXNET,
    allow_pickle: bool = False,
) -> dict:
    """Read both PyTorch files, convert (``trunk``: ``ALEXNET`` or ``VGG16``), and write the params
    as safetensors (atomically); returns the params. ``allow_pickle``: as in
    ``torch_checkpoint.load_torch_state_dict`` (trusted files only). ``output_path`` must pass
    ``torch_checkpoint.check_output_file`` (checked before anything is read); weights holding
    NaN or Inf are refused before it is written."""
    kind = LPIPS_METADATA_KINDS[trunk]
    torch_checkpoint.check_output_file(output_path, kind, f"{TRUNK_NAMES[trunk]} weights")
    trunk_state_dict = torch_checkpoint.load_torch_state_dict(trunk_path, allow_pickle=allow_pickle)
    heads = (
        trunk_state_dict
        if os.fspath(heads_path) == os.fspath(trunk_path)
        else torch_checkpoint.load_torch_state_dict(heads_path, allow_pickle=allow_pickle)
    )
    params = convert_lpips_state_dicts(trunk_state_dict, heads, trunk)
    check_finite(
        params,
        f"{TRUNK_NAMES[trunk]} weights in {os.fspath(trunk_path)}"
        + ("" if heads is trunk_state_dict else f" and {os.fspath(heads_path)}"),
        "they are damaged: download or copy them again (nothing was written)",
    )
    torch_checkpoint.save_params_safetensors(
        output_path, params, metadata={**kind, "lpips_version": "0.1"}
    )
    return params

"""Generic helpers to import PyTorch checkpoints into Flax param trees.

A PyTorch checkpoint is read into a flat `{torch_key: np.ndarray}` dict (the "state dict"); model-specific
converters (`ldm_vq`, UNet, LPIPS, I3D) then select a prefix, rename keys and change weight layouts with the
functions here, and validate with `tensor_files.check_keys`. Flattened Flax params use "/"-joined paths
(`encoder/conv_in/kernel`).

Layouts: PyTorch convs are (O, I, *spatial); Flax convs are (*spatial, I, O). PyTorch Linear is (out, in);
Flax Dense is (in, out).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util

from predvdm_jax import atomic_io, folders
from predvdm_jax.tensor_files import read_safetensors

StateDict = dict[str, np.ndarray]

_TORCH_MISSING = "PyTorch is needed to read .ckpt/.pt/.pth checkpoints: pip install -e '.[torch]' (or pip install torch)."


def import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(_TORCH_MISSING) from err
    return torch


def _tensor_to_numpy(value: Any, torch) -> np.ndarray:
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.numpy()


def load_torch_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> StateDict:
    """Read a checkpoint file into a flat `{key: np.ndarray}` dict.

    Accepts a Lightning checkpoint (`{'state_dict': {...}, ...}`), a bare state_dict, or a
    `.safetensors` file of PyTorch names (read without PyTorch; a file of '/'-joined Flax
    paths, a converter's own output, is refused as already converted). Non-tensor entries are
    dropped. By default the pickle is read with
    `weights_only=True`; a checkpoint that pickles arbitrary Python objects (old Lightning callbacks,
    OmegaConf configs) needs `allow_pickle=True`, which runs code from the file — only for trusted files.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(
            f"checkpoint {path!r} is a folder; pass the checkpoint file itself "
            "(e.g. model.ckpt, a .pt/.pth state_dict or a .safetensors file)"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        state_dict = read_safetensors(path)
        if state_dict and all("/" in key for key in state_dict):
            raise ValueError(
                f"{path} already holds converted Flax params (keys such as "
                f"{min(state_dict)!r}), not a PyTorch state_dict; use it as it is where Flax "
                "params are expected, and give the converter the original PyTorch checkpoint"
            )
        return state_dict
    torch = import_torch()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        damage = _damage(path, err)
        if damage is not None:
            raise ValueError(
                f"could not read {path}: the file is damaged or not a PyTorch checkpoint "
                f"({damage}); download or copy it again"
            ) from err
        if allow_pickle:
            detail = " ".join(str(err).split())
            raise ValueError(f"could not read PyTorch checkpoint {path}: {detail}") from err
        raise ValueError(
            f"could not read {path} with weights_only=True ({type(err).__name__}); if the file is from a source "
            "you trust, load it with allow_pickle=True (scripts: --allow_pickle)."
        ) from err
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a state_dict or a Lightning checkpoint."
        )
    return {
        str(k): _tensor_to_numpy(v, torch)
        for k, v in checkpoint.items()
        if isinstance(v, torch.Tensor)
    }


def _damage(path: str, err: Exception) -> str | None:
    """Why ``path`` cannot be a readable PyTorch checkpoint (truncated, not a zip archive nor a
    pickle, a zip archive without a pickle), or None when it looks like one, so ``err`` may be
    ``weights_only`` refusing the Python objects it pickles."""
    message = str(err)
    if isinstance(err, EOFError) or "truncated" in message or "Ran out of input" in message:
        return f"it ends too early ({type(err).__name__}): truncated"
    if "magic number" in message:
        return "a pickle without the header of torch.save"
    if "PytorchStreamReader" in message or "zip archive" in message:
        return "a broken zip archive: truncated or overwritten"
    with open(path, "rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    return "a zip archive without the data.pkl of torch.save"
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as zip_err:
            return f"a broken zip archive ({zip_err})"
        return None if broken is None else f"a zip archive whose entry {broken} is corrupt"
    if head.startswith(b"PK"):
        return "a broken zip archive: truncated or overwritten"
    if not head.startswith(b"\x80"):  # every torch.save pickle (protocol 2+) starts with PROTO
        return "neither a zip archive nor a pickle"
    if not isinstance(err, pickle.UnpicklingError):  # weights_only refuses with this one alone
        return f"a broken pickle ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
    return None


def select_prefix(
    state_dict: Mapping[str, np.ndarray], prefix: str, strip: bool = True
) -> StateDict:
    """Keys starting with `prefix` (e.g. 'first_stage_model.'), with the prefix removed when `strip`."""
    return {
        (k[len(prefix) :] if strip else k): v for k, v in state_dict.items() if k.startswith(prefix)
    }


def drop_prefixes(state_dict: Mapping[str, np.ndarray], prefixes: Iterable[str]) -> StateDict:
    """All keys except those starting with any of `prefixes` (e.g. ('loss.',))."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def has_prefix(state_dict: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state_dict)


def conv_kernel_to_flax(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (O, I, *spatial) -> Flax kernel (*spatial, I, O); works for 1D, 2D and 3D."""
    weight = np.asarray(weight)
    spatial = tuple(range(2, weight.ndim))
    return np.transpose(weight, spatial + (1, 0))


def conv_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
    """Flax kernel (*spatial, I, O) -> PyTorch conv weight (O, I, *spatial)."""
    kernel = np.asarray(kernel)
    n = kernel.ndim
    return np.transpose(kernel, (n - 1, n - 2) + tuple(range(n - 2)))


def conv_kernel_to_ohwi(weight: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (O, I, *spatial) -> output-major kernel (O, *spatial, I)."""
    return np.moveaxis(np.asarray(weight), 1, -1)


def ohwi_to_conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """Output-major kernel (O, *spatial, I) -> PyTorch conv weight (O, I, *spatial)."""
    return np.moveaxis(np.asarray(kernel), -1, 1)


def linear_to_dense(weight: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return np.asarray(weight).T


def conv1x1_to_dense(weight: np.ndarray) -> np.ndarray:
    """PyTorch 1x1 conv weight (O, I, 1) or (O, I, 1, 1) -> Flax Dense kernel (I, O)."""
    weight = np.asarray(weight)
    if weight.ndim < 2 or any(s != 1 for s in weight.shape[2:]):
        raise ValueError(
            f"conv1x1_to_dense expects an (O, I, 1[, 1]) weight; got shape {weight.shape}."
        )
    return weight.reshape(weight.shape[:2]).T


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Nested param tree -> {'a/b/kernel': array}."""
    return traverse_util.flatten_dict(params, sep="/")


def unflatten_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/kernel': array} -> nested param tree."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def save_params_safetensors(
    path: str | os.PathLike, params: Mapping[str, Any], metadata: dict[str, str] | None = None
) -> None:
    """Write a param tree as safetensors with '/'-joined keys (atomically)."""
    from safetensors.numpy import save_file

    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flatten_params(params).items()}
    atomic_io.write_file(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def check_output_file(path: str | os.PathLike, kind: Mapping[str, str], what: str) -> None:
    """A ``ValueError`` unless a converter may write its params to ``path``, before any work.

    The rule: ``path`` must not be a folder, lie under a file or inside an inference bundle
    (a folder with ``config.json`` and ``denoiser.safetensors``, written whole by
    scripts/export.py), and an existing file there is only replaced when it is a safetensors
    file of the same kind (its metadata holds ``kind``, e.g. ``{"format": "flax/vq"}``), i.e.
    an earlier output of the same converter.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(
            f"output {path!r} is a folder; name the .safetensors file to write, e.g. "
            f"{os.path.join(path, 'params.safetensors')}"
        )
    parent = os.path.dirname(os.path.abspath(path))
    existing = atomic_io.file_in_the_way(parent)
    if existing is not None:
        raise ValueError(
            f"cannot write {path!r}: {existing!r} is a file, not a folder; pick another output path"
        )
    if folders.is_bundle(parent):
        raise ValueError(
            f"refusing to write {path!r}: {parent!r} is an inference bundle (it holds "
            f"{folders.CONFIG_FILE} and {folders.DENOISER_FILE}), written whole by "
            "scripts/export.py; pass an output path outside the bundle"
        )
    if os.path.lexists(path):
        metadata = None
        try:
            from safetensors import safe_open

            with safe_open(path, "numpy") as f:
                metadata = f.metadata() or {}
        except Exception:  # not a safetensors file at all
            pass
        if metadata is None or any(metadata.get(k) != v for k, v in kind.items()):
            raise ValueError(
                f"refusing to overwrite {path!r}: an existing file is only replaced when it is "
                f"a safetensors file of {what} written by this converter, and this one is not; "
                "delete it first or pass a new path"
            )


def state_dict_format(path: str | os.PathLike) -> str:
    """``'safetensors'`` or ``'torch'`` by the file's suffix, or a ValueError naming the choices."""
    suffix = os.path.splitext(os.fspath(path))[1]
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".ckpt", ".pt", ".pth"):
        return "torch"
    raise ValueError(
        f"cannot tell the format of {os.fspath(path)!r}: name it .ckpt, .pt or .pth (PyTorch, "
        f"a Lightning checkpoint's layout) or .safetensors"
    )


# The keys every Lightning checkpoint has (``extra`` may override them). Lightning >= 1.8
# migrates a file by its version on load, reading ``epoch`` and ``global_step`` (a ``KeyError``
# without them). 1.6.5 is the first version whose files need no loop-state migration: one
# from an earlier version gets a fit loop only, and ``trainer.test`` then fails on the
# missing test loop.
LIGHTNING_KEYS = {"pytorch-lightning_version": "1.6.5", "epoch": 0, "global_step": 0}


def save_torch_state_dict(
    path: str | os.PathLike,
    state_dict: Mapping[str, np.ndarray],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a PyTorch state_dict (atomically): ``.safetensors`` holds the tensors (no PyTorch
    needed) with ``extra`` as string metadata (JSON for non-strings); ``.ckpt`` / ``.pt`` /
    ``.pth`` is ``torch.save({'state_dict': ..., **extra})``, the layout of a Lightning
    checkpoint with its ``LIGHTNING_KEYS``, which Lightning's ``trainer.test(ckpt_path=...)``
    and ``load_from_checkpoint`` read."""
    arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}  # keeps 0-d buffers 0-d
    if state_dict_format(path) == "safetensors":
        from safetensors.numpy import save_file

        metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()}
        atomic_io.write_file(path, lambda tmp: save_file(arrays, tmp, metadata=metadata or None))
    else:
        torch = import_torch()
        tensors = {k: torch.tensor(v) for k, v in arrays.items()}  # copies: arrays may be read-only
        atomic_io.write_file(
            path,
            lambda tmp: torch.save(
                {"state_dict": tensors, **LIGHTNING_KEYS, **(extra or {})},
                tmp,
            ),
        )


def load_params_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by `save_params_safetensors` back into a nested tree of numpy arrays."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"params file {path!r} is a folder; pass the .safetensors file itself")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"params file not found: {path}")
    return unflatten_params(read_safetensors(path))

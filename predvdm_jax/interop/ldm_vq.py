"""Import / export the LDM VQ-f4 first stage (spec §B, Appendix 2) between PyTorch and Flax.

The Flax `VQModel` mirrors the PyTorch names, so the conversion is a rename plus a layout change:
`encoder.down.0.block.1.conv1.weight` (O, I, 3, 3) <-> `encoder/down_0/block_1/conv1/kernel` (3, 3, I, O);
GroupNorm `weight` <-> `scale`; `quantize.embedding.weight` <-> `quantize/embedding`. `mid.block_1` and
`mid.attn_1` keep their names.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from predvdm_jax.interop import torch_checkpoint as tc
from predvdm_jax.models.autoencoder import VQModel, vq_model
from predvdm_jax.tensor_files import check_finite, check_keys

FIRST_STAGE_PREFIX = "first_stage_model."
IGNORED_PREFIXES = ("loss.",)
# The metadata kind of every VQ params file (this converter's output, a bundle's vq.safetensors,
# the VQ trainer's export): an existing converter output is only replaced when it holds this.
VQ_METADATA_KIND = {"format": "flax/vq"}

_INDEXED_CONTAINERS = ("down", "up", "block", "attn")
_FLAX_INDEXED = re.compile(r"^(down|up|block|attn)_(\d+)$")


def make_vq_model(config: Any = None) -> VQModel:
    """A VQModel from None (VQ-f4 defaults), a VQModel, a flat mapping of VQModel fields, or an LDM-style
    mapping `{embed_dim, n_embed, ddconfig: {...}, ...}` (other LDM keys such as lossconfig are ignored)."""
    if config is None:
        return VQModel()
    if isinstance(config, VQModel):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(f"VQ config must be a mapping or a VQModel; got {type(config).__name__}.")
    config = dict(config)
    if "ddconfig" in config:
        kwargs = dict(config["ddconfig"])
        for key in ("embed_dim", "n_embed"):
            if key in config:
                kwargs[key] = config[key]
    else:
        kwargs = config
    return vq_model(kwargs)


def torch_key_to_flax_path(key: str, ndim: int) -> tuple[str, ...]:
    """'encoder.down.0.block.1.conv1.weight' -> ('encoder', 'down_0', 'block_1', 'conv1', 'kernel').

    `ndim` is the tensor's rank: rank-1 `weight`s are GroupNorm scales, others conv kernels.
    """
    if key == "quantize.embedding.weight":
        return ("quantize", "embedding")
    parts = key.split(".")
    path: list[str] = []
    i = 0
    while i < len(parts) - 1:
        part = parts[i]
        if part in _INDEXED_CONTAINERS and i + 1 < len(parts) - 1 and parts[i + 1].isdigit():
            path.append(f"{part}_{parts[i + 1]}")
            i += 2
        else:
            path.append(part)
            i += 1
    leaf = parts[-1]
    if leaf == "weight":
        leaf = "kernel" if ndim > 1 else "scale"
    return tuple(path) + (leaf,)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
    """Inverse of `torch_key_to_flax_path`."""
    if tuple(path) == ("quantize", "embedding"):
        return "quantize.embedding.weight"
    parts: list[str] = []
    for i, name in enumerate(path):
        match = _FLAX_INDEXED.match(name)
        parent = path[i - 1] if i else ""
        if i == len(path) - 1 and name in ("kernel", "scale"):
            parts.append("weight")
        elif match and parent != "mid":
            parts.extend(match.groups())
        else:
            parts.append(name)
    return ".".join(parts)


def _torch_shape(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":
        n = len(flax_shape)
        return (flax_shape[n - 1], flax_shape[n - 2]) + tuple(flax_shape[: n - 2])
    return tuple(flax_shape)


def expected_torch_shapes(model: VQModel) -> dict[str, tuple[int, ...]]:
    """{torch_key: OIHW shape} for every parameter of `model` (traced with eval_shape; nothing allocated)."""
    f = model.downsample_factor
    dummy = jax.ShapeDtypeStruct((1, f, f, model.in_channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), dummy)["params"]
    flat = {tuple(k.split("/")): v.shape for k, v in tc.flatten_params(shapes).items()}
    return {flax_path_to_torch_key(path): _torch_shape(path, shape) for path, shape in flat.items()}


def select_vq_keys(state_dict: Mapping[str, np.ndarray]) -> tc.StateDict:
    """The VQ part of a checkpoint: `first_stage_model.*` of a PredVDM/LDM checkpoint (the duplicate
    `cond_stage_model.*` and the UNet are ignored), or a bare VQ state_dict without its `loss.*` keys."""
    if tc.has_prefix(state_dict, FIRST_STAGE_PREFIX):
        return tc.select_prefix(state_dict, FIRST_STAGE_PREFIX)
    return tc.drop_prefixes(state_dict, IGNORED_PREFIXES)


def convert_vq_state_dict(
    state_dict: Mapping[str, np.ndarray], config: Any = None
) -> dict[str, Any]:
    """PyTorch VQModel state_dict -> Flax params tree (float32 numpy) for `make_vq_model(config)`.

    Use as `model.apply({'params': params}, x)`. Raises one ValueError listing every missing,
    unexpected or wrong-shape key (PyTorch names) when the checkpoint and config disagree.
    """
    model = make_vq_model(config)
    state_dict = select_vq_keys(state_dict)
    hint = (
        "No config was given, so the LDM VQ-f4 defaults were assumed: pass the model's config "
        "(--config=..., its vq section) for another VQ."
        if config is None
        else "Check that the config's vq section matches the checkpoint."
    )
    check_keys(expected_torch_shapes(model), state_dict, what="VQ state_dict", hint=hint)
    flat: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        value = np.asarray(value, dtype=np.float32)
        path = torch_key_to_flax_path(key, value.ndim)
        if path[-1] == "kernel":
            value = tc.conv_kernel_to_flax(value)
        flat["/".join(path)] = np.ascontiguousarray(value)
    return tc.unflatten_params(flat)


def vq_params_to_state_dict(params: Mapping[str, Any]) -> tc.StateDict:
    """Flax VQModel params -> PyTorch state_dict layout (numpy, OIHW), e.g. for export to LDM."""
    out: tc.StateDict = {}
    for name, value in tc.flatten_params(params).items():
        path = tuple(name.split("/"))
        value = np.asarray(value)
        if path[-1] == "kernel":
            value = tc.conv_kernel_to_torch(value)
        out[flax_path_to_torch_key(path)] = np.ascontiguousarray(value)
    return out


def load_vq_checkpoint(
    path: str | os.PathLike, config: Any = None, *, allow_pickle: bool = False
) -> dict[str, Any]:
    """Read an LDM `model.ckpt` / PredVDM checkpoint / bare state_dict file and convert it to Flax params."""
    return convert_vq_state_dict(tc.load_torch_state_dict(path, allow_pickle=allow_pickle), config)


def convert_vq_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    vq_config: Any = None,
    *,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Convert a VQ checkpoint file (as `load_vq_checkpoint`) and write its Flax params to ``out``
    as safetensors (atomically), metadata ``VQ_METADATA_KIND`` plus ``source``. ``out`` must pass
    ``torch_checkpoint.check_output_file`` (checked before anything is read); ``vq_config`` as
    in `make_vq_model`; weights holding NaN or Inf are refused before ``out`` is written.
    Returns ``{"params": ..., "num_params": int}``."""
    tc.check_output_file(out, VQ_METADATA_KIND, "VQ params")
    params = load_vq_checkpoint(ckpt, vq_config, allow_pickle=allow_pickle)
    check_finite(
        params,
        f"the VQ weights in {os.fspath(ckpt)}",
        "the checkpoint is damaged or its run diverged: convert another one (nothing was written)",
    )
    tc.save_params_safetensors(
        out, params, metadata={"source": os.fspath(ckpt), **VQ_METADATA_KIND}
    )
    num_params = sum(v.size for v in tc.flatten_params(params).values())
    return {"params": params, "num_params": int(num_params)}

"""Params checked against the model a config builds: VQ params files (``config.vq_params``:
made by ``scripts/train_vq.py`` or ``scripts/convert_ldm_vq.py``) before training, encoding,
export or the demo use them, and a bundle's params against its ``config.json``."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import jax
import ml_collections
from flax import linen as nn

from predvdm_jax import config as config_lib
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop.torch_checkpoint import flatten_params, load_params_safetensors
from predvdm_jax.tensor_files import check_finite, check_keys, check_weights_setting


RECORDED_DATA_FIELDS = ("image_size", "channels")
"""The ``data`` fields ``scripts/train_vq.py`` records in its VQ params file, beside ``vq``."""


def with_recorded_vq(
    config: ml_collections.ConfigDict, path: str, given: Iterable[str]
) -> ml_collections.ConfigDict:
    """``config`` with the VQ architecture (``vq``) and frames (``RECORDED_DATA_FIELDS``) that
    ``scripts/train_vq.py`` recorded in the VQ params file ``path``, except the fields in
    ``given`` (command-line overrides, which win). A file that records none (a converted LDM
    vq-f4) leaves ``config`` as it is, as does a path that is no safetensors file (loading
    it names the problem)."""
    given = set(given)
    kept = {
        field: value
        for field, value in recorded_fields(path, config).items()
        if field not in given and field.split(".")[0] not in given
    }
    return config_lib.with_overrides(config, kept, validated=False)


def recorded_fields(path: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"vq.ch": 32, "data.image_size": 16, ...}``: the fields of ``config``'s schema that
    ``scripts/train_vq.py`` recorded in the VQ params file ``path`` (none for another file)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "numpy") as f:
            metadata = f.metadata() or {}
    except Exception:
        return {}
    return {
        f"{section}.{name}": tuple(value) if isinstance(value, list) else value
        for section in ("vq", "data")
        for name, value in json.loads(metadata.get(section, "{}")).items()
        if (section == "vq" or name in RECORDED_DATA_FIELDS) and name in config[section]
    }


def load_vq_params(
    path: str, config: ml_collections.ConfigDict | None = None, setting: str = "config.vq_params"
) -> Any:
    """The VQ params in ``path``; with ``config``, a ``ValueError`` listing every key whose
    presence, shape or floating-point dtype differs from the params of ``config``'s VQ; weights
    holding NaN or Inf are a ``ValueError`` too. ``setting``: the config field or flag that gave
    ``path``, which the errors name."""
    if not path:
        raise FileNotFoundError(
            f"{setting} is empty: point it at VQ params made by "
            "scripts/train_vq.py or scripts/convert_ldm_vq.py."
        )
    make = (
        "train them with scripts/train_vq.py or convert the LDM vq-f4 checkpoint with "
        "scripts/convert_ldm_vq.py"
    )
    check_weights_setting(path, setting, make)
    convert = (
        f"convert it with scripts/convert_ldm_vq.py --ckpt={path} --out=vq.safetensors and set "
        f"{setting} to the output"
    )
    if path.endswith((".ckpt", ".pt", ".pth")):
        raise ValueError(f"VQ params {path!r} is a PyTorch checkpoint, not Flax params; {convert}")
    params = load_params_safetensors(path)
    if not any("/" in key for key in flatten_params(params)):
        raise ValueError(f"VQ params {path!r} hold PyTorch names, not Flax params; {convert}")
    if config is not None:
        differing = {
            field: value
            for field, value in recorded_fields(path, config).items()
            if field.startswith("vq.") and config_lib.field_value(config, field) != value
        }
        fix = None
        if differing:
            fix = (
                f"the file records the VQ it was trained with: set "
                f"{' '.join(f'--config.{f}={_flag_value(v)}' for f, v in differing.items())}"
            )
        check_params(
            params,
            LatentDiffusion.from_config(config).init_vq,
            f"VQ params {path!r} (config.vq)",
            hint=f"Check that config.vq matches the file, or re-create it: {make}.",
            fix=fix,
        )
    check_finite(
        params,
        f"VQ params {path!r} ({setting})",
        f"the file is damaged or its training diverged: point {setting} at other VQ params "
        f"({make})",
    )
    return params


def _flag_value(value: Any) -> str:
    """A config value as ``--config.x=`` takes it (tuples as ``1,2,4``)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def check_params(
    params: Any,
    init: Callable[[jax.Array], Any],
    what: str,
    hint: str = "Check that the model config matches the checkpoint.",
    fix: str | None = None,
) -> None:
    """A ``ValueError`` listing every key whose presence or shape in ``params`` differs from the
    params ``init(key)`` makes (unboxed; traced with ``jax.eval_shape``: nothing is computed), or
    that is not floating point; a concrete ``fix`` comes first, before a short sample of the keys
    (``check_keys``)."""
    expected = flatten_params(nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0))))
    check_keys(
        {k: v.shape for k, v in expected.items()},
        flatten_params(params),
        what=what,
        hint=hint,
        fix=fix,
    )

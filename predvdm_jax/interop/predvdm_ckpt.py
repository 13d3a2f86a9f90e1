"""PredVDM / LDM Lightning checkpoints to and from this project's params.

``bundle_from_predvdm_checkpoint`` makes a bundle of a checkpoint the PyTorch original
trained; ``write_latent_diffusion_checkpoint`` writes a training run's state back in its layout
(``training.checkpoint.export_latent_diffusion_checkpoint`` reads it from the run's workdir).

State_dict layout of a PredVDM ``LatentDiffusion`` checkpoint (spec §C, §D.3):

* ``model.diffusion_model.*`` (UNet), ``model.tc_attn.*``, ``model.ct_attn.*``: raw weights;
* ``model_ema.<name without dots>`` for every one of those parameters (``LitEma``;
  e.g. ``model_ema.diffusion_modelinput_blocks10in_layers0weight``), plus the
  bookkeeping buffers ``model_ema.decay`` and ``model_ema.num_updates``;
* ``first_stage_model.*`` (VQ-f4), returned untouched for ``interop/ldm_vq.py``;
* ``cond_stage_model.*`` (a duplicate of the first stage) and the schedule
  buffers, which are not needed and are reported as ignored.

Names are generated from the Flax tree (``diffusion_model/input_blocks_1_0/in_layers_0/scale``
-> ``diffusion_model.input_blocks.1.0.in_layers.0.weight``), so the dotless EMA
names never have to be parsed. Wrapper attention weights of a module the
configured mode does not use (e.g. ``tc_attn`` in a ``tc`` model) are ignored
and listed in ``ignored_keys``; every other missing, unexpected or wrong-shape
key is an error. PredVDM's ``DiffusionWrapper`` builds both gates in every mode, so an export
writes the unused ones too, at PyTorch's default initialisation (``unused_gate_state_dict``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import linen as nn

from predvdm_jax import config as config_lib
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop import ldm_vq, torch_checkpoint as tc
from predvdm_jax.interop.bundle import Bundle, BundleSource
from predvdm_jax.interop.params import load_vq_params
from predvdm_jax.models.predictor import PredVDMDenoiser
from predvdm_jax.tensor_files import check_finite, check_keys

SCHEDULE_BUFFERS = (  # LDM's register_schedule buffers that a checkpoint holds (lvlb_weights is not)
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
MODEL_PREFIX = "model."
EMA_PREFIX = "model_ema."
EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
FIRST_STAGE_PREFIX = "first_stage_model."
WRAPPER_ATTENTION_MODULES = ("tc_attn", "ct_attn")
_CONV1D_MODULES = ("qkv", "proj_out")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class PredVDMCheckpoint:
    """Converted checkpoint. ``params`` / ``ema_params`` are unboxed float32 numpy trees for
    ``model.apply({'params': ...}, ...)``; ``ema_params`` is None when the checkpoint has no EMA."""

    params: dict[str, Any]
    ema_params: dict[str, Any] | None
    first_stage_state_dict: dict[str, np.ndarray]
    ema_num_updates: int | None
    ema_decay: float | None
    ignored_keys: tuple[str, ...]


def flax_path_to_torch_name(path: tuple[str, ...]) -> str:
    """``('diffusion_model', 'input_blocks_1_0', 'in_layers_0', 'scale')`` -> ``'diffusion_model.input_blocks.1.0.in_layers.0.weight'``."""
    modules = [re.sub(r"_(\d+)", r".\1", name) for name in path[:-1]]
    return ".".join(modules + [_LEAF_TO_TORCH[path[-1]]])


def ema_key(torch_name: str) -> str:
    """``LitEma`` buffer key of a ``DiffusionWrapper`` parameter: dots removed, ``model_ema.`` prefix."""
    return EMA_PREFIX + torch_name.replace(".", "")


def _torch_shape(path: tuple[str, ...], flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] != "kernel":
        return tuple(flax_shape)
    if len(flax_shape) == 4:
        cout, kh, kw, cin = flax_shape
        return (cout, cin, kh, kw)
    cin, cout = flax_shape
    return (cout, cin, 1) if path[-2] in _CONV1D_MODULES else (cout, cin)


def _to_flax(value: np.ndarray, flax_ndim: int) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 4:
        return tc.conv_kernel_to_ohwi(value)
    if value.ndim == 3 and flax_ndim == 2:
        return tc.conv1x1_to_dense(value)
    if value.ndim == 2:
        return tc.linear_to_dense(value)
    return value


def _to_torch(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if path[-1] != "kernel":
        return value
    if value.ndim == 4:
        return tc.ohwi_to_conv_kernel(value)
    return value.T.reshape(_torch_shape(path, value.shape))


def param_shapes(model: PredVDMDenoiser) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat ``{flax path: shape}`` of ``model``'s params, from ``jax.eval_shape`` (nothing allocated)."""
    side = 2 ** (len(model.unet_kwargs().get("channel_mult", (1, 2, 4, 8))) - 1)
    c = model.latent_channels
    x = jnp.zeros((1, model.k, side, side, c))
    cond = jnp.zeros((1, model.n_cond, side, side, c))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), cond))
    flat = tc.flatten_params(nn.unbox(shapes["params"]))
    return {tuple(k.split("/")): tuple(v.shape) for k, v in flat.items()}


def _torch_names(shapes: Mapping[tuple[str, ...], tuple[int, ...]]) -> dict[tuple[str, ...], str]:
    names = {path: flax_path_to_torch_name(path) for path in shapes}
    dotless = [name.replace(".", "") for name in names.values()]
    if len(set(dotless)) != len(dotless):
        raise ValueError(
            "two parameters share one dot-free EMA name; this model layout cannot be imported from LitEma."
        )
    return names


def convert_predvdm_state_dict(
    state_dict: Mapping[str, np.ndarray], model: PredVDMDenoiser
) -> PredVDMCheckpoint:
    """PredVDM Lightning state_dict (``{key: array}``) -> raw and EMA Flax params for ``model``.

    Raises one ValueError listing every missing, unexpected and wrong-shape key
    (PyTorch names) of the denoiser and its EMA copy.
    """
    shapes = param_shapes(model)
    names = _torch_names(shapes)
    used_attention = {path[0] for path in shapes if path[0] in WRAPPER_ATTENTION_MODULES}
    unused_attention = [m for m in WRAPPER_ATTENTION_MODULES if m not in used_attention]
    unused_prefixes = tuple(MODEL_PREFIX + m + "." for m in unused_attention) + tuple(
        EMA_PREFIX + m for m in unused_attention
    )

    raw_keys = {path: MODEL_PREFIX + names[path] for path in shapes}
    ema_keys = {path: ema_key(names[path]) for path in shapes}
    has_ema = any(k.startswith(EMA_PREFIX) and k not in EMA_BOOKKEEPING for k in state_dict)

    expected = {raw_keys[p]: _torch_shape(p, s) for p, s in shapes.items()}
    if has_ema:
        expected.update({ema_keys[p]: _torch_shape(p, s) for p, s in shapes.items()})
    got: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    first_stage: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if key.startswith(FIRST_STAGE_PREFIX):
            first_stage[key] = value
        elif key in EMA_BOOKKEEPING:
            continue
        elif unused_prefixes and key.startswith(unused_prefixes):
            ignored.append(key)
        elif key.startswith((MODEL_PREFIX, EMA_PREFIX)):
            got[key] = value
        else:
            ignored.append(key)
    check_keys(expected, got, what="PredVDM checkpoint")

    def tree(keys: Mapping[tuple[str, ...], str]) -> dict[str, Any]:
        flat = {
            "/".join(p): np.ascontiguousarray(_to_flax(got[keys[p]], len(shapes[p])))
            for p in shapes
        }
        return tc.unflatten_params(flat)

    def scalar(key: str, kind: type) -> Any:
        return kind(np.asarray(state_dict[key]).item()) if key in state_dict else None

    return PredVDMCheckpoint(
        params=tree(raw_keys),
        ema_params=tree(ema_keys) if has_ema else None,
        first_stage_state_dict=first_stage,
        ema_num_updates=scalar("model_ema.num_updates", int),
        ema_decay=scalar("model_ema.decay", float),
        ignored_keys=tuple(sorted(ignored)),
    )


def load_predvdm_checkpoint(
    path: str | os.PathLike, model: PredVDMDenoiser, *, allow_pickle: bool = False
) -> PredVDMCheckpoint:
    """Read a PredVDM ``.ckpt`` (or a bare state_dict / safetensors file) and convert it for ``model``.

    ``allow_pickle=True`` is needed for Lightning files that pickle Python
    objects; it runs code from the file, so only use it for trusted files.
    """
    return convert_predvdm_state_dict(
        tc.load_torch_state_dict(path, allow_pickle=allow_pickle), model
    )


def predvdm_params_to_state_dict(
    params: Mapping[str, Any],
    ema_params: Mapping[str, Any] | None = None,
    ema_num_updates: int | None = None,
) -> dict[str, np.ndarray]:
    """Flax ``PredVDMDenoiser`` params (and EMA) -> PyTorch state_dict keys and layouts (numpy)."""
    out: dict[str, np.ndarray] = {}
    for prefix_fn, tree in ((lambda n: MODEL_PREFIX + n, params), (ema_key, ema_params)):
        if tree is None:
            continue
        for name, value in tc.flatten_params(nn.unbox(dict(tree))).items():
            path = tuple(name.split("/"))
            out[prefix_fn(flax_path_to_torch_name(path))] = np.ascontiguousarray(
                _to_torch(value, path)
            )
    if ema_params is not None and ema_num_updates is not None:
        out["model_ema.num_updates"] = np.asarray(ema_num_updates, dtype=np.int32)
    return out


def unused_gate_state_dict(model: PredVDMDenoiser, seed: int = 0) -> dict[str, np.ndarray]:
    """Raw and EMA keys of the wrapper gates ``model.mode`` does not use, drawn as PyTorch
    initialises a ``Conv2d`` (uniform within ±1/sqrt(fan_in), weights and biases alike).

    The original builds ``tc_attn`` and ``ct_attn`` in every mode (spec §D.5 counts both in the
    SMMNIST ``tc`` model) and never trains an unused one, so its raw and EMA copies stay at
    their initial values; without these keys its strict load (Lightning's
    ``trainer.test(ckpt_path=...)``) fails on a ``tc``, ``ct`` or ``tcct_para`` export."""
    used = {path[0] for path in param_shapes(model)}
    every_gate = param_shapes(model.clone(mode="tcct_para_attn"))
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for path, shape in sorted(every_gate.items()):
        if path[0] not in WRAPPER_ATTENTION_MODULES or path[0] in used:
            continue
        kernel = path[:-1] + ("kernel",)
        bound = 1.0 / np.sqrt(np.prod(_torch_shape(kernel, every_gate[kernel])[1:]))
        value = rng.uniform(-bound, bound, _torch_shape(path, shape)).astype(np.float32)
        name = flax_path_to_torch_name(path)
        out[MODEL_PREFIX + name] = value
        out[ema_key(name)] = value.copy()
    return out


def latent_diffusion_state_dict(
    model: PredVDMDenoiser,
    params: Mapping[str, Any],
    ema_params: Mapping[str, Any],
    ema_num_updates: int,
    ema_decay: float,
    vq_params: Mapping[str, Any],
    schedule_buffers: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """The whole state_dict of a PredVDM ``LatentDiffusion`` holding ``model``'s ``params``:
    raw and EMA denoiser (both wrapper gates, used or not), the VQ as
    ``first_stage_model.*`` and its ``cond_stage_model.*`` duplicate (spec §B) and the schedule
    buffers, i.e. the keys of the original's module, so it loads strictly. No
    ``scale_factor``: LDM keeps it as a buffer only under ``scale_by_std``, which PredVDM's
    configs turn off (their yaml gives it)."""
    out = predvdm_params_to_state_dict(params, ema_params, ema_num_updates)
    out.update(unused_gate_state_dict(model))
    out["model_ema.decay"] = np.asarray(ema_decay, dtype=np.float32)
    vq = ldm_vq.vq_params_to_state_dict(vq_params)
    for prefix in (FIRST_STAGE_PREFIX, "cond_stage_model."):
        out.update({prefix + key: value for key, value in vq.items()})
    for name in SCHEDULE_BUFFERS:
        out[name] = np.asarray(schedule_buffers[name], dtype=np.float32)
    return out


EXPORT_MARKER = "predvdm_jax_config"  # the key under which an export records its config


def write_latent_diffusion_checkpoint(
    path: str, config: ml_collections.ConfigDict, state: Any, step: int
) -> None:
    """Writes a run's train state (host arrays) as a PredVDM ``LatentDiffusion`` checkpoint
    (``.ckpt``: what the PyTorch original loads; ``.safetensors``: the same state_dict without
    PyTorch). Both record this project's config under ``EXPORT_MARKER``, which tells
    ``is_latent_diffusion_export`` that a re-export may replace the file."""
    diffusion = LatentDiffusion.from_config(config)
    schedule = diffusion.schedule
    state_dict = latent_diffusion_state_dict(
        diffusion.denoiser,
        state.params,
        state.ema_params,
        int(state.ema_updates),
        float(config.train.ema_rate),
        load_vq_params(config.vq_params, config),
        {name: getattr(schedule, name) for name in SCHEDULE_BUFFERS},
    )
    extra = {"global_step": int(step), EXPORT_MARKER: config.to_json_best_effort()}
    tc.save_torch_state_dict(path, state_dict, extra)


def is_latent_diffusion_export(path: str) -> bool:
    """Whether the file ``path`` is one ``write_latent_diffusion_checkpoint`` wrote: its
    safetensors metadata, or the pickle of its torch zip archive, holds ``EXPORT_MARKER``.
    Reads no tensor, so a re-export checks a large file at once."""
    try:
        if tc.state_dict_format(path) == "safetensors":
            from safetensors import safe_open

            with safe_open(path, "numpy") as f:
                return EXPORT_MARKER in (f.metadata() or {})
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            return any(EXPORT_MARKER.encode() in archive.read(name) for name in pickles)
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError):
        return False  # unreadable, another format or not a zip archive: not ours


def recorded_config(path: str) -> ml_collections.ConfigDict | None:
    """The config a file ``write_latent_diffusion_checkpoint`` wrote records (None: not one)."""
    if not is_latent_diffusion_export(path):
        return None
    if tc.state_dict_format(path) == "safetensors":
        from safetensors import safe_open

        with safe_open(path, "numpy") as f:
            recorded = f.metadata()[EXPORT_MARKER]
    else:
        checkpoint = tc.import_torch().load(path, map_location="cpu", weights_only=True, mmap=True)
        recorded = checkpoint[EXPORT_MARKER]
    return config_lib.config_from_dict(json.loads(recorded))


def _check_recorded_model(
    path: str, recorded: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> None:
    """A ``ValueError`` naming the model fields (architecture, mode, parameterization, frame
    counts, schedule) on which ``config`` differs from ``recorded``, the config an export of
    this project records: its weights would be read as another model's, e.g. x̂0 as ε."""
    from predvdm_jax.training import checkpoint  # training imports this module

    fields = [field for field in checkpoint.DENOISER_FIELDS if field != "scale_factor"]
    differences = checkpoint.model_differences(
        checkpoint.config_to_json(recorded),
        checkpoint.config_to_json(config),
        "in the checkpoint",
        fields,
    )
    if differences:
        raise ValueError(
            f"{path} was exported from a run of another model than the config describes: "
            f"{'; '.join(differences)}. Pass the run's config (the fields above as "
            f"--config.<field>=<the checkpoint's value>)."
        )


def bundle_from_predvdm_checkpoint(
    path: str, config: ml_collections.ConfigDict, use_ema: bool = True, allow_pickle: bool = False
) -> tuple[Bundle, str]:
    """A PredVDM ``LatentDiffusion`` checkpoint (the PyTorch original's ``.ckpt``, or a file
    :func:`write_latent_diffusion_checkpoint` wrote) as a bundle for ``config``, and a one-line
    summary of what was taken.

    The denoiser (``model_ema.*`` by default, ``model.*`` with ``use_ema=False``) and the VQ
    (``first_stage_model.*``) come from the checkpoint; ``config`` must describe the same
    architecture (every mismatched key is listed in one error) and give the schedule of its
    ``betas``. The mode cannot be read from the keys (PredVDM's wrapper holds ``tc_attn`` /
    ``ct_attn`` whenever its yaml configures them, whatever the mode), so the summary names
    attention weights the configured mode leaves unused. A ``scale_factor`` buffer (LDM's
    ``scale_by_std``) replaces the config's; PredVDM's configs take it from the yaml
    (``scale_by_std: False``), so pass that value as ``config.scale_factor``. A file this
    project exported records its run's config: a ``config`` of another model is refused
    (``_check_recorded_model``), and its ``scale_factor`` is taken. Weights holding NaN or Inf
    are a ``ValueError`` naming their keys.
    """
    recorded = recorded_config(path)
    if recorded is not None:
        _check_recorded_model(path, recorded, config)
    state_dict = tc.load_torch_state_dict(path, allow_pickle=allow_pickle)
    model = LatentDiffusion.from_config(config)
    converted = convert_predvdm_state_dict(state_dict, model.denoiser)
    if use_ema and converted.ema_params is None:
        raise ValueError(
            f"{path} has no model_ema.* weights (a run with use_ema: False); "
            "import its raw weights with --nouse_ema."
        )
    if "betas" in state_dict:
        betas = np.asarray(state_dict["betas"], np.float64)
        expected = np.asarray(model.schedule.betas, np.float64)
        if betas.shape != expected.shape or not np.allclose(betas, expected, rtol=1e-5, atol=0):
            d = config.diffusion
            raise ValueError(
                f"{path} was trained with {betas.shape[0]} betas from {betas[0]:.6g} to "
                f"{betas[-1]:.6g}, but config.diffusion gives {expected.shape[0]} from "
                f"{expected[0]:.6g} to {expected[-1]:.6g} ({d.beta_schedule}, linear_start="
                f"{d.linear_start}, linear_end={d.linear_end}); set config.diffusion.timesteps, "
                "linear_start and linear_end to the yaml's."
            )
    prefix = EMA_PREFIX if use_ema else MODEL_PREFIX
    check_finite(
        {
            key: value
            for key, value in state_dict.items()
            if key.startswith(FIRST_STAGE_PREFIX)
            or (
                key.startswith(prefix)
                and key not in EMA_BOOKKEEPING
                and key not in converted.ignored_keys
            )
        },
        f"{path}: the {'EMA' if use_ema else 'raw'} denoiser and VQ weights",
        "the checkpoint is damaged or its run diverged: import another checkpoint"
        + ("" if not use_ema else " (or its raw weights, --nouse_ema)"),
    )
    vq_params = ldm_vq.convert_vq_state_dict(converted.first_stage_state_dict, model.vq)
    scale_factor, scale_from = None, "the config's: --config.scale_factor sets it"
    if recorded is not None:
        scale_factor, scale_from = float(recorded.scale_factor), "the exported run's"
    if "scale_factor" in state_dict:
        scale_factor = float(np.asarray(state_dict["scale_factor"]).item())
        scale_from = "the checkpoint's buffer"
    if scale_factor is not None:
        config = copy.deepcopy(config)
        config.scale_factor = scale_factor
    weights = f"EMA weights ({converted.ema_num_updates} updates)" if use_ema else "raw weights"
    summary = (
        f"{weights}, mode {config.model.mode}, {config.diffusion.parameterization}-prediction, "
        f"scale_factor {config.scale_factor:g} ({scale_from})"
    )
    # This project's exports record their mode and always carry both gates, used or not.
    unused = [
        name
        for name in WRAPPER_ATTENTION_MODULES
        if recorded is None
        and any(k.startswith(f"{MODEL_PREFIX}{name}.") for k in converted.ignored_keys)
    ]
    if unused:
        summary += (
            f"; mode {config.model.mode} leaves the checkpoint's "
            f"{' and '.join(f'model.{name}.*' for name in unused)} unused (pass "
            "--config.model.mode=tc_attn or tcct_para_attn if the run used them)"
        )
    params = converted.ema_params if use_ema else converted.params
    source = BundleSource(
        "predvdm",
        os.path.abspath(path),
        "EMA" if use_ema else "raw",
        ema_updates=converted.ema_num_updates if use_ema else None,
    )
    # Absolute paths, as a training run records them: the bundle is read from other folders.
    return Bundle(config_lib.with_absolute_paths(config), params, vq_params, source), summary

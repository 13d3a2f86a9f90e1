"""Inference bundles: EMA denoiser params + VQ params + config, without optimizer state.

A bundle is a folder with ``denoiser.safetensors``, ``vq.safetensors`` (flat
'/'-joined Flax param names, float32) and ``config.json``. It loads with one
call on any device count and needs neither the training code nor Orbax.
``load_from_checkpoint`` reads the same three things straight from a training
workdir (its newest finished checkpoint), ``export_latent_diffusion_checkpoint``
writes a run back in the PyTorch original's checkpoint layout, and
``bundle_from_predvdm_checkpoint`` goes the other way: a checkpoint the PyTorch
original trained becomes a bundle. A run's ``best/``
folder (``train.keep_best``) holds bundles with a ``metric.json`` each.

The denoiser file's metadata names its conv kernel layout. Bundles from before
the UNet stored OHWI kernels have none, and their HWIO kernels are transposed on load.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from predvdm_jax import atomic_io
from predvdm_jax import config as config_lib
from predvdm_jax.interop.torch_checkpoint import (
    conv_kernel_to_ohwi,
    conv_kernel_to_torch,
    flatten_params,
    load_params_safetensors,
    import_torch,
    save_params_safetensors,
    save_torch_state_dict,
    state_dict_format,
)
from predvdm_jax.tensor_files import check_keys

DENOISER_FILE, VQ_FILE, CONFIG_FILE = "denoiser.safetensors", "vq.safetensors", "config.json"
METRIC_FILE = "metric.json"  # {"metric", "value", "step"} of a best bundle (train.keep_best)
BUNDLE_ENTRIES = {DENOISER_FILE, VQ_FILE, CONFIG_FILE, METRIC_FILE}
DENOISER_METADATA = {"format": "flax/predvdm_denoiser", "conv_kernel_layout": "OHWI"}


@dataclasses.dataclass(frozen=True)
class Bundle:
    config: ml_collections.ConfigDict
    params: Any  # denoiser params (EMA unless exported otherwise)
    vq_params: Any


def load_vq_params(path: str, config: ml_collections.ConfigDict | None = None) -> Any:
    """The VQ params in ``path``; with ``config``, a ``ValueError`` listing every key whose
    presence or shape differs from the params of ``config``'s VQ."""
    if not path:
        raise FileNotFoundError(
            "config.vq_params is empty: point it at VQ params made by "
            "scripts/train_vq.py or scripts/convert_ldm_vq.py."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"VQ params {path!r} not found: train them with scripts/train_vq.py "
            f"or convert the LDM vq-f4 checkpoint with scripts/convert_ldm_vq.py."
        )
    params = load_params_safetensors(path)
    if config is not None:
        from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion

        init = LatentDiffusion.from_config(config).init_vq
        expected = flatten_params(jax.eval_shape(init, jax.random.PRNGKey(0)))
        check_keys(
            {k: v.shape for k, v in expected.items()},
            flatten_params(params),
            what=f"VQ params {path!r} (config.vq)",
        )
    return params


def _check_replaceable(path: str) -> None:
    """Only an earlier bundle (or an empty folder) may be replaced: never a training workdir."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file; pass a folder path for the bundle.")
    others = sorted(set(os.listdir(path)) - BUNDLE_ENTRIES)
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise ValueError(
            f"{path!r} exists and is not a bundle (it holds {shown}); nothing was written. "
            "Pass a new or bundle folder as the output."
        )


def save_bundle(path: str, bundle: Bundle) -> None:
    """Writes the bundle folder atomically (a temporary folder renamed into place). An
    existing bundle at ``path`` is replaced; any other non-empty folder is an error."""
    _check_replaceable(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".bundle-", dir=parent)
    try:
        save_params_safetensors(
            os.path.join(tmp, DENOISER_FILE),
            jax.device_get(bundle.params),
            metadata=DENOISER_METADATA,
        )
        save_params_safetensors(
            os.path.join(tmp, VQ_FILE),
            jax.device_get(bundle.vq_params),
            metadata={"format": "flax/vq"},
        )
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(bundle.config.to_json_best_effort(indent=2))
        for name in os.listdir(tmp):
            atomic_io.set_default_permissions(os.path.join(tmp, name))
        atomic_io.set_default_permissions(tmp)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_denoiser_params(path: str) -> Any:
    """A bundle's denoiser params with OHWI conv kernels, whichever layout the file holds."""
    from safetensors import safe_open

    params = load_params_safetensors(path)
    with safe_open(path, "numpy") as f:
        layout = (f.metadata() or {}).get("conv_kernel_layout", "HWIO")
    if layout == "OHWI":
        return params
    if layout != "HWIO":
        raise ValueError(f"{path}: unknown conv_kernel_layout {layout!r}; re-export the bundle.")

    def to_ohwi(path, x):
        if path[-1].key != "kernel" or x.ndim != 4:
            return x
        return conv_kernel_to_ohwi(conv_kernel_to_torch(x))  # HWIO -> OIHW -> OHWI

    return jax.tree_util.tree_map_with_path(to_ohwi, params)


def bundle_metrics(directory: str) -> dict[str, float]:
    """``{folder name: metric value}`` of ``directory``'s bundles that have a metric file (a
    run's ``best/`` folder); empty when there is no such folder."""
    values = {}
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        metric = os.path.join(directory, name, METRIC_FILE)
        if os.path.exists(metric):
            with open(metric) as f:
                values[name] = float(json.load(f)["value"])
    return values


def best_bundle(directory: str) -> str | None:
    """The bundle of lowest metric value in ``directory`` (:func:`bundle_metrics`; ties go to
    the first name), or None when it holds none."""
    values = bundle_metrics(directory)
    if not values:
        return None
    return os.path.join(directory, min(values, key=lambda name: (values[name], name)))


def resolve_bundle_path(path: str) -> str:
    """``path``, or for a run's ``best/`` folder its bundle of lowest validation loss."""
    best = best_bundle(path)
    if best is not None and not os.path.exists(os.path.join(path, CONFIG_FILE)):
        logging.info("loading %s, the best bundle in %s", best, path)
        return best
    return path


def load_bundle(path: str) -> Bundle:
    """The bundle at ``path`` (params as host arrays; jit places them on any mesh). A run's
    ``best/`` folder loads its bundle of lowest validation loss."""
    path = resolve_bundle_path(path)
    missing = [
        f
        for f in (DENOISER_FILE, VQ_FILE, CONFIG_FILE)
        if not os.path.exists(os.path.join(path, f))
    ]
    if missing:
        from predvdm_jax.training.checkpoint import CHECKPOINT_DIR  # Orbax on this path only

        if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
            raise FileNotFoundError(
                f"{path!r} is a training workdir, not a bundle; pass --workdir={path}, or export "
                f"one with scripts/export.py --workdir={path} --out=<new folder>"
            )
        raise FileNotFoundError(
            f"{path!r} is not a complete bundle (missing {', '.join(missing)}); "
            f"make one with scripts/export.py --workdir=<training dir> --out=<new folder>"
        )
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = config_lib.config_from_dict(json.load(f))
    return Bundle(
        config,
        load_denoiser_params(os.path.join(path, DENOISER_FILE)),
        load_params_safetensors(os.path.join(path, VQ_FILE)),
    )


def load_train_state(workdir: str, step: int | None = None) -> tuple[Any, Any, int]:
    """(config, train state, step) of a training run's checkpoint (the newest finished one by
    default), restored onto the current devices, whatever the device count of the run."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.training import checkpoint, mesh as mesh_lib, optim, train_state

    directory = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    step = checkpoint.latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"no finished checkpoint in {directory}; train first "
            f"(scripts/train.py --workdir={workdir}) or pass --bundle."
        )
    checkpointer = checkpoint.Checkpointer(directory, async_save=False)
    try:
        config = config_lib.config_from_dict(checkpointer.restore_config(step))
        model = LatentDiffusion.from_config(config)
        optimizer, _ = optim.make_optimizer(config)
        abstract, _ = train_state.abstract_train_state(
            model.init_denoiser, optimizer, jax.random.PRNGKey(config.seed), mesh_lib.make_mesh()
        )
        state, _ = checkpointer.restore(step, abstract)
    finally:
        checkpointer.close()
    return config, state, step


def load_from_checkpoint(workdir: str, use_ema: bool = True, step: int | None = None) -> Bundle:
    """Denoiser params (EMA by default), VQ params and config of a training run's checkpoint."""
    config, state, _ = load_train_state(workdir, step)
    return Bundle(
        config,
        state.ema_params if use_ema else state.params,
        load_vq_params(config.vq_params, config),
    )


def export_latent_diffusion_checkpoint(
    workdir: str, path: str, step: int | None = None
) -> tuple[int, float]:
    """Writes a run's checkpoint as a PredVDM ``LatentDiffusion`` checkpoint (``.ckpt``: what
    the PyTorch original loads, with this project's config as ``predvdm_jax_config``;
    ``.safetensors``: the same state_dict without PyTorch). Returns the step written and the
    latent ``scale_factor`` the original's yaml must use."""
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop import predvdm_ckpt

    if state_dict_format(path) == "torch":
        import_torch()  # before the restore, so a missing PyTorch fails fast
    config, state, step = load_train_state(workdir, step)
    state = jax.device_get(state)
    schedule = LatentDiffusion.from_config(config).schedule
    state_dict = predvdm_ckpt.latent_diffusion_state_dict(
        state.params,
        state.ema_params,
        int(state.ema_updates),
        float(config.train.ema_rate),
        load_vq_params(config.vq_params, config),
        {name: getattr(schedule, name) for name in predvdm_ckpt.SCHEDULE_BUFFERS},
        float(config.scale_factor),
    )
    extra = {"global_step": int(step), "predvdm_jax_config": config.to_json_best_effort()}
    save_torch_state_dict(path, state_dict, extra)
    return step, float(config.scale_factor)


def bundle_from_predvdm_checkpoint(
    path: str, config: ml_collections.ConfigDict, use_ema: bool = True, allow_pickle: bool = False
) -> tuple[Bundle, str]:
    """A PredVDM ``LatentDiffusion`` checkpoint (the PyTorch original's ``.ckpt``, or a file
    :func:`export_latent_diffusion_checkpoint` wrote) as a bundle for ``config``, and a one-line
    summary of what was taken.

    The denoiser (``model_ema.*`` by default, ``model.*`` with ``use_ema=False``) and the VQ
    (``first_stage_model.*``) come from the checkpoint; ``config`` must describe the same
    architecture (every mismatched key is listed in one error) and give the schedule of its
    ``betas``. The mode cannot be read from the keys (PredVDM's wrapper holds ``tc_attn`` /
    ``ct_attn`` whenever its yaml configures them, whatever the mode), so the summary names
    attention weights the configured mode leaves unused. A ``scale_factor`` buffer (LDM's
    ``scale_by_std``) replaces the config's; PredVDM's configs take it from the yaml
    (``scale_by_std: False``), so pass that value as ``config.scale_factor``.
    """
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop import ldm_vq, predvdm_ckpt
    from predvdm_jax.interop.torch_checkpoint import load_torch_state_dict

    state_dict = load_torch_state_dict(path, allow_pickle=allow_pickle)
    model = LatentDiffusion.from_config(config)
    converted = predvdm_ckpt.convert_predvdm_state_dict(state_dict, model.denoiser)
    if use_ema and converted.ema_params is None:
        raise ValueError(
            f"{path} has no model_ema.* weights (a run with use_ema: False); "
            "import its raw weights with --noema."
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
    vq_params = ldm_vq.convert_vq_state_dict(converted.first_stage_state_dict, model.vq)
    if "scale_factor" in state_dict:
        scale_factor = float(np.asarray(state_dict["scale_factor"]).item())
        if scale_factor != config.scale_factor:
            config = copy.deepcopy(config)
            config.scale_factor = scale_factor
    weights = f"EMA weights ({converted.ema_num_updates} updates)" if use_ema else "raw weights"
    summary = f"{weights}, mode {config.model.mode}, scale_factor {config.scale_factor:g}"
    unused = [
        name
        for name in predvdm_ckpt.WRAPPER_ATTENTION_MODULES
        if any(k.startswith(f"{predvdm_ckpt.MODEL_PREFIX}{name}.") for k in converted.ignored_keys)
    ]
    if unused:
        summary += (
            f"; mode {config.model.mode} leaves the checkpoint's "
            f"{' and '.join(f'model.{name}.*' for name in unused)} unused (pass "
            "--config.model.mode=tc_attn or tcct_para_attn if the run used them)"
        )
    params = converted.ema_params if use_ema else converted.params
    return Bundle(config, params, vq_params), summary

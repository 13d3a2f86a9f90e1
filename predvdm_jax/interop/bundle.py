"""Inference bundles: EMA denoiser params + VQ params + config, without optimizer state.

A bundle is a folder with ``denoiser.safetensors``, ``vq.safetensors`` (flat
'/'-joined Flax param names, float32), ``config.json`` and ``source.json`` (where the weights
came from: :class:`BundleSource`; a bundle written before it loads with it unknown). It loads
with one call on any device count and needs neither the training code nor Orbax. A run's
``best/`` folder (``train.keep_best``) holds bundles with a ``metric.json`` each;
loading the folder loads its bundle of lowest metric. Training runs become bundles
with ``training.checkpoint.load_from_checkpoint``, PredVDM checkpoints with
``predvdm_ckpt.bundle_from_predvdm_checkpoint``.

The denoiser file's metadata names its conv kernel layout, OHWI (``models/conv.py``); a file
without it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import ml_collections
from absl import logging

from predvdm_jax import atomic_io
from predvdm_jax import config as config_lib
from predvdm_jax.folders import (
    BEST_DIR,
    CONFIG_FILE,
    DENOISER_FILE,
    METRIC_FILE,
    SOURCE_FILE,
    VQ_FILE,
    is_bundle,
    is_training_workdir,
)
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop.ldm_vq import VQ_METADATA_KIND
from predvdm_jax.interop.params import check_params
from predvdm_jax.interop.torch_checkpoint import load_params_safetensors, save_params_safetensors
from predvdm_jax.tensor_files import check_finite

BUNDLE_ENTRIES = {DENOISER_FILE, VQ_FILE, CONFIG_FILE, SOURCE_FILE, METRIC_FILE}
DENOISER_METADATA = {"format": "flax/predvdm_denoiser", "conv_kernel_layout": "OHWI"}
ORIGINS = {"run": "run", "predvdm": "PredVDM checkpoint"}
"""``BundleSource.origin``: a training run's weights (``scripts/export.py``, ``train.keep_best``),
or a PredVDM checkpoint's (``scripts/import_predvdm.py``), as descriptions name them."""


@dataclasses.dataclass(frozen=True)
class BundleSource:
    """Where a bundle's weights came from (its ``source.json``): ``path`` is the run's workdir
    or the PredVDM checkpoint file, ``step`` the run's step (None where unknown), ``weights``
    "EMA" or "raw", ``ema_updates`` the EMA's update count where known."""

    origin: str  # a key of ORIGINS
    path: str
    weights: str
    step: int | None = None
    ema_updates: int | None = None

    def __str__(self) -> str:
        step = "" if self.step is None else f" step {self.step}"
        updates = "" if self.ema_updates is None else f", {self.ema_updates} EMA updates"
        return f"{ORIGINS[self.origin]} {self.path}{step} ({self.weights} weights{updates})"


@dataclasses.dataclass(frozen=True)
class Bundle:
    config: ml_collections.ConfigDict
    params: Any  # denoiser params (EMA unless exported otherwise)
    vq_params: Any
    source: BundleSource | None = None  # None: unknown (a bundle written before source.json)


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


TEMPORARY_PREFIX = ".bundle-"
"""``save_bundle``'s temporary folders beside the bundle (the new one, the one it replaces)."""


def save_bundle(path: str, bundle: Bundle) -> None:
    """Writes the bundle folder atomically (a temporary folder renamed into place). An
    existing bundle at ``path`` is swapped with the new one in one step where Linux allows
    (``atomic_io.exchange``: a kill leaves one whole bundle at ``path``), else renamed aside
    first; it is deleted once the new one is in place. Any other non-empty folder is an
    error."""
    _check_replaceable(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=parent)
    try:
        save_params_safetensors(
            os.path.join(tmp, DENOISER_FILE),
            jax.device_get(bundle.params),
            metadata=DENOISER_METADATA,
        )
        save_params_safetensors(
            os.path.join(tmp, VQ_FILE),
            jax.device_get(bundle.vq_params),
            metadata=dict(VQ_METADATA_KIND),
        )
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(bundle.config.to_json_best_effort(indent=2))
        if bundle.source is not None:
            with open(os.path.join(tmp, SOURCE_FILE), "w") as f:
                json.dump(dataclasses.asdict(bundle.source), f, indent=2)
        for name in os.listdir(tmp):
            atomic_io.set_default_permissions(os.path.join(tmp, name))
            atomic_io.sync(os.path.join(tmp, name))
        atomic_io.set_default_permissions(tmp)
        atomic_io.sync(tmp)
        old = None
        if os.path.exists(path) and atomic_io.exchange(tmp, path):
            old = tmp  # now the replaced bundle
        else:
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}old-", dir=parent)
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                if old is not None:
                    os.replace(old, path)
                raise
        atomic_io.sync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the new bundle, or after a swap the old one
        raise
    if old is not None and os.path.islink(old):  # ``path`` was a link to a bundle
        os.unlink(old)
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_denoiser_params(path: str) -> Any:
    """A bundle's denoiser params (OHWI conv kernels); a ``ValueError`` naming the file when
    its metadata does not say OHWI, the layout every bundle is written in."""
    from safetensors import safe_open

    params = load_params_safetensors(path)  # first: a truncated file is its one error
    with safe_open(path, "numpy") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") == VQ_METADATA_KIND["format"]:
        raise ValueError(
            f"{path} holds VQ params (its metadata says {VQ_METADATA_KIND['format']}), not the "
            f"denoiser's: were the bundle's {DENOISER_FILE} and {VQ_FILE} swapped? Re-export "
            f"the bundle with scripts/export.py"
        )
    layout = metadata.get("conv_kernel_layout")
    if layout != DENOISER_METADATA["conv_kernel_layout"]:
        found = "no conv_kernel_layout" if layout is None else f"conv_kernel_layout {layout!r}"
        raise ValueError(
            f"{path} has {found} in its metadata, not 'OHWI' (the layout bundles are written "
            f"in); re-export the bundle with scripts/export.py (or re-import it with "
            f"scripts/import_predvdm.py)"
        )
    return params


def bundle_metrics(directory: str) -> dict[str, float]:
    """``{folder name: metric value}`` of ``directory``'s bundles that have a metric file (a
    run's ``best/`` folder); empty when there is no such folder."""
    values = {}
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.startswith("."):  # a temporary of save_bundle (one a killed write left)
            continue
        metric = os.path.join(directory, name, METRIC_FILE)
        if os.path.exists(metric):
            raw = _read_json(metric, f"re-export it, or delete {os.path.join(directory, name)!r}")
            value = raw.get("value") if isinstance(raw, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(
                    f"{metric} holds no numeric 'value' (a {METRIC_FILE} is "
                    '{"metric", "value", "step"}); the bundle is damaged: re-export it, or '
                    f"delete {os.path.join(directory, name)!r}"
                )
            values[name] = float(value)
    return values


def _read_json(path: str, fix: str) -> Any:
    """The JSON in ``path``, or a ``ValueError`` naming the file and ``fix``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{path} is not valid JSON ({reason}); the bundle is damaged: {fix}"
        ) from err
    except IsADirectoryError as err:
        raise ValueError(f"{path} is a folder, not a JSON file; {fix}") from err


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
    """The bundle at ``path``; a run's ``best/`` folder loads its bundle of lowest validation
    loss (:func:`resolve_bundle_path`)."""
    return read_bundle(resolve_bundle_path(path))


def read_bundle(path: str) -> Bundle:
    """The bundle in the folder ``path`` (params as host arrays; jit places them on any mesh),
    its params checked against the model its config builds and for NaN or Inf."""
    bundle = read_bundle_files(path)
    model = LatentDiffusion.from_config(bundle.config)
    hint = f"The files do not match its {CONFIG_FILE}: re-export the bundle with scripts/export.py."
    check_params(bundle.params, model.init_denoiser, f"bundle {path!r} {DENOISER_FILE}", hint)
    check_params(bundle.vq_params, model.init_vq, f"bundle {path!r} {VQ_FILE}", hint)
    check_finite(
        bundle.params,
        f"bundle {path}: the denoiser weights",
        "the file is damaged: re-export the bundle from its run (export.py)",
    )
    check_finite(
        bundle.vq_params,
        f"bundle {path}: the VQ weights",
        "re-export the bundle from its run with good VQ params (export.py --vq_params)",
    )
    return bundle


def _no_bundle_there(path: str) -> str | None:
    """Why ``path`` holds no bundle when it does not exist, or is a run's ``best/`` folder
    without bundles, as one line naming the fix; None otherwise. For ``best/`` or a step under
    it the line lists the steps the run kept, or says that it kept none."""
    folder = os.path.normpath(path)
    missing = (
        f"{path!r} does not exist; pass a bundle folder (make one with scripts/export.py "
        f"--workdir=<training dir> --out=<new folder>)"
    )
    if os.path.basename(folder) == BEST_DIR and not os.path.isfile(folder):
        best = folder
    elif not os.path.exists(folder) and os.path.basename(os.path.dirname(folder)) == BEST_DIR:
        best = os.path.dirname(folder)
    else:
        return None if os.path.exists(folder) else missing
    kept = []
    if os.path.isdir(best):
        kept = sorted(name for name in os.listdir(best) if is_bundle(os.path.join(best, name)))
    problem = f"{path!r} {'is not a bundle' if os.path.exists(folder) else 'does not exist'}"
    if kept:
        lowest = "" if best == folder else f", or {best} to load the one of lowest validation loss"
        return f"{problem}; {best} holds the bundles {', '.join(kept)}: pass one of them{lowest}"
    run = os.path.dirname(best) or "."
    if is_training_workdir(run):
        return (
            f"{problem}: the run {run} kept no best bundles (train.keep_best=0, or no "
            f"validation has run yet); pass --workdir={run} to load its last checkpoint"
        )
    if os.path.isdir(best):
        return f"{problem}: {best} holds no bundles (a run keeps them with train.keep_best > 0)"
    return missing


def read_bundle_files(path: str) -> Bundle:
    """The bundle folder's files as they are, unchecked against the model."""
    missing = [
        f
        for f in (DENOISER_FILE, VQ_FILE, CONFIG_FILE)
        if not os.path.exists(os.path.join(path, f))
    ]
    if missing:
        problem = _no_bundle_there(path)
        if problem:
            raise FileNotFoundError(problem)
        if os.path.isfile(path):
            raise FileNotFoundError(
                f"{path!r} is a file; a bundle is the folder holding {DENOISER_FILE}, {VQ_FILE} "
                f"and {CONFIG_FILE}: pass {os.path.dirname(path) or '.'!r} if it is one"
            )
        if is_training_workdir(path):
            raise FileNotFoundError(
                f"{path!r} is a training workdir, not a bundle; pass --workdir={path}, or export "
                f"one with scripts/export.py --workdir={path} --out=<new folder>"
            )
        raise FileNotFoundError(
            f"{path!r} is not a complete bundle (missing {', '.join(missing)}); "
            f"make one with scripts/export.py --workdir=<training dir> --out=<new folder>"
        )
    config_path = os.path.join(path, CONFIG_FILE)
    fix = "re-export the bundle with scripts/export.py --workdir=<training dir> --out=<folder>"
    raw = _read_json(config_path, fix)
    if not isinstance(raw, dict):
        raise ValueError(
            f"{config_path} holds a JSON {type(raw).__name__}, not a config object; the bundle "
            f"is damaged: {fix}"
        )
    try:
        config = config_lib.config_from_dict(raw)
    except config_lib.ConfigError as err:
        raise config_lib.ConfigError(f"{config_path}: {err}; {fix}") from err
    return Bundle(
        config,
        load_denoiser_params(os.path.join(path, DENOISER_FILE)),
        load_params_safetensors(os.path.join(path, VQ_FILE)),
        _read_source(os.path.join(path, SOURCE_FILE), fix),
    )


def _read_source(path: str, fix: str) -> BundleSource | None:
    """The ``BundleSource`` in the file ``path``, None when there is none (an older bundle);
    a ``ValueError`` naming the file and ``fix`` when it is not one."""
    if not os.path.exists(path):
        return None
    raw = _read_json(path, fix)
    fields = {field.name for field in dataclasses.fields(BundleSource)}
    known = (
        {key: value for key, value in raw.items() if key in fields} if isinstance(raw, dict) else {}
    )

    def whole(value: Any) -> bool:
        return value is None or (isinstance(value, int) and not isinstance(value, bool))

    if not (
        known.get("origin") in ORIGINS
        and isinstance(known.get("path"), str)
        and known.get("weights") in ("EMA", "raw")
        and whole(known.get("step"))
        and whole(known.get("ema_updates"))
    ):
        raise ValueError(
            f"{path} is not a bundle source record (origin {'/'.join(ORIGINS)}, path, weights "
            f"EMA/raw, step, ema_updates); the bundle is damaged: {fix}"
        )
    return BundleSource(**known)

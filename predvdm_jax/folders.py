"""The folders this project writes, by name, so every layer can tell them apart.

A training workdir holds Orbax's ``checkpoints/`` (``training/checkpoint.py``); an inference
bundle is a folder with ``denoiser.safetensors``, ``vq.safetensors`` and ``config.json``
(``interop/bundle.py``). Code that must not write into either, or must say which one it was
given, recognises them here without importing the code that writes them.
"""

from __future__ import annotations

import os

CHECKPOINT_DIR = "checkpoints"  # under a training workdir
DENOISER_FILE, VQ_FILE, CONFIG_FILE = "denoiser.safetensors", "vq.safetensors", "config.json"
METRICS_FILE = "metrics.jsonl"  # a training run's log, beside checkpoints/
METRIC_FILE = "metric.json"  # {"metric", "value", "step"} of a best bundle (train.keep_best)
SOURCE_FILE = "source.json"  # where a bundle's weights came from (interop/bundle.BundleSource)
BEST_DIR = "best"  # a run's folder of best bundles (train.keep_best), beside checkpoints/
WORKDIR_LOCK_FILE = ".lock"  # a running training's lock (training/workdir_lock), in its workdir


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` holds an inference bundle (its config and denoiser)."""
    return all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_FILE, DENOISER_FILE))


def is_training_workdir(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a training run's workdir: its ``checkpoints/`` holds
    Orbax's step folders (named by their step), or the run's ``metrics.jsonl`` lies beside it.
    Any folder merely named ``checkpoints`` (a mount, PredVDM's ``logs/<run>/checkpoints``)
    does not make one."""
    checkpoints = os.path.join(path, CHECKPOINT_DIR)
    if not os.path.isdir(checkpoints):
        return False
    if os.path.isfile(os.path.join(path, METRICS_FILE)):
        return True
    return any(name.isdigit() for name in os.listdir(checkpoints))


def bundle_folder(path: str | os.PathLike) -> str | None:
    """Why ``path`` may hold no other files, as words completing "``path`` ...", or None: it is
    an inference bundle or a folder in one (a bundle would stop being replaceable), or a
    training workdir's ``checkpoints/`` or a folder in it (Orbax's)."""
    target = os.path.abspath(os.fspath(path))
    folder = target
    while True:
        parent = os.path.dirname(folder)
        if is_bundle(folder):
            return (
                "is an inference bundle" if folder == target else f"is inside the bundle {folder}"
            )
        if os.path.basename(folder) == CHECKPOINT_DIR and is_training_workdir(parent):
            return f"is inside {folder}, the checkpoints of a training workdir"
        if parent == folder:
            return None
        folder = parent


def model_folder(path: str | os.PathLike) -> str | None:
    """Why ``path`` may not be an output folder of data or reports, as words completing
    "``path`` ...", or None: ``bundle_folder``'s reasons, and a workdir itself would mix the
    outputs with the run's files; a folder of its own inside a workdir (``runs/x/eval``) is
    fine."""
    if is_training_workdir(os.path.abspath(os.fspath(path))):
        return "is a training workdir"
    return bundle_folder(path)

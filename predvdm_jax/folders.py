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
METRIC_FILE = "metric.json"  # {"metric", "value", "step"} of a best bundle (train.keep_best)


def is_bundle(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` holds an inference bundle (its config and denoiser)."""
    return all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_FILE, DENOISER_FILE))


def is_training_workdir(path: str | os.PathLike) -> bool:
    """Whether the folder ``path`` is a training run's workdir (it holds ``checkpoints/``)."""
    return os.path.isdir(os.path.join(path, CHECKPOINT_DIR))

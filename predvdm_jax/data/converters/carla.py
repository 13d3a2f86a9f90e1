"""CARLA Town01 "no-traffic" (spec §A.7, FDM's release): 128×128 RGB videos.

Source: the untarred ``no-traffic.tar.gz``: ``video_train.csv`` and
``video_test.csv`` (column ``path``, relative to the CSV's folder or
absolute), each row a ``torch.save``'d uint8 tensor ``[T, 128, 128, 3]``
(T = 1000). Reading them needs PyTorch (``pip install -e '.[torch]'`` in the project's
folder).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from predvdm_jax.data.converters import common

SPLITS = {"train": "video_train.csv", "test": "video_test.csv"}


def _read_paths(csv_path: str) -> list[str]:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise common.SourceError(
                f"{csv_path} has no 'path' column (columns: {reader.fieldnames}); "
                f"expected FDM's CARLA video list."
            )
        rows = [row["path"] for row in reader]
    base = os.path.dirname(csv_path)
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise common.SourceError(
            f"{csv_path} lists {len(missing)} file(s) that do not exist, e.g. "
            f"{missing[0]}; untar no-traffic.tar.gz completely next to the CSV."
        )
    return paths


def load_tensor_video(path: str) -> np.ndarray:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "CARLA videos are torch.save'd tensors: install PyTorch "
            "(pip install -e '.[torch]' in the project's folder) to convert them."
        ) from e
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and EOF errors of a damaged file
        raise common.SourceError(
            f"{path} is not a readable torch.save'd tensor ({common.first_line(err)}); the "
            f"download is damaged: untar no-traffic.tar.gz again or re-download it."
        ) from None
    video = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise common.SourceError(
            f"{path}: expected a uint8 tensor [T, H, W, 3], got {video.dtype} {tuple(video.shape)}."
        )
    return np.ascontiguousarray(video)


def plan(src: str) -> common.ConversionPlan:
    common.require_dir(src, "CARLA source")
    splits = []
    for split, csv_name in SPLITS.items():
        csv_path = os.path.join(src, csv_name)
        if not os.path.isfile(csv_path):
            raise common.SourceError(
                f"CARLA source {src} has no {csv_name}; expected the untarred "
                f"no-traffic.tar.gz with video_train.csv and video_test.csv."
            )
        splits.append(common.SplitPlan(split, _read_paths(csv_path), load=load_tensor_video))
    return common.ConversionPlan("carla", splits, {})

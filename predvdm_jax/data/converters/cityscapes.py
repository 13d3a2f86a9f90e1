"""Cityscapes sequences (spec §A.8, MCVD's converter): 30-frame clips, 128×128 RGB.

Source: ``leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
(the folder itself or the one above it). Frames of one ``(city, seq)`` are
sorted by frame number and cut into clips of 30; each frame is centre-cropped
to a square and resized to 128×128 with PIL LANCZOS. Expected: 2975 train /
500 val / 1525 test sequences.
"""

from __future__ import annotations

import collections
import os
import re

import numpy as np
from PIL import Image

from predvdm_jax.data.converters import common
from predvdm_jax.data.resize import center_square, resize_lanczos

SPLITS = ("train", "val", "test")
FRAMES_PER_SEQUENCE = 30
_NAME = re.compile(r"^(.+)_(\d+)_(\d+)_leftImg8bit\.png$")


def cityscapes_frame(path: str, image_size: int = 128) -> np.ndarray:
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise common.SourceError(
            f"Cityscapes source: {path} is not a readable image ({common.first_line(err)}); the "
            f"download is damaged: unzip leftImg8bit_sequence_trainvaltest.zip again or "
            f"re-download it."
        ) from None
    return resize_lanczos(center_square(rgb), image_size)


def _root(src: str) -> str:
    nested = os.path.join(src, "leftImg8bit_sequence")
    root = nested if os.path.isdir(nested) else src
    if any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
        return root
    raise common.SourceError(
        f"Cityscapes source {src} has no leftImg8bit_sequence/{{train,val,test}}"
        f" folders; expected the unzipped "
        f"leftImg8bit_sequence_trainvaltest.zip."
    )


def plan(src: str, image_size: int = 128) -> common.ConversionPlan:
    common.require_dir(src, "Cityscapes source")
    root = _root(src)
    splits, notes = [], []
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            notes.append(f"no {split} folder in {root}; split not written")
            continue
        sequences = collections.defaultdict(list)
        for city in sorted(os.listdir(split_dir)):
            city_dir = os.path.join(split_dir, city)
            if not os.path.isdir(city_dir):
                continue
            for name in os.listdir(city_dir):
                m = _NAME.match(name)
                if m:
                    sequences[(m.group(1), int(m.group(2)))].append(
                        (int(m.group(3)), os.path.join(city_dir, name))
                    )
        items, uneven = [], 0
        for key in sorted(sequences):
            frames = [p for _, p in sorted(sequences[key])]
            if len(frames) % FRAMES_PER_SEQUENCE:
                uneven += 1
            for i in range(len(frames) // FRAMES_PER_SEQUENCE):
                items.append(tuple(frames[i * FRAMES_PER_SEQUENCE : (i + 1) * FRAMES_PER_SEQUENCE]))
        if not items:
            raise common.SourceError(
                f"Cityscapes source: {split_dir} holds no sequence of "
                f"{FRAMES_PER_SEQUENCE} <city>_<seq>_<frame>_leftImg8bit.png "
                f"frames."
            )
        if uneven:
            notes.append(
                f"{split}: {uneven} sequence(s) have a frame count that is not a multiple of "
                f"{FRAMES_PER_SEQUENCE}; their leftover frames were dropped"
            )
        load = lambda paths, s=image_size: np.stack([cityscapes_frame(p, s) for p in paths])
        splits.append(common.SplitPlan(split, items, load=load))
    return common.ConversionPlan("cityscapes", splits, {"image_size": image_size}, notes)

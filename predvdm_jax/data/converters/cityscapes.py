"""Cityscapes sequences (spec §A.8, MCVD's converter): 30-frame clips, 128×128 RGB.

Source: ``leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
(the folder itself or the one above it); all three splits must be there. Frames of one
``(city, seq)`` are sorted by frame number, cut where the numbering has a gap (a sequence can
hold several 30-frame snippets, e.g. Frankfurt's) and each run into clips of 30; each frame is
centre-cropped to a square and resized to 128×128 with PIL LANCZOS. Expected: 2975 train /
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


def sequence_clips(frames: list[tuple[int, str]]) -> tuple[list[tuple[str, ...]], bool]:
    """The 30-frame clips of one ``(city, seq)`` from its ``(frame number, path)`` pairs, and
    whether a run of consecutive numbers left frames over (a frame missing from the download).
    Cutting at gaps keeps a missing frame from shifting every later clip across a scene cut;
    a complete download (snippets of 30 consecutive frames) gives MCVD's clips: its frames in
    order, cut into 30s."""
    runs: list[list[str]] = []
    previous = None
    for number, path in sorted(frames):
        if previous is None or number != previous + 1:
            runs.append([])
        runs[-1].append(path)
        previous = number
    clips = [
        tuple(run[i : i + FRAMES_PER_SEQUENCE])
        for run in runs
        for i in range(0, len(run) - FRAMES_PER_SEQUENCE + 1, FRAMES_PER_SEQUENCE)
    ]
    return clips, any(len(run) % FRAMES_PER_SEQUENCE for run in runs)


def plan(src: str, image_size: int = 128) -> common.ConversionPlan:
    common.require_dir(src, "Cityscapes source")
    root = _root(src)
    missing = [split for split in SPLITS if not os.path.isdir(os.path.join(root, split))]
    if missing:
        raise common.SourceError(
            f"Cityscapes source {root} has no {' or '.join(missing)} folder; unzip the whole "
            f"leftImg8bit_sequence_trainvaltest.zip (train, val and test: the configs validate "
            f"on val and evaluate on test)."
        )
    splits, notes = [], []
    for split in SPLITS:
        split_dir = os.path.join(root, split)
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
            clips, leftover = sequence_clips(sequences[key])
            items += clips
            uneven += leftover
        if not items:
            raise common.SourceError(
                f"Cityscapes source: {split_dir} holds no sequence of "
                f"{FRAMES_PER_SEQUENCE} <city>_<seq>_<frame>_leftImg8bit.png "
                f"frames."
            )
        if uneven:
            notes.append(
                f"{split}: {uneven} sequence(s) have a run of consecutive frames that is not a "
                f"multiple of {FRAMES_PER_SEQUENCE} (a frame missing from the download?); the "
                f"incomplete clips were dropped"
            )
        load = lambda paths, s=image_size: np.stack([cityscapes_frame(p, s) for p in paths])
        splits.append(common.SplitPlan(split, items, load=load))
    return common.ConversionPlan("cityscapes", splits, {"image_size": image_size}, notes)

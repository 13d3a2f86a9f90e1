"""UCF-101 (ExtDM's 64×64 protocol): every frame, RGB, resized to 64×64.

Source: a folder holding ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and the
official ``ucfTrainTestlist/{trainlist,testlist}0{1,2,3}.txt`` (the folder
``ucfTrainTestlist`` may also sit inside ``UCF-101``). ``ucf_split`` picks the
list pair; videos keep the list's order. Frames are resized whole
(``squash``, cv2 INTER_LINEAR, the KTH converter's convention of the same
authors) or centre-cropped to a square first (``center``).
"""

from __future__ import annotations

import os

import numpy as np

from predvdm_jax.data.converters import common


def _lists_dir(src: str) -> str:
    for folder in (
        os.path.join(src, "ucfTrainTestlist"),
        os.path.join(src, "UCF-101", "ucfTrainTestlist"),
    ):
        if os.path.isdir(folder):
            return folder
    raise common.SourceError(
        f"UCF-101 source {src} has no ucfTrainTestlist folder; unzip "
        f"UCF101TrainTestSplits-RecognitionTask.zip into it."
    )


def _read_list(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise common.SourceError(
            f"UCF-101 split list {path} does not exist; expected the official "
            f"ucfTrainTestlist files."
        )
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _resolve(videos_dir: str, entry: str, index: dict[str, str]) -> str:
    path = os.path.join(videos_dir, entry)
    if os.path.isfile(path):
        return path
    # The lists spell some classes differently from the folders (HandStandPushups).
    found = index.get(os.path.basename(entry).lower())
    if found is None:
        raise common.SourceError(
            f"UCF-101: {entry} (from the split list) is not in {videos_dir}; "
            f"unrar UCF101.rar completely."
        )
    return found


def ucf_frames(bgr_frames, image_size: int = 64, crop: str = "squash") -> np.ndarray:
    cv2 = common.import_cv2()
    return np.stack(
        [
            common.resize_frame(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), image_size, crop)
            for f in bgr_frames
        ]
    ).astype(np.uint8)


def plan(
    src: str, ucf_split: int = 1, ucf_crop: str = "squash", image_size: int = 64
) -> common.ConversionPlan:
    common.require_dir(src, "UCF-101 source")
    if ucf_split not in (1, 2, 3):
        raise ValueError(f"ucf_split must be 1, 2 or 3, got {ucf_split!r}.")
    if ucf_crop not in ("squash", "center"):
        raise ValueError(f"ucf_crop must be 'squash' or 'center', got {ucf_crop!r}.")
    videos_dir = os.path.join(src, "UCF-101")
    if not os.path.isdir(videos_dir):
        raise common.SourceError(
            f"UCF-101 source {src} has no UCF-101 folder; expected "
            f"UCF-101/<Class>/v_<Class>_gXX_cYY.avi from UCF101.rar."
        )
    lists = _lists_dir(src)
    index = {
        name.lower(): os.path.join(root, name)
        for root, _, names in os.walk(videos_dir)
        for name in names
        if name.endswith(".avi")
    }
    splits, short_videos = [], []
    for split, stem in (("train", "trainlist"), ("test", "testlist")):
        entries = _read_list(os.path.join(lists, f"{stem}0{ucf_split}.txt"))
        items = [_resolve(videos_dir, e, index) for e in entries]
        load = lambda path, s=image_size, c=ucf_crop: ucf_frames(
            common.decode_video_frames(path, short_videos), s, c
        )
        splits.append(common.SplitPlan(split, items, load=load))
    options = {"ucf_split": ucf_split, "ucf_crop": ucf_crop, "image_size": image_size}
    return common.ConversionPlan("ucf101", splits, options, short_videos=short_videos)

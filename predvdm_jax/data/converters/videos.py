"""Your own videos: one sub-folder of ``--src`` per split, each video one file or frame folder.

Source: ``<src>/<split>/`` for every split (``train``, ``test``, ``val`` … any name not
starting with ``.``). A split's videos are its direct children, in natural name order
(``clip_2`` before ``clip_10``): video files (GIF, MP4, AVI … ``VIDEO_EXTENSIONS``) and
sub-folders holding one frame image per frame (natural name order); deeper folders are not
read. Frames are read, cropped to their central square and Lanczos-resized to
``image_size`` as ``scripts/sample.py --video`` does (``data/video_files.py``); ``gray``
stores them gray ``(H, W)`` (PIL's ``L``), otherwise RGB (gray sources repeated to 3
channels), so every video of a split has one frame shape.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from predvdm_jax.data import video_files
from predvdm_jax.data.converters import common
from predvdm_jax.data.hdf5 import natural_key

VIDEO_EXTENSIONS = (".gif",) + video_files.FFMPEG_EXTENSIONS
_LAYOUT = "one sub-folder per split (train/, test/ …) holding video files or frame folders"


def video_frames(path: str, image_size: int = 64, gray: bool = False) -> np.ndarray:
    """Every frame of a video file or frame folder as uint8 ``(T, size, size[, 3])``."""
    try:
        frames = video_files.square_frames(path, image_size, gray)
    except (ValueError, OSError) as err:  # one line naming the file and the fix
        raise common.SourceError(str(err)) from None
    return frames[..., 0] if gray else frames


def _split_items(split_dir: str) -> tuple[list[str], list[str]]:
    """The split's videos (paths, natural order) and the names of the files it ignores."""
    items, ignored = [], []
    for name in sorted(os.listdir(split_dir), key=natural_key):
        path = os.path.join(split_dir, name)
        if name.startswith("."):
            continue
        if os.path.isdir(path):
            if not any(f.lower().endswith(video_files.IMAGE_EXTENSIONS) for f in os.listdir(path)):
                raise common.SourceError(
                    f"videos: folder {path!r} holds no frame images "
                    f"({', '.join(video_files.IMAGE_EXTENSIONS)}); a split's sub-folders are "
                    f"frame folders, one video each: put its frames there or remove it."
                )
            items.append(path)
        elif name.lower().endswith(VIDEO_EXTENSIONS):
            items.append(path)
        elif name.lower().endswith(video_files.IMAGE_EXTENSIONS):
            raise common.SourceError(
                f"videos: {path!r} is an image directly in the split folder; put each video's "
                f"frame images in a sub-folder of its own ({split_dir}/<video>/)."
            )
        else:
            ignored.append(name)
    return items, ignored


def plan(src: str, image_size: int = 64, gray: bool = False) -> common.ConversionPlan:
    common.require_dir(src, "videos source")
    split_names = sorted(
        (
            n
            for n in os.listdir(src)
            if not n.startswith(".") and os.path.isdir(os.path.join(src, n))
        ),
        key=natural_key,
    )
    if not split_names:
        raise common.SourceError(f"videos source {src!r} has no split folders; expected {_LAYOUT}.")
    splits, notes = [], []
    load = functools.partial(video_frames, image_size=image_size, gray=gray)
    for name in split_names:
        items, ignored = _split_items(os.path.join(src, name))
        if not items:
            raise common.SourceError(
                f"videos: split folder {os.path.join(src, name)!r} holds no videos "
                f"({', '.join(VIDEO_EXTENSIONS)} files or frame folders); add some or remove it."
            )
        if ignored:
            notes.append(f"{name}: ignored {len(ignored)} other file(s), e.g. {ignored[0]!r}.")
        splits.append(common.SplitPlan(name, items, load=load))
    options = {"image_size": image_size, "gray": bool(gray)}
    return common.ConversionPlan("videos", splits, options, notes)

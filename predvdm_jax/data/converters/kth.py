"""KTH human actions (spec §A.4): every frame, BGR→gray, 64×64, grayscale uint8.

Source: the six official per-action zips (``boxing.zip`` …) or their unzipped
folders ``<action>/personNN_<action>_dK_uncomp.avi``. Splits:

- ``mcvd`` (PredVDM/MCVD): persons 1–20 → ``train`` (479 videos), 21–25 →
  ``test`` (120). The original calls the test split ``valid``.
- ``rvd``: persons 11–18 → ``train``, 1,4,19,20,21,23,24,25 → ``valid``,
  2,3,5–10,22 → ``test``.

Videos are ordered person by person in the split's person list, then by file name
(action, then setting), as the original's split lists (``convert_MCVD_setting`` loops person
→ action → setting): video ``i`` of a split is the original's video ``i``, so evaluation clips
spread over the videos pick the same ones.

A folder source may hold its videos at any depth (a zip unzipped into an extra folder) and
with any case of extension; an action with an empty folder falls back to its zip.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
import zlib

import numpy as np

from predvdm_jax.data.converters import common

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
KNOWN_MISSING = ("person13_handclapping_d3",)
SPLITS = {  # each split's persons in the original lists' order
    "mcvd": {"train": tuple(range(1, 21)), "test": tuple(range(21, 26))},
    "rvd": {
        "train": tuple(range(11, 19)),
        "valid": (19, 20, 21, 23, 24, 25, 1, 4),
        "test": (22, 2, 3, 5, 6, 7, 8, 9, 10),
    },
}
_NAME = re.compile(r"^person(\d\d)_([a-z]+)_d(\d)_uncomp\.avi$", re.IGNORECASE)


def _find_videos(src: str) -> dict[str, tuple[str, str | None]]:
    """``stem → (path, zip member or None)`` for every KTH video in the source."""
    found = {}
    for action in ACTIONS:
        folder, archive = os.path.join(src, action), os.path.join(src, action + ".zip")
        in_folder = {}
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            for name in sorted(names):
                if _NAME.match(name):
                    _add(in_folder, _stem(name), os.path.join(root, name), None)
        if in_folder:
            for stem, (path, member) in in_folder.items():
                _add(found, stem, path, member)
        elif os.path.isfile(archive):
            try:
                with zipfile.ZipFile(archive) as zf:
                    members = zf.namelist()
            except zipfile.BadZipFile as e:
                raise common.SourceError(
                    f"KTH source: {archive} is not a readable zip ({e}); re-download it."
                ) from e
            for member in members:
                name = os.path.basename(member)
                if _NAME.match(name):
                    _add(found, _stem(name), archive, member)
        elif not os.path.isdir(folder):
            raise common.SourceError(
                f"KTH source {src} has no '{action}' folder or {action}.zip; expected the six "
                f"per-action zips or folders ({', '.join(ACTIONS)}); for a partial KTH or other "
                f"videos use --dataset=videos with one sub-folder per split (train/, test/)."
            )
    return found


def _add(found: dict, stem: str, path: str, member: str | None) -> None:
    """Records ``stem``'s file; a second file of the same video is a ``SourceError`` (which one a
    walk meets last depends on the file system's order)."""
    if stem in found:
        names = [p if m is None else f"{m} in {p}" for p, m in (found[stem], (path, member))]
        raise common.SourceError(
            f"KTH source: {stem} is in two files, {names[0]} and {names[1]}; keep one of them."
        )
    found[stem] = (path, member)


def _stem(name: str) -> str:
    """``person01_boxing_d1`` of a video file name in any case."""
    return name[: -len("_uncomp.avi")].lower()


def kth_frames(bgr_frames, image_size: int = 64, crop: str = "squash") -> np.ndarray:
    """The original's preprocessing: cv2 BGR→gray, then cv2.resize (INTER_LINEAR)."""
    cv2 = common.import_cv2()
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in bgr_frames]
    return np.stack([common.resize_frame(g, image_size, crop) for g in gray]).astype(np.uint8)


def _load(item, image_size: int, crop: str, short_videos: list[str]) -> np.ndarray:
    path, member = item[2], item[3]
    if member is None:
        return kth_frames(common.decode_video_frames(path, short_videos), image_size, crop)
    tmp_dir = tempfile.mkdtemp(prefix="kth_")
    try:
        try:
            with zipfile.ZipFile(path) as zf:
                extracted = zf.extract(member, tmp_dir)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise common.SourceError(
                f"KTH source: {member} in {path} cannot be extracted ({err}); the zip is "
                f"damaged, re-download it."
            ) from None
        frames = common.decode_video_frames(extracted, short_videos)
        return kth_frames(frames, image_size, crop)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def plan(
    src: str, kth_split: str = "mcvd", kth_crop: str = "squash", image_size: int = 64
) -> common.ConversionPlan:
    common.require_dir(src, "KTH source")
    if kth_split not in SPLITS:
        raise ValueError(f"kth_split must be one of {sorted(SPLITS)}, got {kth_split!r}.")
    if kth_crop not in ("squash", "center"):
        raise ValueError(f"kth_crop must be 'squash' or 'center', got {kth_crop!r}.")
    found = _find_videos(src)
    notes = []
    expected = {
        f"person{p:02d}_{a}_d{d}" for p in range(1, 26) for a in ACTIONS for d in range(1, 5)
    }
    for stem in KNOWN_MISSING:
        if stem not in found:
            notes.append(
                f"{stem} is absent from the official release (known); 599 videos, not 600."
            )
    missing = sorted(expected - set(found) - set(KNOWN_MISSING))
    if missing:
        notes.append(
            f"{len(missing)} expected video(s) not found, e.g. {missing[:3]}; the splits "
            f"are smaller than the published ones."
        )
    splits, short_videos = [], []
    for split_name, persons in SPLITS[kth_split].items():
        items = []
        for stem, (path, member) in found.items():
            person, action = int(stem[6:8]), stem.split("_")[1]
            if person in persons:
                items.append((f"{action}/{stem}_uncomp.avi", stem, path, member))
        items.sort(key=lambda item: (persons.index(int(item[1][6:8])), item[1]))
        splits.append(
            common.SplitPlan(
                split_name,
                items,
                load=lambda item, s=image_size, c=kth_crop: _load(item, s, c, short_videos),
            )
        )
    options = {"kth_split": kth_split, "kth_crop": kth_crop, "image_size": image_size}
    return common.ConversionPlan("kth", splits, options, notes, short_videos=short_videos)

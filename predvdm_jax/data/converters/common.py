"""Shared machinery of the dataset converters: plans, sharded resumable writing, summaries.

A converter inspects its source and returns a ``ConversionPlan``: per split a
deterministic list of items (files, records, indices) and a function that
turns one item into a uint8 video ``(T, H, W)`` or ``(T, H, W, 3)``. Shard
``k`` of a split always holds the videos of items ``[(k-1)·n, k·n)`` (n =
``vids_per_shard``), so a finished ``shard_NNNN.hdf5`` can be skipped without
decoding anything, and an interrupted run resumes to exactly the files an
uninterrupted one writes. ``<out>/conversion.json`` records the settings; a
resume with different settings is refused instead of mixing two conversions.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from absl import logging

from predvdm_jax.data import hdf5, manifest as manifest_lib
from predvdm_jax.data.resize import center_square

DEFAULT_VIDS_PER_SHARD = 1000
_FINISH = "re-run the scripts/prepare_data.py command that made it to finish it."
RESUME_HINT = "Once it is fixed, run the same command again to resume (finished shards are kept)."


class SourceError(ValueError):
    """The source folder/files of a conversion are not what the converter expects."""


@dataclasses.dataclass
class SplitPlan:
    """One output split: ordered items and how to turn an item into a video.

    ``load(item)`` returns a uint8 video, or None to skip the item (say why in
    the plan's notes). Sequential sources (tf.data) give ``load_range(start,
    stop)`` instead, yielding the videos of items ``start … stop-1`` in order.
    """

    name: str
    items: Sequence[Any]
    load: Callable[[Any], np.ndarray | None] | None = None
    load_range: Callable[[int, int], Iterable[np.ndarray | None]] | None = None

    def __post_init__(self):
        if (self.load is None) == (self.load_range is None):
            raise ValueError(f"split {self.name!r}: give exactly one of load / load_range.")


@dataclasses.dataclass
class ConversionPlan:
    dataset: str
    splits: list[SplitPlan]
    options: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)
    source: str = ""  # the absolute --src (``make_plan`` sets it): a resume must read the same
    # Videos decoded to fewer frames than their files announce, filled while converting
    # (``decode_video_frames(path, short_videos)``); the summary names them.
    short_videos: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class SplitResult:
    name: str
    num_videos: int
    num_frames: int
    bytes_on_disk: int
    converted_videos: int
    skipped_items: int
    reused_shards: int
    seconds: float

    @property
    def videos_per_second(self) -> float:
        return self.converted_videos / self.seconds if self.seconds > 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    dataset: str
    out_dir: str
    splits: tuple[SplitResult, ...]
    notes: tuple[str, ...]

    def split(self, name: str) -> SplitResult:
        return next(s for s in self.splits if s.name == name)

    def __str__(self) -> str:
        lines = [f"{self.dataset} → {self.out_dir}"]
        for s in self.splits:
            rate = f"{s.videos_per_second:.2f} videos/s" if s.converted_videos else "nothing to do"
            lines.append(
                f"  {s.name}: {s.num_videos} videos, {s.num_frames} frames, "
                f"{s.bytes_on_disk / 2**20:.1f} MiB; converted {s.converted_videos} in "
                f"{s.seconds:.1f} s ({rate}), reused {s.reused_shards} finished shard(s), "
                f"skipped {s.skipped_items} item(s)"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _videos_in_order(
    split: SplitPlan, start: int, stop: int, num_workers: int
) -> Iterator[np.ndarray | None]:
    if split.load_range is not None:
        yield from split.load_range(start, stop)
        return
    if num_workers <= 1:
        for i in range(start, stop):
            yield split.load(split.items[i])
        return
    # A bounded window keeps memory flat while workers decode ahead, in order.
    window = 2 * num_workers
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        for lo in range(start, stop, window):
            yield from pool.map(split.load, split.items[lo : min(lo + window, stop)])


def _split_totals(split_dir: str) -> tuple[int, int, int]:
    """Videos, frames and bytes on disk of the split's shards (none: all 0)."""
    if not hdf5.shard_paths(split_dir):
        return 0, 0, 0
    shards = hdf5.VideoShards(split_dir)
    return len(shards), int(shards.frame_counts.sum()), sum(map(os.path.getsize, shards.paths))


def run_plan(
    plan: ConversionPlan,
    out_dir: str,
    vids_per_shard: int = DEFAULT_VIDS_PER_SHARD,
    num_workers: int = 1,
    progress: bool = True,
    compression: str | None = "lzf",
    on_video: Callable[[str, int], None] | None = None,
) -> ConversionSummary:
    """Writes every split of ``plan`` under ``out_dir/<split>/`` and returns a summary.

    ``on_video(split, item_index)`` runs after each written video (progress
    hooks; tests raise from it to simulate an interruption).
    """
    if vids_per_shard < 1:
        raise ValueError(f"vids_per_shard must be >= 1, got {vids_per_shard}.")
    empty = [s.name for s in plan.splits if not s.items]
    if empty:
        raise SourceError(
            f"{plan.dataset}: no source video for split(s) {', '.join(empty)} (see the notes: "
            f"{'; '.join(plan.notes) or 'none'}); check --src and the split options."
        )
    manifest = {
        "dataset": plan.dataset,
        "options": plan.options,
        "source": plan.source,
        "vids_per_shard": vids_per_shard,
        "items": {s.name: len(s.items) for s in plan.splits},
        "compression": compression,
    }
    manifest_lib.check_manifest(out_dir, manifest)
    from tqdm import tqdm

    results = []
    for split in plan.splits:
        split_dir = os.path.join(out_dir, split.name)
        hdf5.mark_unfinished(split_dir, _FINISH)
        num_items = len(split.items)
        num_shards = -(-num_items // vids_per_shard)
        started = time.perf_counter()
        converted = skipped = reused = 0
        frame_shape = None  # the split's, from its first shard: every later one must match
        bar = tqdm(
            total=num_items,
            desc=f"{plan.dataset} {split.name}",
            unit="video",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        with bar:
            for shard in range(1, num_shards + 1):
                start, stop = (shard - 1) * vids_per_shard, min(shard * vids_per_shard, num_items)
                path = hdf5.shard_path(split_dir, shard)
                if os.path.exists(path):
                    reused += 1
                    bar.update(stop - start)
                    frame_shape = frame_shape or hdf5.shard_frame_shape(path)
                    continue
                try:
                    written = hdf5.write_shard(
                        path,
                        _shard_videos(plan.dataset, split, start, stop, num_workers, bar, on_video),
                        compression,
                        frame_shape,
                    )
                except SourceError as err:
                    raise SourceError(f"{err} {RESUME_HINT}") from None
                if written:
                    frame_shape = frame_shape or hdf5.shard_frame_shape(path)
                converted, skipped = converted + written, skipped + (stop - start - written)
                bar.set_postfix(written=converted, skipped=skipped)
        hdf5.mark_finished(split_dir)
        seconds = time.perf_counter() - started
        videos, frames, size = _split_totals(split_dir)
        results.append(
            SplitResult(split.name, videos, frames, size, converted, skipped, reused, seconds)
        )
    notes = list(plan.notes)
    if plan.short_videos:
        short = sorted(plan.short_videos)
        more = f"; and {len(short) - 5} more" if len(short) > 5 else ""
        notes.append(
            f"{len(short)} video(s) decoded to fewer frames than their headers announce and were "
            f"written shorter (truncated or damaged files: re-download them and convert into a "
            f"new --out): {'; '.join(short[:5])}{more}"
        )
    return ConversionSummary(plan.dataset, out_dir, tuple(results), tuple(notes))


def _shard_videos(
    dataset: str,
    split: SplitPlan,
    start: int,
    stop: int,
    num_workers: int,
    bar,
    on_video: Callable[[str, int], None] | None,
) -> Iterator[np.ndarray]:
    """The videos of items ``start … stop-1``, skipped items dropped; ``on_video`` runs
    after each one is written (the generator resumes once the writer has added it). A source
    that gives fewer (a ``load_range`` ending early) is a ``SourceError``."""
    given = 0
    for index, video in zip(range(start, stop), _videos_in_order(split, start, stop, num_workers)):
        given += 1
        bar.update(1)
        if video is not None:
            yield video
            if on_video is not None:
                on_video(split.name, index)
    if given < stop - start:
        raise SourceError(
            f"{dataset} {split.name}: the source gave {given} of the {stop - start} videos of "
            f"items {start}-{stop - 1} (it holds fewer than it announced); check the source "
            f"(re-prepare or re-download it) and run again."
        )


def first_line(err: Exception) -> str:
    """The first sentence of an error's first line (its type when it has no text)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(err).__name__


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise SourceError(
            f"{what}: {path!r} is not a folder; pass the folder that holds the "
            f"downloaded dataset as --src."
        )
    return path


def decode_video_frames(path: str, short_videos: list[str] | None = None) -> list[np.ndarray]:
    """All frames of a video file as BGR uint8 ``(H, W, 3)`` arrays (OpenCV). A file that
    decodes to fewer frames than its header announces is logged and, with ``short_videos`` (a
    plan's), listed there for the summary."""
    cv2 = import_cv2()
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise SourceError(
            f"OpenCV cannot open {path!r}; the file is damaged or its codec is missing."
        )
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # the container's count; may be 0
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise SourceError(f"{path!r} decoded to 0 frames; the file is damaged, re-download it.")
    if announced > len(frames):
        logging.warning(
            "%s: decoded %d of the %d frames its header announces; the file is truncated or "
            "damaged (re-download it) and its video is shorter",
            path,
            len(frames),
            announced,
        )
        if short_videos is not None:
            short_videos.append(f"{path} ({len(frames)} of {announced} frames)")
    return frames


def import_cv2():
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "Decoding videos needs OpenCV: pip install -e '.[video]' in the project's folder "
            "(opencv-python-headless)."
        ) from e
    return cv2


def resize_frame(frame: np.ndarray, size: int, crop: str) -> np.ndarray:
    """``squash``: resize the whole frame to size×size (cv2 INTER_LINEAR, as the originals);
    ``center``: take the central square first."""
    cv2 = import_cv2()
    if crop == "center":
        frame = center_square(frame)
    elif crop != "squash":
        raise ValueError(f"crop must be 'squash' or 'center', got {crop!r}.")
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)

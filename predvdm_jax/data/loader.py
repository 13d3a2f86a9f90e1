"""Clip loaders on grain: random training windows and fixed evaluation windows.

Every clip is a pure function of ``(seed, global example index)``:

* training example ``g`` reads video ``perm_epoch[g % V]`` (a fresh permutation
  per epoch ``g // V``) from a uniform start in ``{0, …, len − T}`` — every
  valid start is reachable (the original never draws the last one) — and is
  flipped horizontally with probability ½ when enabled;
* evaluation clip ``i`` of ``N`` reads video ``round(i·(V−1)/(N−1))`` (the
  original's even spread of N clips over V videos) from a start drawn from
  ``(eval seed, i)``, so two evaluations see the same clips.

Process ``p`` of ``P`` reads only its ``B/P`` examples of each global batch of
``B``. Because clips depend on indices only, the iterator state is just the
number of examples served: after ``set_state`` it yields exactly the batches an
uninterrupted run would, whatever the number of reader processes before and after.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from predvdm_jax.data.hdf5 import DatasetError, VideoShards

_TRAIN_STREAM, _FLIP_STREAM, _EVAL_STREAM = 1, 2, 3
_BATCH_KEYS = {"frames": "video", "latents": "latents"}  # a split's kind → its batch key


def to_model_range(clip_uint8: np.ndarray) -> np.ndarray:
    """uint8 0..255 → float32 in [-1, 1]."""
    return clip_uint8.astype(np.float32) / 127.5 - 1.0


def _model_input(clip: np.ndarray, kind: str) -> np.ndarray:
    """A clip as stored → float32: frames to [-1, 1], latents unchanged."""
    return to_model_range(clip) if kind == "frames" else clip.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, num_videos: int, epoch: int) -> np.ndarray:
    """The order of the videos in training epoch ``epoch`` (drawing it for every clip cost
    0.3 ms at 43k videos, about a fifth of reading the clip)."""
    order = np.random.default_rng([seed, _TRAIN_STREAM, epoch]).permutation(num_videos)
    order.flags.writeable = False
    return order


@dataclasses.dataclass(frozen=True)
class TrainWindows:
    """Maps a global example index to ``(video, start, flip)``."""

    frame_counts: np.ndarray
    num_frames: int
    seed: int
    horizontal_flip: bool = False

    def __call__(self, g: int) -> tuple[int, int, bool]:
        num_videos = len(self.frame_counts)
        epoch, pos = divmod(int(g), num_videos)
        video = int(_epoch_order(self.seed, num_videos, epoch)[pos])
        rng = np.random.default_rng([self.seed, _FLIP_STREAM, int(g)])
        start = int(rng.integers(0, int(self.frame_counts[video]) - self.num_frames + 1))
        flip = bool(self.horizontal_flip and rng.integers(2))
        return video, start, flip


def eval_windows(
    frame_counts: np.ndarray, num_clips: int, num_frames: int, seed: int
) -> list[tuple[int, int]]:
    """The fixed ``(video, start)`` of each evaluation clip."""
    num_videos = len(frame_counts)
    windows = []
    for i in range(num_clips):
        video = 0 if num_clips == 1 else int(round(i * (num_videos - 1) / (num_clips - 1)))
        rng = np.random.default_rng([seed, _EVAL_STREAM, i])
        windows.append((video, int(rng.integers(0, int(frame_counts[video]) - num_frames + 1))))
    return windows


def _local_share(batch_size: int) -> tuple[int, int]:
    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ValueError(
            f"global batch {batch_size} is not divisible by the {count} processes; "
            f"pick a batch size that is a multiple of {count}."
        )
    return batch_size // count, index


class ClipIterator:
    """Iterator of batches ``{'video' or 'latents': (B, T, H, W, C) float32}``.

    With a ``sharding`` the batch is a global ``jax.Array`` assembled from every
    process's share; without one it is the process-local numpy batch.
    ``get_state``/``set_state`` save and restore the position as the number of examples
    served (JSON-serialisable), so a state restores under any ``num_workers`` and any
    ``batch_size``: a run resumed with another batch size goes on from the next whole batch
    (it skips fewer than ``batch_size`` examples, and repeats none). The state also records
    ``stream`` (what decides the clips: seed, clip length, flip, video count and lengths), and a
    state of another stream is refused.
    With ``num_workers`` > 0 the batches are read in that many spawned processes
    (grain's ``mp_prefetch``): h5py serialises every call within a process, so
    threads alone cannot read faster than one core. ``close`` stops them.
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        key: str,
        batch_size: int,
        sharding=None,
        *,
        num_threads: int = 1,
        prefetch: int = 8,
        num_workers: int = 0,
        stream: dict | None = None,
    ):
        self._batches = batches
        self._stream = dict(stream or {})
        self.key = key
        self.batch_size = batch_size  # global examples per batch
        self.sharding = sharding
        self._num_threads, self._prefetch, self._num_workers = num_threads, prefetch, num_workers
        self._position = 0
        self._iter = None

    def _open(self):
        workers = self._num_workers
        ahead = -(-self._prefetch // workers) if workers else self._prefetch  # batches per reader
        dataset = self._batches[self._position :].to_iter_dataset(
            grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=ahead)
        )
        if workers:
            if not flags.FLAGS.is_parsed():  # grain's workers read an absl flag; outside an absl
                flags.FLAGS.mark_as_parsed()  # app nothing has parsed them, so take the defaults
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=ahead)
            )
        return iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = self._open()
        batch = next(self._iter)
        self._position += 1
        if self._num_workers:  # own the memory: grain hands over shared-memory blocks
            batch = {k: np.array(v) for k, v in batch.items()}
        if self.sharding is not None:
            batch = {
                k: jax.make_array_from_process_local_data(self.sharding, v)
                for k, v in batch.items()
            }
        return batch

    def get_state(self) -> dict:
        return {"examples": self._position * self.batch_size, **self._stream}

    def set_state(self, state: dict) -> None:
        self.close()
        if "examples" not in state:
            raise ValueError(
                f"the data iterator state {state} records no examples served (it predates "
                f"that record); resume with the code that wrote it, or start a new workdir"
            )
        differ = [
            f"{key} {state[key]!r} (now {value!r})"
            for key, value in self._stream.items()
            if key in state and state[key] != value
        ]
        if differ:
            raise ValueError(
                f"the data position to resume ({state['examples']} examples served) is of another "
                f"clip stream: {', '.join(differ)}; resume with the run's seed, clip length, flip "
                f"and training split, or pass a new --workdir to start over (with "
                f"--config.train.init_from=<a bundle of this run> to keep its weights)."
            )
        self._position = -(-int(state["examples"]) // self.batch_size)

    def close(self) -> None:
        """Stops the reading threads or processes; the next batch starts them again."""
        if self._iter is not None:
            self._iter.close()
        self._iter = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def reading_options(data: Any) -> dict:
    """``train_iterator``'s reading keywords from a config's ``data`` section."""
    return dict(
        num_threads=data.num_threads,
        prefetch=data.prefetch,
        num_workers=data.num_workers,
        preload_max_bytes=int(data.preload_max_gb * 1e9),
    )


def train_iterator(
    split_dir: str,
    num_frames: int,
    batch_size: int,
    seed: int,
    *,
    kind: str = "frames",
    horizontal_flip: bool = False,
    sharding=None,
    num_threads: int = 1,
    prefetch: int = 8,
    num_workers: int = 0,
    preload_max_bytes: int = 0,
) -> ClipIterator:
    """An endless stream of random training clips, this process's share of each batch.

    A split of at most ``preload_max_bytes`` (uncompressed) is read into memory
    first (``VideoShards.load_into_memory``); 0 always reads from disk. Worker
    processes (``num_workers``) read only from disk: a preloaded split is served
    from this process's memory, faster than any worker could hand it over.
    """
    shards = VideoShards(split_dir, kind)
    shards.check_min_length(num_frames, "use shorter training clips (data.frames_per_sample)")
    if shards.nbytes <= preload_max_bytes:
        shards.load_into_memory()
    windows = TrainWindows(shards.frame_counts, num_frames, seed, horizontal_flip)
    local, process = _local_share(batch_size)

    def read(i: int) -> np.ndarray:
        step, j = divmod(int(i), local)
        video, start, flip = windows(step * batch_size + process * local + j)
        clip = shards.read_clip(video, start, num_frames)
        if flip:
            clip = clip[:, :, ::-1]
        return _model_input(clip, kind)

    key = _BATCH_KEYS[kind]
    batches = (
        grain.MapDataset.range(2**40)
        .map(read)
        .batch(local, drop_remainder=True)
        .map(lambda x: {key: x})
    )
    return ClipIterator(
        batches,
        key,
        batch_size,
        sharding,
        num_threads=num_threads,
        prefetch=prefetch,
        num_workers=0 if shards.in_memory else num_workers,
        stream={
            "seed": int(seed),
            "frames": int(num_frames),
            "videos": len(shards),
            "video_lengths": _lengths_digest(shards.frame_counts),
            "horizontal_flip": bool(horizontal_flip),
        },
    )


def _lengths_digest(frame_counts: np.ndarray) -> str:
    """A short digest of a split's video lengths, which decide its clips' windows: a position
    saved on one split does not resume on another of as many videos."""
    return "sha256:" + hashlib.sha256(np.asarray(frame_counts, np.int64).tobytes()).hexdigest()[:16]


def check_frame_size(shards: VideoShards, image_size: int, channels: int) -> None:
    """Raises ``DatasetError`` unless the split's frames are ``image_size``² with ``channels``,
    naming a fix for what differs: the size is ``scripts/prepare_data.py --image_size``'s, the
    channel count the dataset's own (no prepare_data option changes it)."""
    height, width = shards.frame_shape[:2]
    size_differs = (height, width) != (image_size, image_size)
    if not size_differs and shards.channels == channels:
        return
    kind = {1: "1-channel (gray)", 3: "3-channel (RGB)"}.get(channels, f"{channels}-channel")
    if shards.channels == channels:
        fix = (
            f"write the split with {image_size}x{image_size} frames (scripts/prepare_data.py "
            f"--image_size={image_size}; frames of your own: resize them before "
            f"hdf5.write_split)"
        )
    elif not size_differs:
        fix = (
            f"use a split of {kind} frames (scripts/prepare_data.py has no option to change a "
            f"dataset's channel count)"
        )
    else:
        fix = (
            f"use a split of {image_size}x{image_size} {kind} frames (scripts/prepare_data.py "
            f"--image_size={image_size} sets the size; the channel count is the dataset's)"
        )
    raise DatasetError(
        f"{shards.split_dir} holds {height}x{width} frames with {shards.channels} channel(s), "
        f"but the model takes data.image_size={image_size} with data.channels={channels}; {fix}"
    )


def eval_iterator(
    split_dir: str,
    num_frames: int,
    num_clips: int,
    batch_size: int,
    seed: int,
    *,
    kind: str = "frames",
    sharding=None,
    num_threads: int = 1,
    prefetch: int = 8,
    image_size: int | None = None,
    channels: int | None = None,
    clips_per_batch: int | None = None,
    field: str = "",
    fewer_frames: str = "use shorter clips",
) -> ClipIterator:
    """The fixed evaluation clips in batches of ``batch_size`` rows, ``clips_per_batch``
    (default ``batch_size``) of them clips: batch ``b`` holds clips ``b·clips_per_batch`` on,
    whatever ``batch_size`` (rounded up to fill the devices) is. The other rows repeat clip 0;
    every batch carries ``mask`` (1 for real clips) and ``index`` (clip number; ``num_clips`` on
    padding rows).
    With ``image_size`` and ``channels``, frames of another size are a ``DatasetError``.
    ``field``: the config field naming ``split_dir``, which starts the split's errors;
    ``fewer_frames``: how to ask for fewer than ``num_frames`` (a flag or config field)."""
    clips_per_batch = batch_size if clips_per_batch is None else clips_per_batch
    if num_clips < 1 or not 1 <= clips_per_batch <= batch_size:
        raise ValueError(
            f"need num_clips >= 1 and 1 <= clips_per_batch <= batch_size, got {num_clips}, "
            f"{clips_per_batch} and {batch_size}"
        )
    try:
        shards = VideoShards(split_dir, kind)
        if image_size is not None:
            check_frame_size(shards, image_size, channels)
        shards.check_min_length(num_frames, fewer_frames)
    except DatasetError as err:
        if field:
            raise DatasetError(f"{field}: {err}") from None
        raise
    windows = eval_windows(shards.frame_counts, num_clips, num_frames, seed)
    local, process = _local_share(batch_size)
    num_batches = -(-num_clips // clips_per_batch)

    def read(i: int) -> dict:
        step, j = divmod(int(i), local)
        row = process * local + j
        clip_index = step * clips_per_batch + row
        real = row < clips_per_batch and clip_index < num_clips
        video, start = windows[clip_index if real else 0]
        clip = _model_input(shards.read_clip(video, start, num_frames), kind)
        index = clip_index if real else num_clips  # padding: past the last clip, none of them
        return {"clip": clip, "mask": np.float32(real), "index": np.int32(index)}

    key = _BATCH_KEYS[kind]

    def rename(batch):
        batch[key] = batch.pop("clip")
        return batch

    batches = (
        grain.MapDataset.range(num_batches * local)
        .map(read)
        .batch(local, drop_remainder=True)
        .map(rename)
    )
    return ClipIterator(
        batches, key, batch_size, sharding, num_threads=num_threads, prefetch=prefetch
    )

"""Video HDF5 shards in the PredVDM / MCVD layout (spec §A.1).

A split is a folder of ``shard_NNNN.hdf5`` files. Each shard holds a group
``len`` with one scalar dataset per video (its frame count) and a group
``"<k>"`` per video with one dataset per frame, named ``"0"`` … ``"T-1"``.
Frames are ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB) uint8; the latent
cache uses the same structure with ``(h, w, c)`` float16/float32 frames.
The empty ``videos`` group of the original is written too, so files made
here load unchanged in the PyTorch code.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import os
from typing import Iterable, Sequence

import h5py
import numpy as np

SHARD_NAME = "shard_{:04d}.hdf5"
FRAME_DTYPES = (np.uint8,)
LATENT_DTYPES = (np.float16, np.float32)


class DatasetError(ValueError):
  """A dataset on disk does not have the expected layout."""


def shard_path(split_dir: str, shard_number: int) -> str:
  return os.path.join(split_dir, SHARD_NAME.format(shard_number))


class ShardWriter:
  """Writes one shard atomically: to ``<name>.tmp`` first, renamed on close.

  An interrupted write therefore never leaves a file that looks finished.
  ``kind='latents'`` accepts float16/float32 ``(h, w, c)`` frames (latent caches).
  """

  def __init__(self, path: str, compression: str | None = "lzf", kind: str = "frames"):
    if kind not in ("frames", "latents"):
      raise ValueError(f"kind must be 'frames' or 'latents', got {kind!r}.")
    self.dtypes = FRAME_DTYPES if kind == "frames" else LATENT_DTYPES
    self.path = path
    self.tmp_path = path + ".tmp"
    self.compression = compression
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = h5py.File(self.tmp_path, "w")
    self._file.create_group("len")
    self._file.create_group("videos")
    self.num_videos = 0
    self._frame_shape = None

  def add_video(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
    frames = [np.asarray(f) for f in frames]
    if not frames:
      raise DatasetError(f"{self.path}: refusing to write an empty video (0 frames).")
    expected = self._frame_shape or frames[0].shape
    for f in frames:
      _check_frame(f, expected, self.path, f"video {self.num_videos}", self.dtypes)
    self._frame_shape = frames[0].shape
    group = self._file.create_group(str(self.num_videos))
    for t, frame in enumerate(frames):
      group.create_dataset(str(t), data=frame, compression=self.compression)
    self._file["len"].create_dataset(str(self.num_videos), data=len(frames))
    self.num_videos += 1

  def close(self) -> None:
    self._file.close()
    os.replace(self.tmp_path, self.path)

  def abort(self) -> None:
    self._file.close()
    if os.path.exists(self.tmp_path):
      os.remove(self.tmp_path)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_split(split_dir: str, videos: Iterable[np.ndarray], vids_per_shard: int = 1_000_000,
                compression: str | None = "lzf") -> int:
  """Writes videos (each ``(T,H,W)`` or ``(T,H,W,C)``) as shards; returns the count."""
  count, shard, writer = 0, 1, None
  try:
    for video in videos:
      if writer is None:
        writer = ShardWriter(shard_path(split_dir, shard), compression)
      writer.add_video(video)
      count += 1
      if writer.num_videos == vids_per_shard:
        writer.close()
        writer, shard = None, shard + 1
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  if writer is not None:
    writer.close()
  return count


def _check_frame(frame: np.ndarray, expected_shape, where: str, what: str,
                 dtypes=FRAME_DTYPES) -> None:
  if frame.dtype.type not in dtypes:
    names = "/".join(np.dtype(d).name for d in dtypes)
    raise DatasetError(f"{where}: {what} has frames of dtype {frame.dtype}; expected {names} "
                       f"(convert with np.clip(x, 0, 255).astype(np.uint8) for images).")
  if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[-1] not in (1, 3, 4)
                                  and dtypes is FRAME_DTYPES):
    raise DatasetError(f"{where}: {what} has a frame of shape {frame.shape}; expected (H, W) "
                       f"or (H, W, 3).")
  if tuple(frame.shape) != tuple(expected_shape):
    raise DatasetError(f"{where}: {what} has a frame of shape {frame.shape}, but the dataset's "
                       f"frames are {tuple(expected_shape)}; every frame must have one shape.")


@dataclasses.dataclass(frozen=True)
class DatasetSummary:
  split_dir: str
  num_videos: int
  frame_counts: np.ndarray
  frame_shape: tuple
  dtype: str
  value_range: tuple

  @property
  def channels(self) -> int:
    return 1 if len(self.frame_shape) == 2 else self.frame_shape[-1]

  def __str__(self) -> str:
    fc = self.frame_counts
    h, w = self.frame_shape[:2]
    return (f"{self.split_dir}: {self.num_videos} videos, {int(fc.sum())} frames "
            f"(per video min {int(fc.min())} / mean {fc.mean():.1f} / max {int(fc.max())}), "
            f"{h}x{w}, {self.channels} channel(s), {self.dtype}, "
            f"values in [{self.value_range[0]}, {self.value_range[1]}] (sampled)")


class VideoShards:
  """Random access to the videos of one split (frames or cached latents).

  Validates the layout when opened and raises ``DatasetError`` with what is
  wrong and how to fix it. File handles are opened lazily per process, so an
  instance can be used from grain's worker threads and processes.
  """

  def __init__(self, split_dir: str, kind: str = "frames"):
    if kind not in ("frames", "latents"):
      raise ValueError(f"kind must be 'frames' or 'latents', got {kind!r}.")
    self.split_dir = split_dir
    self.kind = kind
    if not os.path.isdir(split_dir):
      raise DatasetError(f"Dataset folder {split_dir!r} does not exist; create it with "
                         f"scripts/make_moving_digits.py or scripts/prepare_data.py, or fix the path.")
    self.paths = sorted(glob.glob(os.path.join(split_dir, "*.hdf5")) +
                        glob.glob(os.path.join(split_dir, "*.h5")))
    if not self.paths:
      raise DatasetError(f"Dataset folder {split_dir!r} holds no shard_*.hdf5 files; is it a split "
                         f"folder (e.g. .../train) of a converted dataset?")
    self._lengths: list[np.ndarray] = []
    for path in self.paths:
      with h5py.File(path, "r") as f:
        if "len" not in f:
          raise DatasetError(f"{path}: no 'len' group; not a PredVDM/MCVD video shard.")
        n = len(f["len"].keys())
        missing = [str(i) for i in range(n) if str(i) not in f["len"] or str(i) not in f]
        if missing:
          raise DatasetError(f"{path}: videos {missing[:5]} lack a 'len' entry or frame group; "
                             f"the shard is incomplete, re-create it.")
        self._lengths.append(np.array([int(f["len"][str(i)][()]) for i in range(n)], np.int64))
    self.frame_counts = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
    if self.frame_counts.size == 0:
      raise DatasetError(f"Dataset folder {split_dir!r} holds shards but no videos.")
    self._offsets = np.cumsum([0] + [len(l) for l in self._lengths])
    first = self._raw_frame(0, 0)
    self.frame_shape = tuple(first.shape)
    self.dtype = first.dtype
    dtypes = FRAME_DTYPES if kind == "frames" else LATENT_DTYPES
    _check_frame(first, self.frame_shape, split_dir, "video 0", dtypes)
    self._files: dict[int, h5py.File] = {}
    self._memory: list[np.ndarray] | None = None

  def __len__(self) -> int:
    return int(self.frame_counts.size)

  @property
  def channels(self) -> int:
    return 1 if len(self.frame_shape) == 2 else self.frame_shape[-1]

  def _locate(self, index: int) -> tuple[int, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"video index {index} out of range for {len(self)} videos")
    shard = bisect.bisect_right(self._offsets, index) - 1
    return shard, index - int(self._offsets[shard])

  def _file(self, shard: int) -> h5py.File:
    key = (os.getpid(), shard)
    f = self._files.get(key)
    if f is None:
      f = h5py.File(self.paths[shard], "r")
      self._files[key] = f
    return f

  def _raw_frame(self, index: int, t: int) -> np.ndarray:
    shard, local = self._locate(index)
    with h5py.File(self.paths[shard], "r") as f:
      return np.asarray(f[str(local)][str(t)])

  def check_min_length(self, num_frames: int) -> None:
    short = np.flatnonzero(self.frame_counts < num_frames)
    if short.size:
      raise DatasetError(
          f"{self.split_dir}: {short.size} video(s) are shorter than the clip length {num_frames} "
          f"(e.g. video {int(short[0])} has {int(self.frame_counts[short[0]])} frames); use a "
          f"shorter clip (data.frames_per_sample / eval horizon) or drop those videos.")

  @property
  def nbytes(self) -> int:
    """Bytes of every frame of the split, uncompressed."""
    frame = int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize
    return int(self.frame_counts.sum()) * frame

  @property
  def in_memory(self) -> bool:
    return self._memory is not None

  def load_into_memory(self) -> None:
    """Reads every video once; later clips are slices of memory.

    The PredVDM layout stores one HDF5 dataset per frame, so a clip read from
    disk costs one h5py call (holding the GIL) per frame: that, not the model,
    bounds training on small cached latents.
    """
    if self._memory is None:
      self._memory = [self.read_clip(i, 0, int(n)) for i, n in enumerate(self.frame_counts)]

  def read_clip(self, index: int, start: int, num_frames: int) -> np.ndarray:
    """Frames ``start … start+num_frames-1`` of a video as ``(T, H, W, C)``."""
    length = int(self.frame_counts[index])
    if start < 0 or start + num_frames > length:
      raise DatasetError(f"{self.split_dir}: clip [{start}, {start + num_frames}) is outside "
                         f"video {index} of {length} frames.")
    if self._memory is not None:
      return self._memory[index][start:start + num_frames].copy()
    shard, local = self._locate(index)
    # h5py's low-level calls: 0.57x the time of ``group[name][()]`` per clip (bench_loader.py).
    group = h5py.h5g.open(self._file(shard).id, str(local).encode())
    clip = np.empty((num_frames,) + self.frame_shape, self.dtype)
    for i, t in enumerate(range(start, start + num_frames)):
      try:
        frame = h5py.h5d.open(group, str(t).encode())
      except KeyError:
        raise DatasetError(f"{self.paths[shard]}: video {local} has no frame {t}; its 'len' entry "
                           f"says {length}: the shard is incomplete, re-create it.") from None
      if frame.shape != self.frame_shape or frame.dtype != self.dtype:
        raise DatasetError(f"{self.paths[shard]}: video {local} frame {t} is {frame.dtype}"
                           f"{frame.shape}, expected {self.dtype}{self.frame_shape}; re-create "
                           f"the dataset.")
      frame.read(h5py.h5s.ALL, h5py.h5s.ALL, clip[i])
    return clip[..., None] if clip.ndim == 3 else clip

  def summary(self, sample_videos: int = 16) -> DatasetSummary:
    picks = np.linspace(0, len(self) - 1, min(sample_videos, len(self))).round().astype(int)
    lo, hi = np.inf, -np.inf
    for i in picks:
      clip = self.read_clip(int(i), 0, int(min(self.frame_counts[i], 4)))
      lo, hi = min(lo, clip.min().item()), max(hi, clip.max().item())
    return DatasetSummary(self.split_dir, len(self), self.frame_counts, self.frame_shape,
                          np.dtype(self.dtype).name, (lo, hi))

  def close(self) -> None:
    for f in self._files.values():
      f.close()
    self._files.clear()

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_files"] = {}
    return state

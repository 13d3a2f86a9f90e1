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
import fcntl
import glob
import itertools
import os
import re
from typing import Iterable, Sequence

import h5py
import numpy as np

from predvdm_jax import atomic_io

SHARD_NAME = "shard_{:04d}.hdf5"
UNFINISHED = "unfinished.txt"
"""In a split folder while a resumable writer (``converters.run_plan``) fills it, holding how
to finish the split: one stopped leaves it, so its whole shards never read as a finished split."""
FRAME_DTYPES = (np.uint8,)
LATENT_DTYPES = (np.float16, np.float32)


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout."""


def damaged_shard(path: str, what: str, err: Exception) -> DatasetError:
    """The ``DatasetError`` for a shard h5py cannot read (truncated file, corrupt chunk):
    names the file, what was being read and the fix."""
    detail = " ".join(str(err).split()) or type(err).__name__
    return DatasetError(
        f"{path}: cannot read {what} ({detail}): the shard is damaged (truncated or "
        f"corrupt); delete it and re-create it (re-run the scripts/prepare_data.py, "
        f"make_moving_digits.py or encode_dataset.py command that made it) or re-download it."
    )


def _frame_count(path: str, video: int, value) -> int:
    """A video's ``len`` entry as an int, or ``DatasetError`` when it is not a whole number
    >= 1 (a string, a float, an array, a negative count)."""
    array = np.asarray(value)
    if (
        array.shape != ()
        or array.dtype.kind not in "iuf"
        or not np.isfinite(array)
        or array != np.round(array)
        or array < 1
    ):
        raise DatasetError(
            f"{path}: video {video}'s 'len' entry is {value!r}, not a frame count >= 1; the "
            f"shard is damaged: re-convert it or re-download it."
        )
    return int(array)


def shard_path(split_dir: str, shard_number: int) -> str:
    return os.path.join(split_dir, SHARD_NAME.format(shard_number))


def natural_key(text: str) -> list:
    """Sort key that orders numbers by value: ``shard_1001`` before ``shard_10000``,
    ``frame_2`` before ``frame_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def shard_paths(split_dir: str) -> list[str]:
    """The split's ``*.hdf5`` / ``*.h5`` files in shard-number order (``natural_key``).

    ``shard_{:04d}`` grows a fifth digit at shard 10000, so plain string order
    would scramble the videos. Two names with one number (``shard_1.hdf5`` and
    ``shard_0001.hdf5``) are ambiguous and refused.
    """
    paths = glob.glob(os.path.join(split_dir, "*.hdf5")) + glob.glob(
        os.path.join(split_dir, "*.h5")
    )
    keyed = sorted((natural_key(os.path.splitext(os.path.basename(p))[0]), p) for p in paths)
    for (key, path), (next_key, next_path) in zip(keyed, keyed[1:]):
        if key == next_key:
            raise DatasetError(
                f"{split_dir}: {os.path.basename(path)} and "
                f"{os.path.basename(next_path)} have the same shard number, so their "
                f"order is ambiguous; remove one."
            )
    return [p for _, p in keyed]


def mark_unfinished(split_dir: str, fix: str) -> None:
    """Marks ``split_dir`` as being written (``UNFINISHED``); ``fix`` says how to finish it."""
    os.makedirs(split_dir, exist_ok=True)
    atomic_io.write_text(os.path.join(split_dir, UNFINISHED), fix)


def mark_finished(split_dir: str) -> None:
    """Removes ``split_dir``'s ``UNFINISHED`` mark, once every shard of the split is written."""
    try:
        os.remove(os.path.join(split_dir, UNFINISHED))
    except FileNotFoundError:
        pass


def _check_finished(split_dir: str) -> None:
    """``DatasetError`` when ``split_dir`` holds an ``UNFINISHED`` mark, naming its fix."""
    path = os.path.join(split_dir, UNFINISHED)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            fix = " ".join(f.read().split())
    except (OSError, ValueError):
        fix = ""
    raise DatasetError(
        f"{split_dir} is unfinished (its writing stopped before the end); "
        f"{fix or 'run the command that wrote it again to finish it.'}"
    )


def split_dirs(root: str) -> list[str]:
    """The names of ``root``'s sub-folders that hold shards (``shard_paths``), in natural order
    (``train``, ``test``, ...); none when ``root`` is not a folder."""
    if not os.path.isdir(root):
        return []
    names = [
        name
        for name in os.listdir(root)
        if os.path.isdir(os.path.join(root, name)) and shard_paths(os.path.join(root, name))
    ]
    return sorted(names, key=natural_key)


class ShardWriter:
    """Writes one shard atomically: to ``<name>.tmp`` first, renamed on close once on the disk.

    An interrupted write therefore never leaves a file that looks finished.
    ``kind='latents'`` accepts float16/float32 ``(h, w, c)`` frames (latent caches);
    ``frame_shape`` (the split's, from its earlier shards) is the shape every frame must have.
    Not ``atomic_io.write_file``: that writes a whole file in one call, while a writer is
    open across ``add_video`` calls (the latent cache encodes a shard's videos batch by batch),
    and a shard (up to GBs) cannot be built in memory first.
    """

    def __init__(
        self,
        path: str,
        compression: str | None = "lzf",
        kind: str = "frames",
        frame_shape: tuple | None = None,
    ):
        if kind not in ("frames", "latents"):
            raise ValueError(f"kind must be 'frames' or 'latents', got {kind!r}.")
        self.kind = kind
        self.path = path
        self.tmp_path = path + ".tmp"
        self.compression = compression
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = _create_unshared(self.tmp_path)
        self._file.create_group("len")
        self._file.create_group("videos")
        self.num_videos = 0
        self._frame_shape = tuple(frame_shape) if frame_shape is not None else None

    def add_video(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
        frames = [np.asarray(f) for f in frames]
        if not frames:
            raise DatasetError(f"{self.path}: refusing to write an empty video (0 frames).")
        if self.kind == "frames" and frames[0].dtype.kind == "f":
            raise DatasetError(
                f"{self.path}: video {self.num_videos} has frames of dtype {frames[0].dtype}; "
                f"expected uint8. Convert them with {_uint8_conversion(frames)}."
            )
        expected = self._frame_shape or frames[0].shape
        for f in frames:
            _check_frame(f, expected, self.path, f"video {self.num_videos}", self.kind)
        self._frame_shape = frames[0].shape
        group = self._file.create_group(str(self.num_videos))
        for t, frame in enumerate(frames):
            group.create_dataset(str(t), data=frame, compression=self.compression)
        self._file["len"].create_dataset(str(self.num_videos), data=len(frames))
        self.num_videos += 1

    def close(self) -> None:
        self._file.close()
        atomic_io.replace_durably(self.tmp_path, self.path)

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


def _create_unshared(tmp_path: str) -> h5py.File:
    """A new HDF5 file at ``tmp_path``. A file left there by a killed writer is replaced; one
    that another process is writing is refused: HDF5's ``'w'`` would truncate it before
    finding the other's lock, and that writer would go on to rename a damaged shard into
    place. HDF5 holds an exclusive ``flock`` on every file it has open for writing."""
    for _ in range(3):
        try:
            return h5py.File(tmp_path, "x")
        except FileExistsError:
            pass
        try:
            with open(tmp_path, "rb") as left:
                try:
                    fcntl.flock(left.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    break
                os.remove(tmp_path)
        except FileNotFoundError:
            pass
    raise DatasetError(
        f"{tmp_path} is being written by another process: write a split from one process "
        f"only (not once per host of a pod), or wait for the other one to finish."
    )


def _uint8_conversion(frames: list[np.ndarray]) -> str:
    """The numpy expression that makes float frames of this range uint8 0..255: [0, 1] and
    [-1, 1] images are scaled (clipping them would give a black video), others rounded."""
    low = min(float(np.nanmin(f)) for f in frames)
    high = max(float(np.nanmax(f)) for f in frames)
    if high <= 1.0 and low >= 0.0:
        return "np.round(x * 255).astype(np.uint8)"
    if high <= 1.0 and low >= -1.0:
        return "np.round((x + 1) * 127.5).astype(np.uint8)"
    return "np.clip(np.round(x), 0, 255).astype(np.uint8)"


def write_shard(
    path: str,
    videos: Iterable[np.ndarray],
    compression: str | None = "lzf",
    frame_shape: tuple | None = None,
) -> int:
    """Writes ``videos`` as one shard through ``ShardWriter``; returns their count.

    No videos: no file. A failure, in writing or in producing a video, leaves no shard.
    ``frame_shape``: the shape of the split's frames in its earlier shards (``shard_frame_shape``).
    """
    videos = iter(videos)
    try:
        first = next(videos)
    except StopIteration:
        return 0
    with ShardWriter(path, compression, frame_shape=frame_shape) as writer:
        for video in itertools.chain([first], videos):
            writer.add_video(video)
    return writer.num_videos


def write_split(
    split_dir: str,
    videos: Iterable[np.ndarray],
    vids_per_shard: int = 1_000_000,
    compression: str | None = "lzf",
) -> int:
    """Writes videos (each ``(T,H,W)`` or ``(T,H,W,C)``) as shards of a new split; returns
    the count. A ``split_dir`` already holding shards is refused: rewriting some of them would
    leave the others, a split mixing two datasets. A failure (a bad video, or one that fails
    to be produced) keeps the shards finished before it, marked ``UNFINISHED`` so that no reader
    takes them for the split; the folders this call created are removed when they hold none (a
    failure in the first shard leaves nothing behind)."""
    if vids_per_shard < 1:
        raise ValueError(f"vids_per_shard must be >= 1, got {vids_per_shard}.")
    existing = shard_paths(split_dir)  # none when the folder does not exist
    if existing:
        raise DatasetError(
            f"{split_dir} already holds shards ({os.path.basename(existing[0])}); "
            f"write the split to a new folder, or delete that one first."
        )
    created = []  # folders this call makes, innermost first: removed if they end up empty
    folder = os.path.abspath(split_dir)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    mark_unfinished(split_dir, f"delete {split_dir} and write the split again.")
    videos = iter(videos)
    count, frame_shape, finished = 0, None, False
    try:
        for shard in itertools.count(1):
            path = shard_path(split_dir, shard)
            written = write_shard(
                path, itertools.islice(videos, vids_per_shard), compression, frame_shape
            )
            if not written:
                break
            count += written
            frame_shape = frame_shape or shard_frame_shape(path)
        finished = True
    finally:
        if finished or not count:
            mark_finished(split_dir)
        if not count:
            for folder in created:
                try:
                    os.rmdir(folder)  # only while empty: finished shards stay
                except OSError:
                    break
    return count


def shard_frame_shape(path: str) -> tuple:
    """The shape of a shard's first frame (video 0, frame 0): its split's frame shape."""
    try:
        with h5py.File(path, "r") as f:
            return tuple(f["0"]["0"].shape)
    except (OSError, KeyError) as err:
        raise damaged_shard(path, "video 0 frame 0", err) from None


def _check_frame(
    frame,
    expected_shape,
    where: str,
    what: str,
    kind: str = "frames",
    reading: bool = False,
    kind_flag: str | None = None,
) -> None:
    """``frame`` (an array or h5py dataset) has the dtype and shape of a ``kind`` frame;
    ``reading``, frames of any integer dtype pass (``VideoShards`` reads them as uint8). A split
    of the other kind is named with ``kind_flag`` (a script's flag, e.g. ``--kind``) or else
    the ``kind=`` argument."""
    if kind == "frames":
        if frame.dtype.type not in FRAME_DTYPES and not (reading and frame.dtype.kind in "iu"):
            read_as = (
                f"{kind_flag}=latents"
                if kind_flag
                else "kind='latents', inspect_data.py --kind=latents"
            )
            # (h, w, c) floats are a latent cache's frames, which need the other kind, not to be
            # made images; other floats are converted as their range asks (clipping [0, 1]
            # floats would make them black), one frame's range standing for all when reading.
            latents = frame.dtype.type in LATENT_DTYPES and len(frame.shape) == 3
            hint = f" (a latent cache: read it with {read_as})" if latents else ""
            conversion = _uint8_conversion([np.asarray(frame)])
            if reading:
                conversion = f"{conversion} (for this frame's value range)"
            convert = "" if latents and reading else f" Convert them with {conversion}."
            raise DatasetError(
                f"{where}: {what} has frames of dtype {frame.dtype}; expected uint8{hint}.{convert}"
            )
        if not (len(frame.shape) == 2 or (len(frame.shape) == 3 and frame.shape[-1] == 3)):
            raise DatasetError(
                f"{where}: {what} has a frame of shape {tuple(frame.shape)}; expected "
                f"(H, W) or (H, W, 3): store gray without a channel axis, drop alpha."
            )
    else:
        if frame.dtype.type not in LATENT_DTYPES:
            read_as = f"{kind_flag}=frames" if kind_flag else "kind='frames'"
            hint = (
                f": it looks like a frame split; read it with {read_as}, or encode it with "
                f"scripts/encode_dataset.py"
                if frame.dtype.type in FRAME_DTYPES
                else ""
            )
            raise DatasetError(
                f"{where}: {what} has frames of dtype {frame.dtype}; a latent cache "
                f"holds float16/float32 latents{hint}."
            )
        if len(frame.shape) not in (2, 3):
            raise DatasetError(
                f"{where}: {what} has a latent of shape {tuple(frame.shape)}; expected (h, w, c)."
            )
    if tuple(frame.shape) != tuple(expected_shape):
        raise DatasetError(
            f"{where}: {what} has a frame of shape {tuple(frame.shape)}, but the "
            f"dataset's frames are {tuple(expected_shape)}; every frame must have "
            f"one shape."
        )


def _channels(frame_shape: tuple) -> int:
    """The channels of frames of ``frame_shape``: ``(H, W)`` is gray (1), ``(H, W, C)`` has C."""
    return 1 if len(frame_shape) == 2 else frame_shape[-1]


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
        return _channels(self.frame_shape)

    def __str__(self) -> str:
        fc = self.frame_counts
        h, w = self.frame_shape[:2]
        return (
            f"{self.split_dir}: {self.num_videos} videos, {int(fc.sum())} frames "
            f"(per video min {int(fc.min())} / mean {fc.mean():.1f} / max {int(fc.max())}), "
            f"{h}x{w}, {self.channels} channel(s), {self.dtype}, "
            f"values in [{self.value_range[0]}, {self.value_range[1]}] (sampled)"
        )


def read_frame_counts(path: str) -> np.ndarray:
    """The frame count of every video of one shard (its ``len`` group), checked; a file h5py
    cannot read is a ``damaged_shard`` error."""
    try:
        return _read_lengths(path)
    except OSError as err:
        raise damaged_shard(path, "the file", err) from None


def _read_lengths(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        if "len" not in f:
            raise DatasetError(f"{path}: no 'len' group; not a PredVDM/MCVD video shard.")
        n = len(f["len"].keys())
        missing = [
            str(i)
            for i in range(n)
            if str(i) not in f["len"] or f.get(str(i), getclass=True) is not h5py.Group
        ]
        if missing:
            raise DatasetError(
                f"{path}: videos {missing[:5]} lack a 'len' entry or frame group; "
                f"the shard is incomplete, re-create it."
            )
        if any(f["len"].get(str(i), getclass=True) is not h5py.Dataset for i in range(n)):
            raise DatasetError(
                f"{path}: its 'len' group holds a non-dataset entry; the shard is damaged: "
                f"re-convert it or re-download it."
            )
        return np.array([_frame_count(path, i, f["len"][str(i)][()]) for i in range(n)], np.int64)


class _BadFrame(DatasetError):
    """A frame that is missing, or of another shape or dtype than the split's; ``problem`` says
    which without the fix (``check_all_frames`` lists several problems, then the fix once)."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}; the shard is incomplete or malformed: re-create it.")
        self.problem = problem

    def __reduce__(self):  # from a reader process: rebuilt from the problem, the fix added once
        return type(self), (self.problem,)


def _open_frame(
    group, path: str, video: int, t: int, length: int, shape=None, dtype=None
) -> h5py.h5d.DatasetID:
    """Frame ``t`` of video ``video`` of the shard ``path``, as h5py's low-level dataset
    (``group``: the video's low-level group; these calls take half the time of ``group[name]``).

    ``_BadFrame`` when the video (of ``length`` frames, says its ``len`` entry) has no such
    frame or, ``shape`` given, the frame is not of ``shape`` and ``dtype``.
    """
    try:
        frame = h5py.h5d.open(group, str(t).encode())
    except KeyError:  # no such name, or not a dataset
        raise _BadFrame(
            f"{path}: video {video} has no frame {t} (its 'len' entry says {length})"
        ) from None
    if shape is not None and (frame.shape != shape or frame.dtype != dtype):
        raise _BadFrame(
            f"{path}: video {video} frame {t} is {frame.dtype}{frame.shape}, expected "
            f"{dtype}{shape}"
        )
    return frame


class VideoShards:
    """Random access to the videos of one split (frames or cached latents).

    Validates the layout when opened and raises ``DatasetError`` with what is
    wrong and how to fix it. File handles are opened lazily per process, so an
    instance can be used from grain's worker threads and processes.
    """

    def __init__(self, split_dir: str, kind: str = "frames", *, kind_flag: str | None = None):
        """``kind_flag``: the flag a script reads ``kind`` from (e.g. ``--kind``), which an
        error on a split of the other kind names instead of the ``kind=`` argument."""
        if kind not in ("frames", "latents"):
            raise ValueError(f"kind must be 'frames' or 'latents', got {kind!r}.")
        self.split_dir = split_dir
        self.kind = kind
        if os.path.isfile(split_dir):
            raise DatasetError(
                f"{split_dir!r} is a file; pass the split folder that holds it "
                f"({os.path.dirname(split_dir) or '.'!r})."
            )
        if not os.path.isdir(split_dir):
            raise DatasetError(
                f"Dataset folder {split_dir!r} does not exist; create it with "
                f"scripts/make_moving_digits.py or scripts/prepare_data.py, or fix the "
                f"path."
            )
        _check_finished(split_dir)
        self.paths = shard_paths(split_dir)
        if not self.paths:
            raise DatasetError(
                f"Dataset folder {split_dir!r} holds no shard_*.hdf5 files; is it a split "
                f"folder (e.g. .../train) of a converted dataset?"
            )
        self._lengths = [read_frame_counts(path) for path in self.paths]
        self.frame_counts = (
            np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        )
        if self.frame_counts.size == 0:
            raise DatasetError(
                f"Dataset folder {split_dir!r} holds shards but no videos "
                f"({os.path.basename(self.paths[0])} is empty); re-create the split with the "
                f"command that wrote it, or point at the split folder that holds the videos."
            )
        self._offsets = np.cumsum([0] + [len(l) for l in self._lengths])
        first = self._raw_frame(0, 0)
        self.frame_shape = tuple(first.shape)
        _check_frame(
            first, self.frame_shape, split_dir, "video 0", kind, reading=True, kind_flag=kind_flag
        )
        self.stored_dtype = first.dtype
        if kind == "frames" and first.dtype != np.uint8 and first.size:
            lo, hi = int(first.min()), int(first.max())
            if lo < 0 or hi > 255:
                raise DatasetError(
                    f"{split_dir}: video 0 has {first.dtype} frames with values in [{lo}, {hi}], "
                    f"beyond uint8's 0..255; convert them to uint8 (for 16-bit frames: x >> 8) "
                    f"and write the split again."
                )
        # Integer frames other than uint8 (MCVD's BAIR converter stores int64) are read as
        # uint8: HDF5 converts on read, saturating values outside 0..255.
        self.dtype = np.dtype(np.uint8) if kind == "frames" else first.dtype
        self._files: dict[tuple[int, int], h5py.File] = {}  # (process id, shard)
        self._memory: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.frame_counts.size)

    @property
    def channels(self) -> int:
        return _channels(self.frame_shape)

    def shard_videos(self, shard: int) -> range:
        """The indices of the videos of shard ``shard`` (``paths[shard]``)."""
        return range(int(self._offsets[shard]), int(self._offsets[shard + 1]))

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"video index {index} out of range for {len(self)} videos")
        shard = bisect.bisect_right(self._offsets, index) - 1
        return shard, index - int(self._offsets[shard])

    def _file(self, shard: int) -> h5py.File:
        """This process's open handle of shard ``shard`` (a forked reader opens its own)."""
        key = (os.getpid(), shard)
        f = self._files.get(key)
        if f is None:
            f = h5py.File(self.paths[shard], "r")
            self._files[key] = f
        return f

    def _close_file(self, shard: int) -> None:
        f = self._files.pop((os.getpid(), shard), None)
        if f is not None:
            f.close()

    def _raw_frame(self, index: int, t: int) -> np.ndarray:
        shard, local = self._locate(index)
        path = self.paths[shard]
        try:
            with h5py.File(path, "r") as f:
                group = h5py.h5g.open(f.id, str(local).encode())
                frame = _open_frame(group, path, local, t, int(self.frame_counts[index]))
                return np.asarray(h5py.Dataset(frame)[()])
        except OSError as err:
            raise damaged_shard(path, f"video {local} frame {t}", err) from None

    def check_min_length(self, num_frames: int, fix: str) -> None:
        """``DatasetError`` unless every video has ``num_frames``; ``fix`` says how to ask for
        fewer (the caller's flag or config field)."""
        short = np.flatnonzero(self.frame_counts < num_frames)
        if short.size:
            raise DatasetError(
                f"{self.split_dir}: {short.size} video(s) are shorter than the clip length "
                f"{num_frames} (e.g. video {int(short[0])} has "
                f"{int(self.frame_counts[short[0]])} frames); {fix}, or drop those videos."
            )

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
            raise DatasetError(
                f"{self.split_dir}: clip [{start}, {start + num_frames}) is outside "
                f"video {index} of {length} frames."
            )
        if self._memory is not None:
            return self._memory[index][start : start + num_frames].copy()
        shard, local = self._locate(index)
        try:
            return self._read_clip_from_disk(shard, local, length, start, num_frames)
        except OSError as err:
            frames = (
                f"frames {start}-{start + num_frames - 1}" if num_frames > 1 else f"frame {start}"
            )
            raise damaged_shard(self.paths[shard], f"video {local} {frames}", err) from None

    def _read_clip_from_disk(
        self, shard: int, local: int, length: int, start: int, num_frames: int
    ) -> np.ndarray:
        # h5py's low-level calls: 0.57x the time of ``group[name][()]`` per clip (bench_loader.py).
        group = h5py.h5g.open(self._file(shard).id, str(local).encode())
        # Wider integer frames (MCVD's BAIR converter stores int64) are read as they are and
        # checked: HDF5's conversion to uint8 would saturate values beyond 0..255.
        clip = np.empty((num_frames,) + self.frame_shape, self.stored_dtype)
        path = self.paths[shard]
        for i, t in enumerate(range(start, start + num_frames)):
            frame = _open_frame(group, path, local, t, length, self.frame_shape, self.stored_dtype)
            frame.read(h5py.h5s.ALL, h5py.h5s.ALL, clip[i])
        if clip.dtype != self.dtype:
            clip = self._narrowed(clip, path, local, start)
        return clip[..., None] if clip.ndim == 3 else clip

    def _narrowed(self, clip: np.ndarray, path: str, local: int, start: int) -> np.ndarray:
        """Integer frames as uint8, or ``DatasetError`` naming the first frame beyond 0..255."""
        frames = clip.reshape(len(clip), -1)
        beyond = np.flatnonzero((frames.min(axis=1) < 0) | (frames.max(axis=1) > 255))
        if beyond.size:
            frame = frames[beyond[0]]
            raise DatasetError(
                f"{path}: video {local} frame {start + int(beyond[0])} has {clip.dtype} values "
                f"in [{frame.min()}, {frame.max()}], beyond uint8's 0..255; convert the "
                f"frames to uint8 (for 16-bit frames: x >> 8) and write the split again."
            )
        return clip.astype(self.dtype)

    def check_all_frames(self, max_listed: int = 5) -> None:
        """Checks that every video has its ``len`` frames, each of the split's shape and dtype.

        Reads HDF5 metadata only, no pixels; raises ``DatasetError`` listing the
        first ``max_listed`` problems and their count.
        """
        problems = []
        for shard, path in enumerate(self.paths):
            try:
                self._check_shard_frames(shard, path, problems)
            except OSError as err:
                raise damaged_shard(path, "its frames", err) from None
        if problems:
            listed = "; ".join(problems[:max_listed])
            more = f" (and {len(problems) - max_listed} more)" if len(problems) > max_listed else ""
            raise DatasetError(
                f"{self.split_dir}: {len(problems)} bad frame(s): {listed}{more}; "
                f"re-create the dataset."
            )

    def _check_shard_frames(self, shard: int, path: str, problems: list[str]) -> None:
        with h5py.File(path, "r") as f:
            for local, length in enumerate(self._lengths[shard]):
                group = h5py.h5g.open(f.id, str(local).encode())
                for t in range(int(length)):
                    try:
                        _open_frame(
                            group, path, local, t, int(length), self.frame_shape, self.stored_dtype
                        )
                    except _BadFrame as bad:
                        problems.append(bad.problem)

    def check_decodes(self, progress: bool = False, max_bytes: int = 64 << 20) -> None:
        """Reads (decompresses) every frame of every video, at most ``max_bytes`` at a time.

        Finds what ``check_all_frames`` (metadata only) cannot: a corrupt compressed chunk
        and, in a latent cache, NaN/Inf values. Raises ``DatasetError`` naming the shard
        and video. Takes as long as one pass over the data; ``progress`` draws a tqdm bar.
        """
        from tqdm import tqdm

        frame_bytes = int(np.prod(self.frame_shape)) * np.dtype(self.dtype).itemsize
        step = max(1, max_bytes // frame_bytes)
        bar = tqdm(
            total=int(self.frame_counts.sum()),
            desc=f"decoding {self.split_dir}",
            unit="frame",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        with bar:
            for shard in range(len(self.paths)):
                for index in self.shard_videos(shard):
                    length = int(self.frame_counts[index])
                    for start in range(0, length, step):
                        clip = self.read_clip(index, start, min(step, length - start))
                        if self.kind == "latents":
                            self._check_finite(shard, index, start, clip)
                        bar.update(len(clip))
                self._close_file(shard)  # bound the open files

    def _check_finite(self, shard: int, index: int, start: int, clip: np.ndarray) -> None:
        bad = np.flatnonzero(~np.isfinite(clip).reshape(len(clip), -1).all(axis=1))
        if bad.size:
            local = index - int(self._offsets[shard])
            raise DatasetError(
                f"{self.paths[shard]}: video {local} frame {start + int(bad[0])} holds NaN or "
                f"Inf latents; delete that shard and re-run scripts/encode_dataset.py to "
                f"re-encode it (if they come back, check the VQ on that video; a float16 "
                f"overflow needs a new cache with --dtype=float32)."
            )

    def summary(self, sample_videos: int = 16) -> DatasetSummary:
        picks = np.linspace(0, len(self) - 1, min(sample_videos, len(self))).round().astype(int)
        lo, hi = np.inf, -np.inf
        for i in picks:
            clip = self.read_clip(int(i), 0, int(min(self.frame_counts[i], 4)))
            lo, hi = min(lo, clip.min().item()), max(hi, clip.max().item())
        return DatasetSummary(
            self.split_dir,
            len(self),
            self.frame_counts,
            self.frame_shape,
            np.dtype(self.dtype).name,
            (lo, hi),
        )

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

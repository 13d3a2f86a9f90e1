"""Latent cache: a frame dataset encoded once by the frozen VQ.

The cache has the layout of the frame dataset (``data/hdf5.py``): the same
shard names, videos and frame counts, each frame replaced by its latent
``(h, w, c)`` in float16 or float32, i.e. ``LatentDiffusion.encode`` of the
frame (gray repeated to RGB, continuous pre-quantization latents ×
``scale_factor``). Read it with ``VideoShards(dir, kind='latents')`` or the
loaders' ``kind='latents'``.

Shards are written one by one, atomically; an interrupted run is resumed by
calling again, which skips finished shards. ``cache_info.json`` records what the cache was
made with, including a digest of the VQ params' tensors, so a resume with another VQ
(architecture or weights) or scale is refused, and so is training on it with another
``scale_factor``, VQ architecture or ``config.vq_params`` weights (``check_cache_matches``).
It is written once the first shard is encoded and before that shard is renamed into place,
so every finished shard has it beside it, however a run ends; a folder without it is not a
cache, and training refuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from predvdm_jax import atomic_io, folders, xla_cpu
from predvdm_jax.batching import pad_batch
from predvdm_jax.config import ConfigError
from predvdm_jax.data.hdf5 import (
    DatasetError,
    ShardWriter,
    VideoShards,
    read_frame_counts,
    shard_paths,
)
from predvdm_jax.data.loader import check_frame_size, eval_iterator, to_model_range
from predvdm_jax.data.manifest import MANIFEST_NAME, as_json
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.tensor_files import read_safetensors

CACHE_INFO = "cache_info.json"
CACHE_DTYPES = ("float16", "float32")
VQ_RUNTIME_FIELDS = ("dropout",)  # vq fields that do not change the encoder's latents
DIGEST_KEY = "vq_params_sha256"
INFO_KEYS = (
    "source",
    "num_shards",
    "dtype",
    "scale_factor",
    "vq",
    "vq_params",
    "channels",
    DIGEST_KEY,
)
"""What ``cache_info.json`` records (``cache_info``); reading a file that lacks one fails."""
SOURCE_KEY = "source_fingerprint"  # recorded too, checked when present (older caches lack it)


def source_fingerprint(src_split_dir: str) -> str:
    """SHA-256 of what tells a frame split's videos apart without reading pixels: each shard's
    name and frame counts, and the ``conversion.json`` (settings) of the folder holding it."""
    digest = hashlib.sha256()
    for path in shard_paths(src_split_dir):
        counts = ",".join(map(str, read_frame_counts(path)))
        digest.update(f"{os.path.basename(path)}:{counts};".encode())
    manifest = os.path.join(os.path.dirname(os.path.abspath(src_split_dir)), MANIFEST_NAME)
    if os.path.isfile(manifest):
        with open(manifest, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _changed_source(source: str) -> str:
    return (
        f"an earlier version of {source} (its videos' frame counts or conversion.json differ now)"
    )


def params_digest(params: Any) -> str:
    """SHA-256 of a param tree's names, dtypes, shapes and values (not of the file holding
    it, so metadata and key order do not count)."""
    digest = hashlib.sha256()
    # A nested tree and a params file's flat {'a/b/kernel': array} give the same names.
    for name, value in sorted(traverse_util.flatten_dict(params, sep="/").items()):
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def cache_info(
    config: ml_collections.ConfigDict,
    src_split_dir: str,
    dtype: str,
    vq_params: Any,
    vq_params_path: str | None = None,
) -> dict:
    """What a cache is made with (``INFO_KEYS``), the digest of ``vq_params`` included;
    ``vq_params_path`` (default ``config.vq_params``) is the file they were read from."""
    path = config.vq_params if vq_params_path is None else vq_params_path
    return {
        "source": os.path.abspath(src_split_dir),
        "num_shards": len(shard_paths(src_split_dir)),  # a finished cache has one per source shard
        "dtype": dtype,
        "scale_factor": float(config.scale_factor),
        "vq": config.vq.to_dict(),
        "vq_params": os.path.abspath(path) if path else path,
        # The frames' channels (the VQ sees gray repeated to RGB, so the latents do not show it).
        "channels": int(config.data.channels),
        DIGEST_KEY: params_digest(vq_params),
        SOURCE_KEY: source_fingerprint(src_split_dir),
    }


def read_cache_info(split_dir: str) -> dict:
    """``split_dir``'s ``cache_info.json``; a missing folder, or a file that is missing, not JSON
    or lacks a field of ``INFO_KEYS``, is a ``DatasetError`` naming the folder and the fix."""
    path = os.path.join(split_dir, CACHE_INFO)
    remake = f"delete {split_dir} and re-run scripts/encode_dataset.py to make the cache"
    if not os.path.exists(split_dir):
        raise DatasetError(
            f"the latent cache {split_dir} does not exist; make it with scripts/encode_dataset.py "
            f"--src=<frame dataset> --out=<folder> (which writes <folder>/train, <folder>/test, "
            f"...), or point data.latent_train_dir / data.latent_test_dir at a cache."
        )
    if not os.path.isfile(path):
        raise DatasetError(
            f"{split_dir} has no {CACHE_INFO}, so it is not a latent cache made by "
            f"scripts/encode_dataset.py; re-run scripts/encode_dataset.py to make it, or point "
            f"data.latent_train_dir / data.latent_test_dir at a cache."
        )
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise DatasetError(
            f"{path} is unreadable ({' '.join(str(err).split())}); {remake}."
        ) from None
    missing = [key for key in INFO_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise DatasetError(
            f"{path} lacks {', '.join(missing)}, which scripts/encode_dataset.py records; {remake}."
        )
    return info


def check_output_folder(src_split_dir: str, out_split_dir: str) -> None:
    """Raises ``DatasetError`` unless ``out_split_dir`` can receive the cache of
    ``src_split_dir``: not the source or inside it, not a file (nor under one), and not a
    folder holding shards without this cache's ``cache_info.json`` (another dataset)."""
    if atomic_io.is_inside(out_split_dir, src_split_dir):
        raise DatasetError(
            f"the latent cache {out_split_dir!r} would be written into its source frame split "
            f"{src_split_dir!r}; give --out a folder outside --src (e.g. data/<name>_latents)."
        )
    folder = atomic_io.file_in_the_way(out_split_dir)
    if folder is not None:
        raise DatasetError(
            f"cannot write the latent cache to {out_split_dir!r}: {folder!r} is a file; give "
            f"--out a folder (new, or a cache made by scripts/encode_dataset.py)."
        )
    problem = folders.model_folder(out_split_dir)
    if problem:
        raise DatasetError(
            f"cannot write the latent cache to {out_split_dir!r}: it {problem}; give --out a "
            f"folder of its own (e.g. data/<name>_latents)."
        )
    if os.path.isdir(out_split_dir) and not os.path.exists(os.path.join(out_split_dir, CACHE_INFO)):
        shards = shard_paths(out_split_dir)
        if shards:
            raise DatasetError(
                f"{out_split_dir} holds shards ({os.path.basename(shards[0])}) but no "
                f"{CACHE_INFO}, so it is not a latent cache made by scripts/encode_dataset.py "
                f"(another dataset?); "
                f"choose another --out, or delete those shards if they are yours to lose."
            )


def check_output(
    config: ml_collections.ConfigDict,
    vq_params: Any,
    src_split_dir: str,
    out_split_dir: str,
    dtype: str = "float16",
    vq_params_path: str | None = None,
) -> dict:
    """Every check ``encode_split`` makes before writing (``check_output_folder``, the source's
    frame size and channels, and a resume's ``cache_info.json``); returns the info to record.
    Writes nothing, so a script can check every split before encoding any."""
    check_output_folder(src_split_dir, out_split_dir)
    check_frame_size(
        VideoShards(src_split_dir, "frames"), config.data.image_size, config.data.channels
    )
    return _check_resume(
        out_split_dir, cache_info(config, src_split_dir, dtype, vq_params, vq_params_path)
    )


def _check_resume(out_split_dir: str, info: dict) -> dict:
    """Raises ``DatasetError`` when ``out_split_dir`` holds finished shards of a cache made
    otherwise than ``info`` says; returns ``info``. A ``cache_info.json`` without finished
    shards (a run stopped before renaming its first shard into place) binds nothing."""
    if not os.path.exists(os.path.join(out_split_dir, CACHE_INFO)) or not shard_paths(
        out_split_dir
    ):
        return info
    saved = read_cache_info(out_split_dir)
    same = as_json(info)
    for key in ("source", "num_shards", "dtype", "scale_factor", "vq"):
        if saved[key] != same[key]:
            raise DatasetError(
                f"{out_split_dir} holds a latent cache made with another {key} ({saved[key]!r}, now "
                f"{same[key]!r}); delete the folder or choose another --out."
            )
    if saved.get(SOURCE_KEY, same[SOURCE_KEY]) != same[SOURCE_KEY]:
        raise DatasetError(
            f"{out_split_dir} holds latents of {_changed_source(same['source'])}; delete the "
            f"folder or choose another --out, and encode again."
        )
    if saved[DIGEST_KEY] != same[DIGEST_KEY]:
        raise DatasetError(
            f"{out_split_dir} holds latents of other VQ weights: they were encoded with "
            f"{saved['vq_params']!r} (sha256 {saved[DIGEST_KEY][:16]}...), now "
            f"{same['vq_params']!r} (sha256 {same[DIGEST_KEY][:16]}...); delete the folder or "
            f"choose another --out."
        )
    return info


def check_cache_matches(
    config: ml_collections.ConfigDict, split_dir: str, vq_params: Any = None
) -> None:
    """Raises ``ConfigError`` when ``split_dir``'s cache was made with another ``scale_factor``,
    frame channels, frame size, VQ architecture or other VQ weights than ``config``'s: those
    of ``vq_params`` (the tree read from ``config.vq_params``; None: read here, when the file
    exists); ``DatasetError`` when it has no readable ``cache_info.json``
    (``read_cache_info``: it is no cache of ``scripts/encode_dataset.py``), lacks shards (an
    interrupted encode) or its source split, still there, has changed since (``SOURCE_KEY``)."""
    saved = read_cache_info(split_dir)
    present = len(shard_paths(split_dir))
    if present < saved["num_shards"]:
        raise DatasetError(
            f"{split_dir} is an unfinished latent cache ({present} of {saved['num_shards']} "
            f"shards; its encode was interrupted): run scripts/encode_dataset.py again with the "
            f"same flags to finish it."
        )
    source = saved["source"]
    if SOURCE_KEY in saved and shard_paths(source):
        try:
            changed = source_fingerprint(source) != saved[SOURCE_KEY]
        except DatasetError:  # a damaged source cannot be compared; training reads the cache
            changed = False
        if changed:
            raise DatasetError(
                f"{split_dir} was encoded from {_changed_source(source)}; re-encode the cache "
                f"(scripts/encode_dataset.py), or train from the frames (data.latent_train_dir=)."
            )
    cached = saved["scale_factor"]
    if not math.isclose(cached, config.scale_factor, rel_tol=1e-6):
        raise ConfigError(
            f"{split_dir} holds latents encoded with scale_factor {cached!r} but "
            f"config.scale_factor is {config.scale_factor!r}; re-encode the cache "
            f"(scripts/encode_dataset.py) or set --config.scale_factor={cached!r}."
        )
    cached_channels = saved["channels"]
    if cached_channels != config.data.channels:
        raise ConfigError(
            f"{split_dir} holds latents of {cached_channels}-channel frames but "
            f"config.data.channels is {config.data.channels!r}; set "
            f"--config.data.channels={cached_channels} or encode a {config.data.channels}-channel "
            f"dataset (scripts/encode_dataset.py)."
        )
    cached_vq = saved["vq"]
    vq = as_json(config.vq.to_dict())
    # Fields on both sides: a VQ field added to the schema later does not void older caches.
    fields = sorted(set(cached_vq) & set(vq) - set(VQ_RUNTIME_FIELDS))
    differ = [
        f"vq.{k} {cached_vq[k]!r} (config: {vq[k]!r})" for k in fields if cached_vq[k] != vq[k]
    ]
    if differ:
        raise ConfigError(
            f"{split_dir} holds latents of another VQ: {', '.join(differ)}; re-encode the cache "
            f"with this config's VQ (scripts/encode_dataset.py) or use the VQ it was made with."
        )
    latent_size = LatentDiffusion.from_config(config).latent_size
    height, width = VideoShards(split_dir, "latents").frame_shape[:2]
    if (height, width) != (latent_size, latent_size):
        factor = config.data.image_size // latent_size
        raise ConfigError(
            f"{split_dir} holds {height}x{width} latents (frames of {height * factor}x"
            f"{width * factor}), but config.data.image_size={config.data.image_size} makes "
            f"{latent_size}x{latent_size} ones; set --config.data.image_size={height * factor} "
            f"or encode a cache of {config.data.image_size}x{config.data.image_size} frames "
            f"(scripts/encode_dataset.py)."
        )
    if vq_params is None and config.vq_params and os.path.isfile(config.vq_params):
        vq_params = read_safetensors(config.vq_params)
    if vq_params is not None:
        digest = params_digest(vq_params)
        if digest != saved[DIGEST_KEY]:
            raise ConfigError(
                f"{split_dir} holds latents encoded with other VQ weights ({saved['vq_params']!r}, "
                f"sha256 {saved[DIGEST_KEY][:16]}...) than config.vq_params {config.vq_params!r} "
                f"(sha256 {digest[:16]}...), which decodes them; set --config.vq_params to the file "
                f"the cache was made with, or re-encode the cache with scripts/encode_dataset.py."
            )


def other_source(cache_dir: str, frames_dir: str) -> str | None:
    """The frame split the cache ``cache_dir`` was encoded from, or None when that is
    ``frames_dir``: the same path, or the same split moved since (equal ``SOURCE_KEY``
    fingerprints, where the cache records one)."""
    saved = read_cache_info(cache_dir)
    source = saved["source"]
    if os.path.realpath(source) == os.path.realpath(frames_dir):
        return None
    if shard_paths(frames_dir) and saved.get(SOURCE_KEY) == source_fingerprint(frames_dir):
        return None
    return source


def check_cache_source(cache_field: str, cache_dir: str, frames_field: str, frames_dir: str):
    """Raises ``ConfigError`` when the cache ``cache_dir`` (config field ``cache_field``) was
    encoded from another frame split than ``frames_dir`` (``frames_field``, ``other_source``),
    which the same run reads beside it (validation reads the cache, previews the frames): the
    two would be different data. Frames that are not there (nothing read beside the cache) pass."""
    source = other_source(cache_dir, frames_dir)
    if source is None or not shard_paths(frames_dir):
        return
    raise ConfigError(
        f"data.{cache_field}={cache_dir} was encoded from {source}, but data.{frames_field} is "
        f"{frames_dir}: the run would mix two datasets. Encode {frames_dir} "
        f"(scripts/encode_dataset.py) and pass its cache as --config.data.{cache_field}, set "
        f"--config.data.{cache_field}= to read the frames, or point --config.data.{frames_field} "
        f"at {source}."
    )


def make_frame_encoder(
    config: ml_collections.ConfigDict, vq_params: Any, batch_frames: int
) -> Callable[[np.ndarray], np.ndarray]:
    """``encode(frames (N ≤ batch_frames, H, W, C) in [-1, 1]) -> latents (N, h, w, c) float32``.

    One compiled program for every call: short batches are padded to ``batch_frames``.
    """
    system = LatentDiffusion.from_config(config)
    params = jax.tree.map(jnp.asarray, vq_params)
    encode = xla_cpu.jit(lambda p, video: system.encode(p, video)[0])

    def encode_frames(frames: np.ndarray) -> np.ndarray:
        padded = pad_batch(frames, batch_frames)
        return np.asarray(jax.device_get(encode(params, padded[None])))[: len(frames)]

    return encode_frames


def encode_split(
    config: ml_collections.ConfigDict,
    vq_params: Any,
    src_split_dir: str,
    out_split_dir: str,
    dtype: str = "float16",
    batch_frames: int = 256,
    compression: str | None = "lzf",
    max_shards: int | None = None,
    vq_params_path: str | None = None,
) -> int:
    """Encodes every video of ``src_split_dir`` into ``out_split_dir``; returns the shards written.

    Frames are encoded ``batch_frames`` at a time across video boundaries.
    Finished output shards are kept (resume). ``max_shards`` stops after that
    many newly written shards (for tests of resume). ``vq_params_path``: the file
    ``vq_params`` came from, recorded in ``cache_info.json`` (default ``config.vq_params``).
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
    if batch_frames < 1:
        raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
    source = VideoShards(src_split_dir, "frames")
    info = check_output(config, vq_params, src_split_dir, out_split_dir, dtype, vq_params_path)
    os.makedirs(out_split_dir, exist_ok=True)

    encode_frames = make_frame_encoder(config, vq_params, batch_frames)
    written = 0
    for shard, src_path in enumerate(source.paths):
        videos = source.shard_videos(shard)
        out_path = os.path.join(out_split_dir, os.path.basename(src_path))
        if os.path.exists(out_path):
            done = len(read_frame_counts(out_path))
            if done != len(videos):
                raise DatasetError(
                    f"{out_path} holds {done} videos but its source {src_path} has "
                    f"{len(videos)}; delete {out_path} and run again."
                )
            continue
        if max_shards is not None and written >= max_shards:
            break
        with ShardWriter(out_path, compression, kind="latents") as writer:
            _encode_shard(
                source,
                src_path,
                videos,
                encode_frames,
                batch_frames,
                np.dtype(dtype),
                writer,
            )
            if written == 0:
                # Once a shard is encoded (a run that fails before leaves no cache_info), and
                # before the writer renames it into place: no finished shard ever lacks it.
                atomic_io.write_text(
                    os.path.join(out_split_dir, CACHE_INFO),
                    json.dumps(info, indent=2, default=list),
                )
        written += 1
    return written


def unit_std_scale_factor(
    config: ml_collections.ConfigDict, vq_params: Any, split_dir: str
) -> float:
    """LDM's ``scale_by_std``: ``1 / std`` of the VQ's unscaled latents of 32 clips of
    ``split_dir`` (fixed windows of ``config.seed``, up to 8 frames each), to 5 significant
    digits, so that the diffusion sees unit-variance latents and the printed value is exact. A
    VQ trained on small data can have latents far from unit std (the demo's: about 0.25),
    which leaves the sampler's first steps with a very low signal-to-noise ratio."""
    frames = VideoShards(split_dir, "frames")
    num_frames = int(min(8, frames.frame_counts.min()))
    frames.close()
    clips = next(eval_iterator(split_dir, num_frames, 32, 32, config.seed))["video"]
    std = LatentDiffusion.from_config(config).latent_std(vq_params, clips)
    if not (np.isfinite(std) and std > 0):
        raise DatasetError(
            f"the VQ's latents of {split_dir} have std {std}; check the VQ params (they hold "
            f"NaN/Inf, or encode every frame alike)."
        )
    return float(f"{1.0 / std:.5g}")


def _check_storable(latents: np.ndarray, dtype: np.dtype, video: str) -> None:
    """``DatasetError`` unless ``latents`` (float32) are finite and fit ``dtype``: a float16
    cache would hold Inf for larger ones, and training on them a NaN loss."""
    if not np.isfinite(latents).all():
        raise DatasetError(
            f"{video} encodes to NaN/Inf latents; check the VQ params (--vq_params): they hold "
            f"NaN/Inf or are not a trained VQ's."
        )
    largest, limit = float(np.abs(latents).max()), float(np.finfo(dtype).max)
    if largest > limit:
        raise DatasetError(
            f"{video} encodes to latents {dtype.name} cannot hold (largest |value| {largest:.4g} "
            f"> {limit:.0f}); encode with --dtype=float32."
        )


def _encode_shard(
    source: VideoShards,
    src_path: str,
    videos: range,
    encode_frames,
    batch_frames: int,
    dtype: np.dtype,
    writer: ShardWriter,
) -> None:
    lengths: list[int] = []  # frame counts of videos not yet written, in order
    pending: list[np.ndarray] = []  # their frames not yet encoded
    encoded: list[np.ndarray] = []  # latents not yet written

    def encode_available(final: bool) -> None:
        frames = np.concatenate(pending) if pending else None
        pending.clear()
        start = 0
        while frames is not None and (
            frames.shape[0] - start >= batch_frames or (final and start < frames.shape[0])
        ):
            encoded.append(encode_frames(frames[start : start + batch_frames]))
            start += batch_frames
        if frames is not None and start < frames.shape[0]:
            pending.append(frames[start:])
        latents = np.concatenate(encoded) if encoded else np.zeros((0,))
        encoded.clear()
        used = 0
        while lengths and latents.shape[0] - used >= lengths[0]:
            video = latents[used : used + lengths[0]]
            _check_storable(video, dtype, f"video {writer.num_videos} of {src_path}")
            writer.add_video(list(video.astype(dtype)))
            used += lengths.pop(0)
        if used < latents.shape[0]:
            encoded.append(latents[used:])

    for index in videos:
        length = int(source.frame_counts[index])
        pending.append(to_model_range(source.read_clip(index, 0, length)))
        lengths.append(length)
        if sum(p.shape[0] for p in pending) >= batch_frames:
            encode_available(final=False)
    encode_available(final=True)
    if lengths:
        raise RuntimeError(f"{len(lengths)} videos were not written to {writer.path}")

"""Batched prediction of many clips with a trained model (scripts/sample.py)."""

from __future__ import annotations

import jax
import numpy as np

from predvdm_jax import mesh as mesh_lib
from predvdm_jax.batching import device_batch_size, pad_batch
from predvdm_jax.data import loader, video_files
from predvdm_jax.diffusion import samplers
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop.bundle import Bundle


def predict_clips(
    bundle: Bundle,
    cond: np.ndarray,
    num_frames: int,
    key: jax.Array,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Predicts ``num_frames`` after each clip of ``cond`` (N, cond, H, W, C) in [-1, 1].

    Clip ``i`` samples with ``fold_in(key, i)``, so its prediction depends neither on the
    batch size nor on the device count. Batches of ``batch_size`` clips: one compiled rollout
    serves every batch (rows padded to fill the devices, the last batch too); each batch is
    split over all devices, the params replicated.
    """
    model = LatentDiffusion.from_config(bundle.config)
    if cond.shape[1] != model.cond_frames:
        raise ValueError(
            f"the model conditions on {model.cond_frames} frames, got clips of {cond.shape[1]}."
        )
    predict = model.make_predict_fn(num_frames)
    mesh = mesh_lib.make_mesh()
    clips_per_batch = max(1, min(batch_size, len(cond)))
    rows = device_batch_size(clips_per_batch, clips_per_batch, mesh.size)
    params, vq_params = jax.device_put((bundle.params, bundle.vq_params), mesh_lib.replicated(mesh))
    outputs = []
    starts = range(0, len(cond), clips_per_batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="predicting", unit="batch")
    for start in starts:
        batch = cond[start : start + clips_per_batch]
        padded = jax.device_put(pad_batch(batch, rows), mesh_lib.batch_sharding(mesh))
        keys = samplers.clip_keys(key, start + np.arange(rows))
        frames = predict(params, vq_params, padded, keys)
        outputs.append(np.asarray(frames["frames"])[: len(batch)])
    return np.concatenate(outputs)


def predict_test_clips_or_video(
    bundle: Bundle,
    key: jax.Array,
    *,
    num_frames: int | None = None,
    video: str | None = None,
    num_clips: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """What scripts/sample.py writes: ``(cond, future, predicted, known)``, the arrays
    (N, T, H, W, C) in [-1, 1], ``known`` the number of ground-truth future frames.

    With ``video`` (a video file or folder of frames) its first ``cond_frames`` frames are the
    one clip's conditioning and the frames after them its ground-truth future, as far as the
    video goes (later ones are all -1); otherwise the first ``num_clips`` test clips of the
    config's dataset (fixed windows of seed ``eval.seed``) are split into conditioning and
    ground-truth future. ``num_frames`` defaults to the config's ``eval.pred_frames``.
    """
    config = bundle.config
    cond_frames = config.data.cond_frames
    num_frames = num_frames or config.eval.pred_frames
    if video:
        clips = video_files.read_clip(
            video,
            config.data.image_size,
            config.data.channels,
            cond_frames,
            max_frames=cond_frames + num_frames,
        )[None]
    else:
        batches = loader.eval_iterator(
            config.data.test_dir,
            cond_frames + num_frames,
            num_clips,
            num_clips,
            config.eval.seed,
            image_size=config.data.image_size,
            channels=config.data.channels,
            field="data.test_dir",
            fewer_frames="predict fewer frames (sample.py --num_frames)",
        )
        clips = next(batches)["video"]
    cond, future = clips[:, :cond_frames], clips[:, cond_frames:]
    predicted = predict_clips(bundle, cond, num_frames, key, config.eval.batch_size)
    known = future.shape[1]
    blank = np.full((len(future), num_frames - known) + future.shape[2:], -1.0, future.dtype)
    return cond, np.concatenate([future, blank], axis=1), predicted, known

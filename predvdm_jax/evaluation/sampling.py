"""Batched prediction of many clips with a trained model (scripts/sample.py)."""

from __future__ import annotations

import jax
import numpy as np

from predvdm_jax import mesh as mesh_lib
from predvdm_jax.batching import device_batch_size, pad_batch
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

    One compiled rollout serves every batch (the last one is padded); each batch is split
    over all devices, the params replicated.
    """
    model = LatentDiffusion.from_config(bundle.config)
    if cond.shape[1] != model.cond_frames:
        raise ValueError(
            f"the model conditions on {model.cond_frames} frames, got clips of {cond.shape[1]}."
        )
    predict = model.make_predict_fn(num_frames)
    mesh = mesh_lib.make_mesh()
    batch_size = device_batch_size(batch_size, len(cond), mesh.size)
    params, vq_params = jax.device_put((bundle.params, bundle.vq_params), mesh_lib.replicated(mesh))
    outputs = []
    starts = range(0, len(cond), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="predicting", unit="batch")
    for start in starts:
        batch = cond[start : start + batch_size]
        padded = jax.device_put(pad_batch(batch, batch_size), mesh_lib.batch_sharding(mesh))
        frames = predict(params, vq_params, padded, jax.random.fold_in(key, start))
        outputs.append(np.asarray(frames["frames"])[: len(batch)])
    return np.concatenate(outputs)

"""Batched prediction of many clips with a trained model (scripts/sample.py)."""

from __future__ import annotations

import jax
import numpy as np

from predvdm_jax.batching import pad_batch
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

    One compiled rollout serves every batch (the last one is padded).
    """
    model = LatentDiffusion.from_config(bundle.config)
    if cond.shape[1] != model.cond_frames:
        raise ValueError(
            f"the model conditions on {model.cond_frames} frames, got clips of {cond.shape[1]}."
        )
    predict = model.make_predict_fn(num_frames)
    batch_size = min(batch_size, len(cond))
    outputs = []
    starts = range(0, len(cond), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="predicting", unit="batch")
    for start in starts:
        batch = cond[start : start + batch_size]
        padded = pad_batch(batch, batch_size)
        frames = predict(bundle.params, bundle.vq_params, padded, jax.random.fold_in(key, start))
        outputs.append(np.asarray(frames["frames"])[: len(batch)])
    return np.concatenate(outputs)

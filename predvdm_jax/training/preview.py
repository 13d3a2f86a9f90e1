"""Rollout previews while the denoiser trains.

Every ``train.preview_every`` steps the EMA weights predict ``eval.pred_frames``
frames of the first ``train.preview_clips`` evaluation clips of ``data.test_dir``
(the same clips ``scripts/evaluate.py`` starts with; of ``data.val_dir`` when set), with the
config's sampler and a fixed key, so successive previews differ only by the weights. Logged: one
image with two rows per clip (ground truth; the same conditioning frames, then
the prediction) as ``preview/rollout``, and ``preview/psnr`` and
``preview/ssim`` over the predicted frames. One sample of a few clips: a sanity
monitor, not the evaluation protocol.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from predvdm_jax import config as config_lib, mesh as mesh_lib
from predvdm_jax.data import loader
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.evaluation import metrics as metrics_lib
from predvdm_jax.evaluation.images import paired_grid, to_uint8, to_unit_range
from predvdm_jax.seeds import prng_key
from predvdm_jax.batching import device_batch_size
from predvdm_jax.training.data_checks import check_split_frames
from predvdm_jax.training.train_state import TrainState

PREVIEW_SEED_STREAM = 4  # fold_in(prng_key(seed), 4): the previews' sampling key


def load_preview_clips(config: Any, mesh: Any) -> jax.Array:
    """``train.preview_clips`` test clips (``cond + eval.pred_frames`` frames; the windows an
    evaluation of that many clips takes, spread over the test videos), as one global batch padded with clip 0 to a multiple of the mesh's devices.
    Frames of another size or channel count than the config's are a ``DatasetError``."""
    field, split = config_lib.validation_split(config, frames_only=True)
    check_split_frames(split, config, field)
    num_clips = int(config.train.preview_clips)
    batch_size = device_batch_size(num_clips, num_clips, mesh.size)
    clips = loader.eval_iterator(
        split,
        config.data.cond_frames + config.eval.pred_frames,
        num_clips,
        batch_size,
        config.eval.seed,
        sharding=mesh_lib.batch_sharding(mesh),
        num_threads=1,
        prefetch=1,
        field="data." + field,
        fewer_frames="preview fewer frames (eval.pred_frames)",
    )
    return next(clips)["video"]


def make_preview_fn(
    model: LatentDiffusion,
    vq_params: Any,
    video: jax.Array,
    num_clips: int,
    pred_frames: int,
    seed: int,
) -> Callable[[TrainState], dict]:
    """``fn(state) -> {'preview/rollout': uint8 image, 'preview/psnr', 'preview/ssim'}`` for
    the first ``num_clips`` clips of ``video`` (B, cond + pred_frames, H, W, C) in [-1, 1]."""
    predict = model.make_predict_fn(pred_frames)
    cond = video[:, : model.cond_frames]
    real = mesh_lib.to_host(video)[:num_clips]
    key = jax.random.fold_in(prng_key(seed), PREVIEW_SEED_STREAM)

    def preview_fn(state: TrainState) -> dict:
        future = mesh_lib.to_host(predict(state.ema_params, vq_params, cond, key)["frames"])[
            :num_clips
        ]
        real01 = to_unit_range(real[:, model.cond_frames :])
        fake01 = to_unit_range(future)
        shown_fake = np.concatenate([real[:, : model.cond_frames], future], axis=1)
        return {
            "preview/rollout": paired_grid(to_uint8(real), to_uint8(shown_fake)),
            "preview/psnr": float(np.mean(metrics_lib.psnr(real01, fake01))),
            "preview/ssim": float(np.mean(metrics_lib.ssim(real01, fake01))),
        }

    return preview_fn

"""Training the PredVDM denoiser on the generic engine.

Batches come from the latent cache when ``data.latent_train_dir`` is set (the
fast path: the frozen VQ encoder costs ≈ 7.6× the UNet's training FLOPs), or
as frames that the frozen VQ encodes inside the jitted step.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from predvdm_jax.data import loader
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop.bundle import load_vq_params
from predvdm_jax.training import loop, mesh as mesh_lib


def train_iterator(config: ml_collections.ConfigDict, sharding=None) -> loader.ClipIterator:
    d = config.data
    cached = bool(d.latent_train_dir)
    return loader.train_iterator(
        d.latent_train_dir if cached else d.train_dir,
        d.frames_per_sample,
        d.batch_size,
        config.seed,
        kind="latents" if cached else "frames",
        horizontal_flip=d.horizontal_flip and not cached,
        sharding=sharding,
        num_threads=d.num_threads,
        prefetch=d.prefetch,
        preload_max_bytes=int(d.preload_max_gb * 1e9),
    )


def make_loss_fn(model: LatentDiffusion, vq_params: Any) -> loop.LossFn:
    """The engine's ``loss_fn(params, batch, rng, step)`` for ``model`` (``vq_params`` None
    when batches are cached latents)."""

    def loss_fn(params, batch, rng, step):
        del step
        loss, aux = model.loss(params, vq_params, batch, rng)
        return loss, {k: v for k, v in aux.items() if k != "loss"}

    return loss_fn


def train(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Trains (or resumes) in ``workdir``; returns the final train state."""
    model = LatentDiffusion.from_config(config)
    vq_params = None if config.data.latent_train_dir else load_vq_params(config.vq_params)
    if config.data.latent_train_dir and config.data.horizontal_flip:
        raise ValueError(
            "data.horizontal_flip cannot apply to cached latents; flip the frames "
            "before caching or train from frames (empty data.latent_train_dir)."
        )

    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
    iterator = train_iterator(config, mesh_lib.batch_sharding(mesh))
    return loop.train_loop(
        config, workdir, model.init_denoiser, make_loss_fn(model, vq_params), iterator
    )

"""Training the PredVDM denoiser on the generic engine.

Batches come from the latent cache when ``data.latent_train_dir`` is set (the
fast path: the frozen VQ encoder costs ≈ 4× the KTH UNet's training FLOPs), or
as frames that the frozen VQ encodes inside the jitted step. A cache made with
another ``scale_factor`` or VQ than the config is refused (``ConfigError``).

Every ``train.eval_every`` steps the loss on fixed clips is logged for the raw and the EMA
parameters (``val/loss``, ``val/loss_ema``: PredVDM's validation losses, the ones its
checkpointing monitors), from ``config.validation_split``: ``data.val_dir`` when set, else the
test split, each from its latent cache first; with ``train.keep_best`` = k, bundles of the EMA
weights at the k lowest ``val/loss_ema`` in ``workdir/best`` (``best_bundles.py``). Every
``train.preview_every`` steps, a rollout preview (``preview.py``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from predvdm_jax import config as config_lib, folders, mesh as mesh_lib, xla_cpu
from predvdm_jax.data import latent_cache, loader
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop import bundle as bundle_lib
from predvdm_jax.interop.params import load_vq_params
from predvdm_jax.seeds import prng_key
from predvdm_jax.training import checkpoint, loop, preview, workdir_lock
from predvdm_jax.training.data_checks import check_split_frames
from predvdm_jax.training.best_bundles import BestBundles
from predvdm_jax.training.train_state import TrainState

VALIDATION_SEED_STREAM = 3  # fold_in(prng_key(seed), 3): the validation noise


def train_iterator(config: ml_collections.ConfigDict, sharding=None) -> loader.ClipIterator:
    """Random training clips of ``data.latent_train_dir`` or ``data.train_dir``; frames of
    another size or channel count than the config's are a ``DatasetError``."""
    d = config.data
    cached = bool(d.latent_train_dir)
    if not cached:
        check_split_frames(d.train_dir, config, "train_dir")
    return loader.train_iterator(
        d.latent_train_dir if cached else d.train_dir,
        d.frames_per_sample,
        d.batch_size,
        config.seed,
        kind="latents" if cached else "frames",
        horizontal_flip=d.horizontal_flip and not cached,
        sharding=sharding,
        **loader.reading_options(d),
    )


def make_loss_fn(model: LatentDiffusion, vq_params: Any) -> loop.LossFn:
    """The engine's ``loss_fn(params, batch, rng, step)`` for ``model`` (``vq_params`` None
    when batches are cached latents)."""

    def loss_fn(params, batch, rng, step):
        del step
        loss, aux = model.loss(params, vq_params, batch, rng)
        return loss, {k: v for k, v in aux.items() if k != "loss"}

    return loss_fn


def load_validation_batches(config: ml_collections.ConfigDict) -> list[dict]:
    """This process's share of each batch of the fixed validation clips: ``train.eval_clips``
    evaluation windows of the validation split (``config_lib.validation_split``; ``cond + k``
    frames each) in batches of ``data.batch_size``, the last one padded (``mask`` 0), so the
    clips do not depend on the batch size. Frames of another size than the config's are a
    ``DatasetError``."""
    d = config.data
    field, split = config_lib.validation_split(config)
    cached = field.startswith("latent_")
    if not cached:
        check_split_frames(split, config, field)
    num_clips = int(config.train.eval_clips)
    num_batches = -(-num_clips // d.batch_size)
    iterator = loader.eval_iterator(
        split,
        d.cond_frames + d.pred_frames,
        num_clips,
        d.batch_size,
        config.seed,
        kind="latents" if cached else "frames",
        num_threads=d.num_threads,
        prefetch=d.prefetch,
        field="data." + field,
        fewer_frames="validate on shorter clips (data.cond_frames + data.pred_frames)",
    )
    return [next(iterator) for _ in range(num_batches)]


def make_validation_fn(
    model: LatentDiffusion, vq_params: Any, batches: list[dict], mesh: Any, seed: int
) -> Callable[[TrainState], dict]:
    """``fn(state) -> {'val/loss', 'val/loss_simple', 'val/loss_vlb'}`` and their ``_ema``
    versions: the training loss without dropout, with clip i at t = (i + ½)·T / N and its
    own fixed noise, averaged over the N real clips of ``batches`` (padding masked out)."""
    global_batches = [mesh_lib.make_global_batch(batch, mesh) for batch in batches]
    # A jitted sum: the masks are global arrays, spread over processes in multi-host runs.
    num_clips = int(sum(jax.jit(jnp.sum)(b["mask"]) for b in global_batches))
    timesteps = model.schedule.num_timesteps
    key = jax.random.fold_in(prng_key(seed), VALIDATION_SEED_STREAM)

    @xla_cpu.jit
    def batch_sums(params, vq_params, batch):
        latents = model.batch_latents(vq_params, batch)
        index, real = batch["index"], batch["mask"] > 0
        t = jnp.minimum((index + 0.5) * timesteps / num_clips, timesteps - 1).astype(jnp.int32)
        target_shape = (model.k,) + latents.shape[2:]
        noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), target_shape))(
            index
        )

        def clip_losses(clip_latents, clip_t, clip_noise):  # a batch of one: that clip's values
            one = {"latents": clip_latents[None]}
            return model.loss(
                params, None, one, key, t=clip_t[None], noise=clip_noise[None], train=False
            )[1]

        per_clip = jax.vmap(clip_losses)(latents, t, noise)
        return {k: jnp.sum(jnp.where(real, v, 0.0)) for k, v in per_clip.items()}

    def validation_fn(state: TrainState) -> dict:
        sums = {
            suffix: jax.tree.map(
                lambda *values: sum(values),
                *(batch_sums(params, vq_params, batch) for batch in global_batches),
            )
            for suffix, params in (("", state.params), ("_ema", state.ema_params))
        }
        return {
            f"val/{name}{suffix}": float(value) / num_clips
            for suffix, losses in jax.device_get(sums).items()
            for name, value in losses.items()
        }

    return validation_fn


def _keeping_best(validation_fn: Callable, config: Any, vq_params: Any, workdir: str) -> Callable:
    """``validation_fn`` that also bundles the EMA weights when ``val/loss_ema`` ranks among
    the ``train.keep_best`` lowest."""
    best = BestBundles(
        os.path.join(workdir, folders.BEST_DIR),
        config.train.keep_best,
        "val/loss_ema",
        config,
        vq_params,
    )

    def validate_and_keep(state: TrainState) -> dict:
        metrics = validation_fn(state)
        step, ema_updates = map(int, jax.device_get((state.step, state.ema_updates)))
        best.keep(step, state.ema_params, metrics["val/loss_ema"], ema_updates)
        return metrics

    return validate_and_keep


def train(config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True) -> Any:
    """Trains (or resumes) in ``workdir``; returns the final train state. A workdir whose
    checkpoint is of another model (or trainer, or optimizer state) is a ``ConfigError``
    naming the fields; a ``workdir`` that is a file, a ``ValueError``. The run records its files
    and folders as absolute paths (``config.with_absolute_paths``). ``show_progress=False``
    hides the progress bar."""
    config = config_lib.with_absolute_paths(config)
    checkpoint.check_workdir(workdir)
    with workdir_lock.hold(workdir):  # a second run fails now, before reading its data
        return _train(config, workdir, show_progress)


def _train(config: ml_collections.ConfigDict, workdir: str, show_progress: bool) -> Any:
    """``train`` in the workdir it holds."""
    checkpoint.check_saved_config(workdir, config)
    initial_params = loop.fine_tuning_params(
        workdir,
        "train.init_from",
        config.train.init_from,
        lambda path: fine_tuning_start(path, config),
    )
    model = LatentDiffusion.from_config(config)
    validate = config.train.eval_every > 0
    previews = config.train.preview_every > 0
    # Read even when every batch is a cached latent: sampling, evaluation and export need the
    # VQ the run records, so a wrong path fails now rather than after training.
    vq_params = _run_vq_params(config)
    validation_field, validation_split = config_lib.validation_split(config)
    validation_cached = validate and validation_field.startswith("latent_")
    for cache in (config.data.latent_train_dir, validation_split if validation_cached else ""):
        if cache:
            latent_cache.check_cache_matches(config, cache, vq_params)
    frames_field = validation_field.removeprefix("latent_")
    if validation_cached and config.data[frames_field]:  # the previews read these frames
        latent_cache.check_cache_source(
            validation_field, validation_split, frames_field, config.data[frames_field]
        )

    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, slices=config.mesh.slices)
    iterator = train_iterator(config, mesh_lib.batch_sharding(mesh))
    evaluations = []
    if validate:
        batches = load_validation_batches(config)
        validation_vq = None if validation_cached else vq_params  # cached: unused
        validation_fn = make_validation_fn(model, validation_vq, batches, mesh, config.seed)
        if config.train.keep_best > 0:
            validation_fn = _keeping_best(validation_fn, config, vq_params, workdir)
        evaluations.append((config.train.eval_every, validation_fn))
    if previews:
        preview_fn = preview.make_preview_fn(
            model,
            jax.device_put(vq_params, mesh_lib.replicated(mesh)),
            preview.load_preview_clips(config, mesh),
            config.train.preview_clips,
            config.eval.pred_frames,
            config.seed,
        )
        evaluations.append((config.train.preview_every, preview_fn))
    train_vq_params = None if config.data.latent_train_dir else vq_params
    with iterator:  # stops its reader processes however training ends
        return loop.train_loop(
            config,
            workdir,
            model.init_denoiser,
            make_loss_fn(model, train_vq_params),
            iterator,
            evaluations=evaluations,
            initial_params=initial_params,
            show_progress=show_progress,
        )


def _run_vq_params(config: ml_collections.ConfigDict) -> Any:
    """``config.vq_params``; when missing while ``train.init_from`` is a bundle, the error
    names the bundle's own VQ file (a fine-tuning run usually wants that VQ)."""
    try:
        return load_vq_params(config.vq_params, config)
    except FileNotFoundError as error:
        start = config.train.init_from
        if not (start and folders.is_bundle(start)):
            raise
        bundled = os.path.join(start, folders.VQ_FILE)
        raise FileNotFoundError(
            f"{error}; to fine-tune with the VQ of the bundle train.init_from names: "
            f"--config.vq_params={bundled}"
        ) from None


def fine_tuning_start(path: str, config: ml_collections.ConfigDict) -> Any:
    """The EMA weights of the bundle at ``path`` (``train.init_from``; host arrays), after
    checking that it holds this config's model (``checkpoint.DENOISER_FIELDS``: architecture,
    latent scale, schedule, parameterization), else a ``ConfigError`` naming what differs."""
    bundle = bundle_lib.load_bundle(path)
    differences = checkpoint.model_differences(
        checkpoint.config_to_json(bundle.config),
        checkpoint.config_to_json(config),
        f"in {path}",
        derived=None,  # the optimizer starts afresh: its settings may differ
    )
    if differences:
        raise config_lib.ConfigError(
            f"{path!r} holds another model: {'; '.join(differences)}. Fine-tune with the "
            f"bundle's architecture and schedule, or start without train.init_from."
        )
    return bundle.params

"""Training the VQ-f4 first stage with the VQGAN objective on the shared engine.

The objective is taming's ``VQLPIPSWithDiscriminator`` (pieces in
``models/vq_losses.py``): L1 reconstruction, codebook + commitment loss with
LDM's legacy β placement (``vq_train.legacy_beta``), an optional LPIPS term
(``vq_train.perceptual_weight`` > 0; its weights are ``vq_train.lpips_params``, else
``eval.lpips_params``: taming's is LPIPS-VGG16, ``convert_lpips.py --vgg16``) and an
optional PatchGAN discriminator (``vq_train.disc_weight`` > 0) that is
switched on at step ``vq_train.disc_start`` with the adaptive weight; from then on
both adversarial terms are scaled by ``vq_train.disc_factor`` (taming's
``disc_factor``), and the discriminator trains on the hinge or the vanilla (softplus)
loss (``vq_train.disc_loss``, taming's ``disc_loss``).

The VQ trains on single frames: the loader yields clips of one frame, which are
flattened to ``(B, H, W, C)`` and repeated to RGB (as for the frozen VQ).

Differences from taming, on purpose:

* both updates of a GAN step use the same reconstructions: the discriminator
  sees ``sg(x_rec)`` of the generator step's forward pass instead of a second
  forward pass with the already-updated autoencoder;
* the discriminator normalises with GroupNorm (see ``PatchDiscriminator``);
* codebook usage is counted between dead-code restarts: every
  ``vq_train.dead_code_restart_every`` steps, codes no frame used since the
  last restart are set to random encoder outputs of the current batch.

The engine's loop reads ``config.train`` / ``config.optimizer`` /
``config.data.batch_size``; ``engine_config`` derives them from ``vq_train``.
At the end the **raw** (not EMA) VQ params are written to
``workdir/vq_params.safetensors``, the format of ``scripts/convert_ldm_vq.py``,
so ``config.vq_params`` can name either. LDM's VQ has no EMA; the engine keeps
one anyway (``train.ema_rate``), it is only in the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from predvdm_jax import atomic_io, xla_cpu
from predvdm_jax.batching import pad_batch
from predvdm_jax.config import ConfigError, validation_split, with_absolute_paths, with_overrides
from predvdm_jax.data.hdf5 import DatasetError, VideoShards
from predvdm_jax.data.loader import eval_windows, reading_options, to_model_range, train_iterator
from predvdm_jax.diffusion.latent_diffusion import build_vq, to_data_channels, to_rgb
from predvdm_jax.evaluation import metrics as metrics_lib
from predvdm_jax.evaluation.images import paired_grid, to_uint8, to_unit_range
from predvdm_jax.interop.ldm_vq import VQ_METADATA_KIND
from predvdm_jax.interop.params import RECORDED_DATA_FIELDS, load_vq_params
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors
from predvdm_jax.models import vq_losses
from predvdm_jax.models.autoencoder import VQModel
from predvdm_jax.models.lpips import TRUNK_NAMES, load_lpips_params, lpips_distance, lpips_trunk
from predvdm_jax.training import checkpoint, workdir_lock
from predvdm_jax.training.data_checks import check_split_frames
from predvdm_jax.training.loop import fine_tuning_params, train_loop
from predvdm_jax.training.optim import global_norm, make_optimizer
from predvdm_jax.training.train_state import TrainState
from predvdm_jax.training.train_step import apply_gradients, jit_train_step

VQ_PARAMS_FILE = "vq_params.safetensors"
VQ_EVAL_FILE = "vq_eval.json"
PREVIEW_CLIPS = 4  # clips in the logged reconstruction image
# Logged as exactly 0 while the discriminator is off (before disc_start or disabled).
DISC_METRICS = ("d_weight", "disc_factor", "g_loss", "disc_loss", "logits_real", "logits_fake")


def discriminator_spec(vq_train: Any) -> tuple[int, int] | None:
    """``(disc_layers, disc_channels)`` of the discriminator a ``vq_train`` section (a
    ``ConfigDict`` or its dict) trains, or None: ``disc_weight`` 0 makes none."""
    if not vq_train["disc_weight"] > 0:
        return None
    return int(vq_train["disc_layers"]), int(vq_train["disc_channels"])


def _check_discriminator_fits(layers: int, image_size: int) -> None:
    """A ``ConfigError`` when a PatchGAN of ``layers`` has no output for the frames (XLA
    would fail in its verifier), naming the smallest frames and the deepest fit."""
    output = vq_losses.patch_discriminator_output_size
    if output(image_size, layers) >= 1:
        return
    deepest = max((n for n in range(1, layers) if output(image_size, n) >= 1), default=None)
    smallest = next(s for s in range(image_size, 1 << 16) if output(s, layers) >= 1)
    fix = f"set vq_train.disc_layers={deepest}" if deepest else "use larger frames"
    raise ConfigError(
        f"invalid config: vq_train.disc_layers={layers} needs frames of at least "
        f"{smallest}x{smallest} (data.image_size={image_size} leaves the PatchGAN no output); "
        f"{fix}, or vq_train.disc_weight=0 to train without the discriminator"
    )


def _discriminator_name(config: Any) -> str:
    spec = discriminator_spec(config["vq_train"])
    return "off" if spec is None else f"on ({spec[0]} layers, {spec[1]} channels)"


DERIVED_FIELDS = {"the discriminator (vq_train.disc_weight > 0)": _discriminator_name}
"""For ``checkpoint.check_saved_config``: with ``checkpoint.VQ_FIELDS``, what decides a VQ run's
checkpointed parameters."""


READ_FIELDS = (
    "name",  # a label, logged with the hyperparameters
    "seed",
    "data.train_dir",
    "data.test_dir",
    "data.val_dir",
    "data.image_size",
    "data.channels",
    "data.horizontal_flip",
    "data.num_threads",
    "data.prefetch",
    "data.num_workers",
    "data.preload_max_gb",
    "vq",
    "vq_chunk",
    "vq_train",
    "model.dtype",
    "eval.seed",
    "eval.lpips_params",
    "train.ema_rate",
    "train.profile_start",
    "train.profile_steps",
    "mesh",
)
"""The config fields (a section: all its fields) ``train_vq`` reads, itself and through the
engine (``engine_config``); ``scripts/train_vq.py`` refuses overrides of the others."""

REPLACED_FIELDS = {
    "data.batch_size": "vq_train.batch_size",
    "train.num_steps": "vq_train.num_steps",
    "train.log_every": "vq_train.log_every",
    "train.save_every": "vq_train.save_every",
    "train.max_to_keep": "vq_train.max_to_keep",
    "train.eval_every": "vq_train.eval_every",
    "train.eval_clips": "vq_train.eval_clips",
    "optimizer.base_learning_rate": "vq_train.learning_rate",
    "optimizer.scale_lr": "vq_train.scale_lr",
    "optimizer.warmup_steps": "vq_train.warmup_steps",
    "optimizer.f_min": "vq_train.lr_end_fraction",
    "optimizer.b1": "vq_train.b1",
    "optimizer.b2": "vq_train.b2",
}
"""The denoiser's fields the VQ trainer does not read (``engine_config`` replaces them) with
the ``vq_train`` field that does the job for the VQ."""


def params_path(workdir: str) -> str:
    """The file ``train_vq`` writes the trained VQ params of a run in ``workdir`` to."""
    return os.path.join(workdir, VQ_PARAMS_FILE)


def unread_hints(workdir: str) -> dict[str, str]:
    """For ``cli.reject_unread_overrides``: what to do instead of overriding a field outside
    ``READ_FIELDS`` of a VQ run in ``workdir``."""
    hints = {field: f"set {instead}" for field, instead in REPLACED_FIELDS.items()}
    hints["vq_params"] = (
        f"the trained params go to {params_path(workdir)}, for the denoiser's config.vq_params"
    )
    return hints


def engine_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``train`` / ``optimizer`` / ``data.batch_size`` come from ``vq_train``.

    Optimizer: Adam (AdamW without decay) with betas ``vq_train.b1/b2``, lr
    ``learning_rate`` (× batch when ``scale_lr``, as LDM's main.py), linear
    warm-up over ``warmup_steps``, no gradient clipping (taming clips none), no gradient
    accumulation (``train.grad_accum_steps`` is the denoiser's).
    ``lr_end_fraction`` < 1 decays the lr linearly to that fraction of its
    peak at ``num_steps`` (LDM's ``LambdaLinearScheduler`` with one cycle of
    ``num_steps``); 1 keeps it constant, as taming does.
    """
    v = config.vq_train
    derived = ml_collections.ConfigDict(config.to_dict())
    derived.data.batch_size = int(v.batch_size)
    derived.optimizer.update(
        base_learning_rate=float(v.learning_rate),
        scale_lr=bool(v.scale_lr),
        warmup_steps=int(v.warmup_steps),
        f_start=0.0 if v.warmup_steps > 0 else 1.0,
        f_max=1.0,
        f_min=float(v.lr_end_fraction),
        weight_decay=0.0,
        b1=float(v.b1),
        b2=float(v.b2),
        eps=1e-8,
        grad_clip=0.0,
    )
    derived.optimizer.cycle_length = float(max(int(v.num_steps), 1))
    derived.train.update(
        num_steps=int(v.num_steps),
        log_every=int(v.log_every),
        save_every=int(v.save_every),
        max_to_keep=int(v.max_to_keep),
        grad_accum_steps=1,  # the denoiser's setting; the VQGAN step takes the whole batch
    )
    return derived


def frames_from_batch(batch: dict) -> jax.Array:
    """Loader batch ``{'video': (B, T, H, W, C)}`` → RGB frames ``(B·T, H, W, 3)``."""
    video = batch["video"]
    return to_rgb(video.reshape((-1,) + video.shape[2:]))


@dataclasses.dataclass(frozen=True, eq=False)
class VQObjective:
    """The VQGAN losses for one configured model; pure functions of explicit params.

    Compared and hashed by identity (it may hold the LPIPS params).
    """

    model: VQModel
    codebook_weight: float = 1.0
    beta: float = 0.25
    legacy_beta: bool = True
    perceptual_weight: float = 0.0
    lpips_params: Any = None
    discriminator: vq_losses.PatchDiscriminator | None = None
    disc_start: int = 0
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_loss: str = "hinge"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "VQObjective":
        v = config.vq_train
        lpips_params = None
        if v.perceptual_weight > 0:
            path, setting = (
                (v.lpips_params, "vq_train.lpips_params")
                if v.lpips_params
                else (config.eval.lpips_params, "eval.lpips_params")
            )
            lpips_params = load_lpips_params(path, setting)
            if lpips_params is None:
                raise ValueError(
                    "vq_train.perceptual_weight > 0 but vq_train.lpips_params and "
                    "eval.lpips_params are unset; convert LPIPS with scripts/convert_lpips.py "
                    "(--vgg16 for taming's loss) and set vq_train.lpips_params, or set "
                    "vq_train.perceptual_weight=0"
                )
            trunk = TRUNK_NAMES[lpips_trunk(lpips_params)]
            logging.info("VQ perceptual loss: %s, from %s=%s", trunk, setting, path)
        discriminator = None
        spec = discriminator_spec(v)
        if spec is not None:
            _check_discriminator_fits(spec[0], int(config.data.image_size))
            discriminator = vq_losses.PatchDiscriminator(ndf=spec[1], n_layers=spec[0])
        return cls(
            build_vq(config),
            float(v.codebook_weight),
            float(v.beta),
            bool(v.legacy_beta),
            float(v.perceptual_weight),
            lpips_params,
            discriminator,
            int(v.disc_start),
            float(v.disc_weight),
            float(v.disc_factor),
            str(v.disc_loss),
        )

    def init_params(self, key: jax.Array, image_size: int) -> Any:
        x = jnp.zeros((1, image_size, image_size, self.model.in_channels))
        return self.model.init(key, x)["params"]

    def init_discriminator(self, key: jax.Array, image_size: int) -> Any:
        x = jnp.zeros((1, image_size, image_size, self.model.out_ch))
        return self.discriminator.init(key, x)["params"]

    def _perceptual_fn(self) -> Callable | None:
        if self.lpips_params is None or self.perceptual_weight <= 0:
            return None
        # Taming's spatial average of each layer's distance map (evaluation's LPIPS, PredVDM's
        # spatial=True, upsamples the maps to the frame size first).
        return lambda x, rec: lpips_distance(self.lpips_params, x, rec, spatial=False)

    def forward(
        self, params: Any, frames: jax.Array, rng: jax.Array, return_features: bool = False
    ):
        return self.model.apply(
            {"params": params},
            frames,
            deterministic=False,
            return_features=return_features,
            rngs={"dropout": rng},
        )

    def reconstruction_terms(self, params: Any, frames: jax.Array, rng: jax.Array):
        """(loss, metrics, output) without the adversarial term (the discriminator is off)."""
        output = self.forward(params, frames, rng)
        nll = vq_losses.reconstruction_loss(
            frames, output.reconstruction, self._perceptual_fn(), self.perceptual_weight
        )
        q_loss = vq_losses.codebook_loss(output.loss_terms, self.beta, self.legacy_beta)
        loss = nll + self.codebook_weight * q_loss
        metrics = {
            "total_loss": loss,
            "quant_loss": q_loss,
            "nll_loss": nll,
            "rec_loss": vq_losses.l1_loss(frames, output.reconstruction),
        }
        metrics.update({name: jnp.zeros((), jnp.float32) for name in DISC_METRICS})
        return loss, metrics, output

    def adversarial_terms(
        self, params: Any, disc_params: Any, frames: jax.Array, rng: jax.Array, step: jax.Array
    ):
        """(loss, metrics, output) with the discriminator's generator term and adaptive weight."""
        output = self.forward(params, frames, rng, return_features=True)
        discriminate = lambda images: self.discriminator.apply({"params": disc_params}, images)
        loss, metrics = vq_losses.vqgan_generator_loss(
            frames,
            output,
            params["decoder"]["conv_out"],
            discriminate,
            step,
            disc_start=self.disc_start,
            codebook_weight=self.codebook_weight,
            beta=self.beta,
            legacy_beta=self.legacy_beta,
            disc_weight=self.disc_weight,
            disc_factor=self.disc_factor,
            perceptual_fn=self._perceptual_fn(),
            perceptual_weight=self.perceptual_weight,
        )
        return loss, dict(metrics), output

    def discriminator_loss(
        self, disc_params: Any, frames: jax.Array, reconstruction: jax.Array, step: jax.Array
    ):
        apply = lambda images: self.discriminator.apply({"params": disc_params}, images)
        return vq_losses.vqgan_discriminator_loss(
            apply(frames),
            apply(jax.lax.stop_gradient(reconstruction)),
            step,
            disc_start=self.disc_start,
            disc_factor=self.disc_factor,
            loss_type=self.disc_loss,
        )

    def engine_loss(self, params: Any, batch: dict, rng: jax.Array, step: jax.Array):
        """The engine's ``loss_fn`` signature, for the discriminator-free objective."""
        loss, metrics, _ = self.reconstruction_terms(params, frames_from_batch(batch), rng)
        return loss, metrics


def make_vq_train_step_builder(
    objective: VQObjective, disc_optimizer: optax.GradientTransformation | None, restart_every: int
) -> Callable:
    """A ``train_step_builder`` for ``train_loop``: the VQGAN step, with ``state.extra`` =
    ``{'code_counts': (n_embed,) int32, 'disc': {'params', 'opt_state'}}`` ('disc' only with a
    discriminator)."""
    n_codes = objective.model.n_embed

    def builder(
        loss_fn,
        optimizer,
        ema_rate,
        mesh,
        state_sharding,
        batch_sharding,
        *,
        lr_schedule=None,
        donate=True,
    ):
        del loss_fn

        def step(state: TrainState, batch: dict):
            frames = frames_from_batch(batch)
            rng = jax.random.fold_in(state.rng, state.step)
            dropout_key, restart_key = jax.random.split(rng)
            extra = dict(state.extra)

            def plain(_):
                def gen(p):
                    loss, metrics, output = objective.reconstruction_terms(p, frames, dropout_key)
                    return loss, (metrics, output)

                (loss, (metrics, output)), grads = jax.value_and_grad(gen, has_aux=True)(
                    state.params
                )
                return loss, metrics, grads, _step_outputs(output), extra.get("disc")

            def adversarial(_):
                def gen(p):
                    loss, metrics, output = objective.adversarial_terms(
                        p, extra["disc"]["params"], frames, dropout_key, state.step
                    )
                    return loss, (metrics, output)

                (loss, (metrics, output)), grads = jax.value_and_grad(gen, has_aux=True)(
                    state.params
                )
                (_, disc_metrics), disc_grads = jax.value_and_grad(
                    objective.discriminator_loss, has_aux=True
                )(extra["disc"]["params"], frames, output.reconstruction, state.step)
                updates, disc_opt_state = disc_optimizer.update(
                    disc_grads, extra["disc"]["opt_state"], extra["disc"]["params"]
                )
                disc = {
                    "params": optax.apply_updates(extra["disc"]["params"], updates),
                    "opt_state": disc_opt_state,
                }
                metrics.update(disc_metrics)
                return loss, metrics, grads, _step_outputs(output), disc

            if objective.discriminator is None:
                loss, metrics, grads, (reconstruction, indices, latents), _ = plain(None)
            else:
                loss, metrics, grads, (reconstruction, indices, latents), disc = jax.lax.cond(
                    state.step >= objective.disc_start,
                    _same_types(adversarial),
                    _same_types(plain),
                    None,
                )
                extra["disc"] = disc
            metrics = dict(metrics)
            metrics["loss"] = loss
            metrics["grad_norm"] = global_norm(grads)
            if lr_schedule is not None:
                metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
            usage = vq_losses.codebook_usage(indices, n_codes)
            metrics.update(
                perplexity=usage["perplexity"], dead_codes=usage["dead_codes"].astype(jnp.float32)
            )
            metrics["psnr"] = jnp.mean(
                metrics_lib.psnr(
                    to_unit_range(frames)[:, None], to_unit_range(reconstruction)[:, None]
                )
            )
            new_state = apply_gradients(state, grads, optimizer, ema_rate, metrics["grad_norm"])

            counts = extra["code_counts"] + jnp.bincount(indices.reshape(-1), length=n_codes)
            restarted = jnp.zeros((), jnp.float32)
            if restart_every > 0:
                due = new_state.step % restart_every == 0
                codebook = new_state.params["quantize"]["embedding"]
                fresh, dead = vq_losses.restart_dead_codes(
                    codebook, counts, jax.lax.stop_gradient(latents), restart_key
                )
                params = dict(new_state.params)
                params["quantize"] = {
                    **params["quantize"],
                    "embedding": jnp.where(due, fresh, codebook),
                }
                new_state = new_state.replace(params=params)
                restarted = jnp.where(due, dead, 0).astype(jnp.float32)
                counts = jnp.where(due, jnp.zeros_like(counts), counts)
            metrics["restarted_codes"] = restarted
            extra["code_counts"] = counts.astype(jnp.int32)
            return new_state.replace(extra=extra), metrics

        return jit_train_step(step, mesh, state_sharding, batch_sharding, donate)

    return builder


def _step_outputs(output) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(reconstruction, indices, latents) of the step's forward pass, gradients stopped."""
    return jax.lax.stop_gradient((output.reconstruction, output.indices, output.z))


def _same_types(branch: Callable) -> Callable:
    """Casts the metrics of a ``lax.cond`` branch to float32 so both branches agree."""

    def wrapped(operand):
        loss, metrics, *rest = branch(operand)
        return (loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}, *rest)

    return wrapped


def load_eval_frames(
    split_dir: str,
    num_clips: int,
    num_frames: int,
    seed: int,
    config: Any = None,
    field: str = "test_dir",
) -> np.ndarray:
    """The fixed evaluation clips (``vq_train.eval_clips`` × ``eval_frames``) of a split as
    float32 ``(N, T, H, W, C)`` in [-1, 1]. With ``config``, frames of another size or channel
    count than its ``data.image_size`` / ``data.channels`` are a ``DatasetError`` naming the
    split's config field ``data.<field>``."""
    if config is None:
        shards = VideoShards(split_dir)
    else:
        shards = check_split_frames(split_dir, config, field)
    shortest = int(shards.frame_counts.min())
    if shortest < num_frames:
        raise DatasetError(
            f"{split_dir} has videos of {shortest} frames, shorter than vq_train.eval_frames "
            f"{num_frames}; set --config.vq_train.eval_frames={shortest} or less."
        )
    windows = eval_windows(shards.frame_counts, num_clips, num_frames, seed)
    return np.stack([to_model_range(shards.read_clip(v, s, num_frames)) for v, s in windows])


def make_eval_fn(model: VQModel, clips: np.ndarray, chunk: int) -> Callable[..., dict]:
    """``eval_fn(state_or_params, with_image=False) -> {'test_psnr', 'test_ssim',
    'test_perplexity', 'test_dead_codes'}``, plus ``test/reconstruction`` with the image.

    Reconstructs every frame of ``clips`` (quantized, as the frozen VQ decodes),
    clamps, returns to the dataset's channels (mean of RGB for grayscale) and
    averages PSNR / SSIM (``evaluation.metrics``, PredVDM's definitions) over
    all frames; codebook usage is over all latent positions of all frames. The
    image has two rows per clip (first ``PREVIEW_CLIPS``): the frames, their
    reconstructions.
    """
    num_clips, num_frames, height, width, channels = clips.shape
    frames = clips.reshape((-1, height, width, channels))
    chunk = max(1, min(chunk, frames.shape[0]))
    batches = [pad_batch(frames[i : i + chunk], chunk) for i in range(0, len(frames), chunk)]

    @xla_cpu.jit
    def reconstruct(params, x):
        output = model.apply({"params": params}, to_rgb(x))
        return to_data_channels(
            jnp.clip(output.reconstruction, -1.0, 1.0), channels
        ), output.indices

    def eval_fn(state_or_params, with_image: bool = False) -> dict:
        params = (
            state_or_params.params if isinstance(state_or_params, TrainState) else state_or_params
        )
        outputs = [jax.device_get(reconstruct(params, b)) for b in batches]
        recon = np.concatenate([r for r, _ in outputs])[: frames.shape[0]]
        indices = np.concatenate([i for _, i in outputs])[: frames.shape[0]]
        target = to_unit_range(clips)
        recon = to_unit_range(recon.reshape(clips.shape))
        usage = jax.device_get(vq_losses.codebook_usage(jnp.asarray(indices), model.n_embed))
        results = {
            "test_psnr": float(np.mean(metrics_lib.psnr(target, recon))),
            "test_ssim": float(np.mean(metrics_lib.ssim(target, recon))),
            "test_perplexity": float(usage["perplexity"]),
            "test_dead_codes": float(usage["dead_codes"]),
        }
        if with_image:
            shown = [to_uint8(v[:PREVIEW_CLIPS], (0.0, 1.0)) for v in (target, recon)]
            results["test/reconstruction"] = paired_grid(*shown)
        return results

    return eval_fn


def _host_params(params: Any) -> Any:
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(params, tiled=True)
    return jax.device_get(params)


def save_vq_params(path: str, params: Any, config: ml_collections.ConfigDict | None = None) -> None:
    """Writes VQ params as the project's one VQ params format (safetensors, '/'-joined keys)."""
    host = _host_params(params)
    if jax.process_index() == 0:
        metadata = {**VQ_METADATA_KIND, "source": "scripts/train_vq.py"}
        if config is not None:
            metadata["vq"] = json.dumps(config.vq.to_dict())
            frames = {name: int(config.data[name]) for name in RECORDED_DATA_FIELDS}
            metadata["data"] = json.dumps(frames)
        save_params_safetensors(path, host, metadata=metadata)


def discriminator_optimizer(config: Any) -> optax.GradientTransformation:
    """The discriminator's Adam: the generator's settings (``engine_config``), its learning
    rate following the training steps from ``vq_train.disc_start``, where its first update
    comes (LDM steps both optimizers' ``LambdaLR`` every step), not restarting its warm-up."""
    return make_optimizer(engine_config(config), first_step=int(config.vq_train.disc_start))[0]


def train_vq(
    config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True
) -> dict:
    """Trains (or resumes) the VQ of ``config`` in ``workdir``; returns the final test metrics.

    Writes checkpoints and logs (``metrics.jsonl``, TensorBoard) through the
    engine, then ``workdir/vq_params.safetensors`` (raw params) and
    ``workdir/vq_eval.json`` (final test PSNR/SSIM/codebook usage). A workdir whose checkpoint
    is of another VQ, or has the discriminator switched, is a ``ConfigError`` naming the fields.
    The run records its files and folders as absolute paths (``config.with_absolute_paths``),
    ``vq_params`` as the file it writes (``params_path``). ``show_progress=False`` hides the
    progress bar.
    """
    config = with_absolute_paths(
        with_overrides(config, {"vq_params": params_path(workdir)}, validated=False)
    )
    checkpoint.check_workdir(workdir, trainer="vq")
    with workdir_lock.hold(workdir):  # through the params and scores written after training
        return _train_vq(config, workdir, show_progress)


def _train_vq(config: ml_collections.ConfigDict, workdir: str, show_progress: bool) -> dict:
    """``train_vq`` in the workdir it holds."""
    checkpoint.check_saved_config(
        workdir, config, checkpoint.VQ_FIELDS, DERIVED_FIELDS, trainer="vq"
    )
    eval_field, eval_split = validation_split(config, frames_only=True)
    if not config.data.train_dir or not eval_split:
        raise ValueError(
            "VQ training needs data.train_dir and data.test_dir or data.val_dir (HDF5 frame "
            "splits, e.g. from scripts/make_moving_digits.py)"
        )
    # Both splits before anything is built: frames of another size train (or score) another VQ.
    check_split_frames(config.data.train_dir, config, "train_dir")
    v = config.vq_train
    initial_params = fine_tuning_params(
        workdir,
        "vq_train.init_from",
        v.init_from,
        lambda path: load_vq_params(path, config, "vq_train.init_from"),
    )
    derived = engine_config(config)
    objective = VQObjective.from_config(config)
    image_size = int(config.data.image_size)
    disc_optimizer = (
        discriminator_optimizer(config) if objective.discriminator is not None else None
    )

    def extra_init_fn(key):
        extra = {"code_counts": jnp.zeros((objective.model.n_embed,), jnp.int32)}
        if objective.discriminator is not None:
            disc_params = objective.init_discriminator(key, image_size)
            extra["disc"] = {"params": disc_params, "opt_state": disc_optimizer.init(disc_params)}
        return extra

    data = train_iterator(
        config.data.train_dir,
        1,
        int(v.batch_size),
        int(config.seed),
        horizontal_flip=bool(config.data.horizontal_flip),
        **reading_options(config.data),
    )
    clips = load_eval_frames(
        eval_split, int(v.eval_clips), int(v.eval_frames), int(config.eval.seed), config, eval_field
    )
    eval_fn = make_eval_fn(objective.model, clips, min(int(config.vq_chunk), int(v.batch_size)))
    with data:  # stops its reader processes however training ends
        state = train_loop(
            derived,
            workdir,
            lambda key: objective.init_params(key, image_size),
            objective.engine_loss,
            data,
            evaluations=[(int(v.eval_every), functools.partial(eval_fn, with_image=True))],
            extra_init_fn=extra_init_fn,
            train_step_builder=make_vq_train_step_builder(
                objective, disc_optimizer, int(v.dead_code_restart_every)
            ),
            initial_params=initial_params,
            show_progress=show_progress,
        )
    final = eval_fn(state)
    final["step"] = int(jax.device_get(state.step))
    logging.info("final test reconstruction: %s", final)
    save_vq_params(config.vq_params, state.params, config)
    if jax.process_index() == 0:
        atomic_io.write_text(os.path.join(workdir, VQ_EVAL_FILE), json.dumps(final, indent=2))
    return final

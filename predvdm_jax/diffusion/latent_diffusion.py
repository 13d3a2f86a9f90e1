"""The PredVDM system: frozen VQ first stage + PredVDM denoiser + diffusion.

Built from a config, it is the one place that knows how the pieces fit: how
frames become latents (grayscale repeated to 3 channels exactly once, scaled
by ``scale_factor``), how a training clip splits into conditioning and target
latents, and how a rollout turns conditioning frames into predicted frames
(averaged back to 1 channel for grayscale data).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from predvdm_jax import xla_cpu
from predvdm_jax.diffusion import rollout as rollout_lib
from predvdm_jax.diffusion.loss import diffusion_loss
from predvdm_jax.diffusion.parameterization import as_eps_predictor
from predvdm_jax.diffusion.samplers import SamplerSettings
from predvdm_jax.diffusion.schedule import DiffusionSchedule, make_schedule
from predvdm_jax.models.autoencoder import VQModel, decode_video, encode_video, vq_model
from predvdm_jax.models.predictor import PredVDMDenoiser


def build_vq(config: ml_collections.ConfigDict) -> VQModel:
    """The frozen first stage, computing in ``model.dtype`` (its quantizer stays float32)."""
    return vq_model(config.vq, dtype=jnp.dtype(config.model.dtype))


def build_denoiser(config: ml_collections.ConfigDict) -> PredVDMDenoiser:
    unet = dict(
        config.unet.to_dict(),
        dtype=jnp.dtype(config.model.dtype),
        attention_impl=config.model.attention,
        remat=config.model.remat,
    )
    return PredVDMDenoiser(
        mode=config.model.mode,
        k=config.data.pred_frames,
        n_cond=config.data.cond_frames,
        latent_channels=config.vq.embed_dim,
        unet=unet,
        attn_heads_tc=config.model.attn_heads_tc,
        attn_heads_ct=config.model.attn_heads_ct,
        attn_dim_head=config.model.attn_dim_head,
    )


def sampler_settings(sampling: ml_collections.ConfigDict) -> SamplerSettings:
    return SamplerSettings(
        sampler=sampling.sampler,
        steps=int(sampling.steps),
        eta=float(sampling.eta),
        order=int(sampling.order),
        skip_type=sampling.skip_type,
        lower_order_final=bool(sampling.lower_order_final),
        clip_x0=float(sampling.clip_x0) if sampling.clip_x0 > 0 else None,
        dynamic_threshold=(
            float(sampling.dynamic_threshold) if sampling.dynamic_threshold > 0 else None
        ),
    )


def to_rgb(video: jax.Array) -> jax.Array:
    """Repeat a 1-channel video to 3 channels (the single place this happens)."""
    return jnp.repeat(video, 3, axis=-1) if video.shape[-1] == 1 else video


def to_data_channels(video: jax.Array, channels: int) -> jax.Array:
    """Decoded RGB frames back to the dataset's channels (mean of RGB for grayscale)."""
    return video.mean(axis=-1, keepdims=True) if channels == 1 else video


@dataclasses.dataclass(frozen=True)
class LatentDiffusion:
    config: ml_collections.ConfigDict
    vq: VQModel
    denoiser: PredVDMDenoiser
    schedule: DiffusionSchedule

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "LatentDiffusion":
        d = config.diffusion
        schedule = make_schedule(d.timesteps, d.linear_start, d.linear_end, d.beta_schedule)
        return cls(config, build_vq(config), build_denoiser(config), schedule)

    @property
    def cond_frames(self) -> int:
        return self.config.data.cond_frames

    @property
    def k(self) -> int:
        return self.config.data.pred_frames

    @property
    def latent_size(self) -> int:
        return self.config.data.image_size // self.vq.downsample_factor

    def init_denoiser(self, key: jax.Array) -> Any:
        h = self.latent_size
        c = self.config.vq.embed_dim
        x = jnp.zeros((1, self.k, h, h, c))
        cond = jnp.zeros((1, self.cond_frames, h, h, c))
        return self.denoiser.init({"params": key}, x, jnp.zeros((1,)), cond)["params"]

    def init_vq(self, key: jax.Array) -> Any:
        size = self.config.data.image_size
        return self.vq.init(key, jnp.zeros((1, size, size, self.config.vq.in_channels)))["params"]

    def encode(self, vq_params: Any, video: jax.Array) -> jax.Array:
        """Frames (B, T, H, W, 1|3) in [-1, 1] → latents (B, T, h, w, c) × scale_factor."""
        return encode_video(
            self.vq, vq_params, to_rgb(video), self.config.vq_chunk, self.config.scale_factor
        )

    def latent_std(self, vq_params: Any, video: jax.Array) -> float:
        """Std of the unscaled latents of ``video``: LDM's ``scale_by_std`` sets
        ``scale_factor = 1 / latent_std`` so the diffusion sees unit-variance latents."""
        z = encode_video(self.vq, vq_params, to_rgb(video), self.config.vq_chunk, 1.0)
        return float(jnp.std(z))

    def decode(self, vq_params: Any, latents: jax.Array, rgb: bool = False) -> jax.Array:
        """Latents → frames (B, T, H, W, data channels) in [-1, 1]: quantize, decode, clamp.

        ``rgb`` keeps the VQ's three decoded channels whatever the dataset's channels."""
        frames = decode_video(
            self.vq,
            vq_params,
            latents,
            self.config.vq_chunk,
            self.config.scale_factor,
            quantize=True,
        )
        frames = jnp.clip(frames, -1.0, 1.0)
        return frames if rgb else to_data_channels(frames, self.config.data.channels)

    def denoise(
        self,
        params: Any,
        z_t: jax.Array,
        t: jax.Array,
        z_cond: jax.Array,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        train = dropout_key is not None
        rngs = {"dropout": dropout_key} if train else {}
        return self.denoiser.apply({"params": params}, z_t, t, z_cond, train=train, rngs=rngs)

    def eps_prediction(
        self, params: Any, z_t: jax.Array, t: jax.Array, z_cond: jax.Array
    ) -> jax.Array:
        """ε̂ at z_t, whatever the denoiser's ``diffusion.parameterization``: what samplers use."""
        denoise = functools.partial(self.denoise, params)
        return as_eps_predictor(denoise, self.schedule, self.config.diffusion.parameterization)(
            z_t, t, z_cond
        )

    def batch_latents(self, vq_params: Any, batch: dict) -> jax.Array:
        """The clip's latents, from the cache or by encoding its frames with the frozen VQ."""
        if "latents" in batch:
            return batch["latents"]
        return jax.lax.stop_gradient(self.encode(vq_params, batch["video"]))

    def loss(
        self,
        params: Any,
        vq_params: Any,
        batch: dict,
        key: jax.Array,
        *,
        t: jax.Array | None = None,
        noise: jax.Array | None = None,
        train: bool = True,
    ):
        """PredVDM's training loss on one clip batch: real cond latents, the next k as targets.

        ``t`` (B,) and ``noise`` (shaped like the k target latents) replace the random
        draws, and ``train=False`` turns dropout off: a fixed validation loss.
        """
        z = self.batch_latents(vq_params, batch)
        z_cond = z[:, : self.cond_frames]
        z_target = z[:, self.cond_frames : self.cond_frames + self.k]
        loss_key, dropout_key = jax.random.split(key)
        d = self.config.diffusion
        denoise = functools.partial(
            self.denoise, params, dropout_key=dropout_key if train else None
        )
        return diffusion_loss(
            denoise,
            self.schedule,
            z_target,
            z_cond,
            loss_key,
            reduction=d.loss_reduction,
            l_eps_weight=d.l_eps_weight,
            elbo_weight=d.elbo_weight,
            t=t,
            noise=noise,
            parameterization=d.parameterization,
        )

    def make_predict_fn(
        self,
        num_frames: int,
        sampling: ml_collections.ConfigDict | None = None,
        rgb: bool = False,
    ):
        """A jitted ``fn(params, vq_params, cond_video, key) -> dict`` predicting ``num_frames``.

        ``cond_video`` (B, cond, H, W, C) in [-1, 1]; returns ``frames`` (B, num_frames, H, W, C)
        in [-1, 1] with the dataset's channels (three with ``rgb``), and the sampled ``latents``.
        """
        settings = sampler_settings(sampling or self.config.sampling)
        reencode = None
        if (sampling or self.config.sampling).reencode:
            reencode = lambda vq_params, frames: self.encode(vq_params, frames)
        rollout_fn = rollout_lib.make_rollout_fn(
            self.eps_prediction,
            lambda vq_params, latents: self.decode(vq_params, latents, rgb),
            self.schedule,
            num_frames,
            self.k,
            settings,
            reencode_apply=reencode,
        )

        def predict(params, vq_params, cond_video, key):
            self.check_cond_video(cond_video, rgb)  # at trace time: shapes and dtype are known
            return rollout_fn(params, vq_params, self.encode(vq_params, cond_video), key)

        return xla_cpu.jit(predict)

    def check_cond_video(self, cond_video, rgb: bool = False) -> None:
        """A ``ValueError`` unless ``cond_video`` is float (B >= 1, cond, size, size, channels)
        of this model's data config (with ``rgb``, gray models also take 3 channels: PredVDM's
        gray-as-RGB scoring): uint8 frames as stored on disk would be encoded as 0..255, and
        other sizes or channel counts would run on without complaint."""
        d = self.config.data
        per_clip = (self.cond_frames, d.image_size, d.image_size, d.channels)
        shape, dtype = tuple(cond_video.shape), jnp.dtype(cond_video.dtype)
        fits = len(shape) == 5 and shape[1:4] == per_clip[:3]
        fits = fits and shape[0] >= 1 and shape[4] in ((d.channels, 3) if rgb else (d.channels,))
        if not fits:
            raise ValueError(
                f"the conditioning frames must be (B, {', '.join(map(str, per_clip))}) with "
                f"B >= 1 (the model's data.cond_frames, data.image_size and data.channels), got "
                f"{shape}; pass clips of the data the model was trained on (resized and cut "
                f"to that many frames)"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"the conditioning frames must be floats in [-1, 1], got {dtype}; convert "
                f"uint8 frames with frames / 127.5 - 1"
            )

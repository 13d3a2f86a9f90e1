"""LDM VQ-f4 first stage (spec §B): Encoder, Decoder, VectorQuantizer, VQModel.

Channels-last re-implementation of `ldm/modules/diffusionmodules/model.py` and
taming's `VectorQuantizer2`. Submodule names mirror the PyTorch state_dict
(`encoder.down.0.block.1.conv1.weight` -> `encoder/down_0/block_1/conv1/kernel`)
so that `predvdm_jax.interop.ldm_vq` converts checkpoints by a mechanical rename.

Module attributes are named like LDM's `ddconfig` keys plus `embed_dim` and
`n_embed`, so a config section can be splatted: `VQModel(**ddconfig, embed_dim=3,
n_embed=8192)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from predvdm_jax.config import module_fields
from predvdm_jax.models.conv import conv_general_dilated
from predvdm_jax.models.group_norm import GroupNorm

Array = jax.Array

GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-6


def _normalize(name: str, dtype: Any) -> GroupNorm:
    return GroupNorm(GROUPNORM_GROUPS, GROUPNORM_EPS, dtype=dtype, name=name)


def _uniform_init(limit: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)

    return init


def _conv(
    features: int,
    kernel: int,
    in_channels: int,
    name: str,
    dtype: Any,
    stride: int = 1,
    padding: Any = None,
) -> nn.Conv:
    """Conv with PyTorch's padding (kernel // 2) and default init (uniform +-1/sqrt(fan_in)), as LDM trains from."""
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        dtype=dtype,
        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=_uniform_init((in_channels * kernel * kernel) ** -0.5),
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def _check_group_divisible(channels: int, where: str) -> None:
    if channels % GROUPNORM_GROUPS:
        raise ValueError(
            f"{where}: {channels} channels are not divisible by the {GROUPNORM_GROUPS} GroupNorm groups; "
            f"choose ch so that every ch*ch_mult[i] is a multiple of {GROUPNORM_GROUPS}."
        )


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 -> norm2 -> swish -> dropout -> conv2, plus a 1x1 `nin_shortcut` if channels change."""

    out_channels: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        in_channels = x.shape[-1]
        _check_group_divisible(in_channels, "ResnetBlock input")
        _check_group_divisible(self.out_channels, "ResnetBlock output")
        h = nn.swish(_normalize("norm1", self.dtype)(x))
        h = _conv(self.out_channels, 3, in_channels, "conv1", self.dtype)(h)
        h = nn.swish(_normalize("norm2", self.dtype)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = _conv(self.out_channels, 3, self.out_channels, "conv2", self.dtype)(h)
        if in_channels != self.out_channels:
            x = _conv(self.out_channels, 1, in_channels, "nin_shortcut", self.dtype)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out and a residual."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, height, width, channels = x.shape
        h = _normalize("norm", self.dtype)(x)
        q = _conv(channels, 1, channels, "q", self.dtype)(h).reshape(
            batch, height * width, channels
        )
        k = _conv(channels, 1, channels, "k", self.dtype)(h).reshape(
            batch, height * width, channels
        )
        v = _conv(channels, 1, channels, "v", self.dtype)(h).reshape(
            batch, height * width, channels
        )
        # logits accumulated in float32, not rounded to the compute dtype before the softmax
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
        logits = logits * (int(channels) ** -0.5)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = jnp.einsum("bij,bjc->bic", weights, v).reshape(batch, height, width, channels)
        return x + _conv(channels, 1, channels, "proj_out", self.dtype)(h)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then 3x3 stride-2 VALID conv (LDM's asymmetric padding)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], 3, x.shape[-1], "conv", self.dtype, stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, x.shape[-1], "conv", self.dtype)(x)


class _Level(nn.Module):
    """One resolution level: `block_i` (+ `attn_i`) then an optional `downsample` / `upsample`."""

    out_channels: int
    num_blocks: int
    with_attn: bool
    resample: str | None  # "down", "up" or None
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        for i_block in range(self.num_blocks):
            h = ResnetBlock(self.out_channels, self.dropout, self.dtype, name=f"block_{i_block}")(
                h, deterministic
            )
            if self.with_attn:
                h = AttnBlock(self.dtype, name=f"attn_{i_block}")(h)
        if self.resample == "down":
            h = Downsample(self.dtype, name="downsample")(h)
        elif self.resample == "up":
            h = Upsample(self.dtype, name="upsample")(h)
        return h


class _Mid(nn.Module):
    """block_1 -> attn_1 -> block_2 at the lowest resolution (present even when attn_resolutions is empty)."""

    channels: int
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        h = ResnetBlock(self.channels, self.dropout, self.dtype, name="block_1")(h, deterministic)
        h = AttnBlock(self.dtype, name="attn_1")(h)
        return ResnetBlock(self.channels, self.dropout, self.dtype, name="block_2")(
            h, deterministic
        )


class Encoder(nn.Module):
    """(B, H, W, in_channels) -> (B, H/f, W/f, z_channels), f = 2**(len(ch_mult)-1)."""

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 3
    double_z: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        _check_images(x, self.in_channels, "Encoder input")
        num_levels = len(self.ch_mult)
        h = _conv(self.ch, 3, x.shape[-1], "conv_in", self.dtype)(x)
        curr_res = self.resolution
        for i_level, mult in enumerate(self.ch_mult):
            last = i_level == num_levels - 1
            h = _Level(
                out_channels=self.ch * mult,
                num_blocks=self.num_res_blocks,
                with_attn=curr_res in tuple(self.attn_resolutions),
                resample=None if last else "down",
                dropout=self.dropout,
                dtype=self.dtype,
                name=f"down_{i_level}",
            )(h, deterministic)
            if not last:
                curr_res //= 2
        h = _Mid(h.shape[-1], self.dropout, self.dtype, name="mid")(h, deterministic)
        h = nn.swish(_normalize("norm_out", self.dtype)(h))
        out = 2 * self.z_channels if self.double_z else self.z_channels
        return _conv(out, 3, h.shape[-1], "conv_out", self.dtype)(h)


class Decoder(nn.Module):
    """(B, h, w, z_channels) -> (B, h*f, w*f, out_ch); no output non-linearity."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    resolution: int = 256
    z_channels: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: Array, deterministic: bool = True, return_features: bool = False):
        """With return_features, also returns the input of `conv_out` (for the VQGAN adaptive weight)."""
        _check_images(z, self.z_channels, "Decoder input")
        num_levels = len(self.ch_mult)
        h = _conv(self.ch * self.ch_mult[-1], 3, z.shape[-1], "conv_in", self.dtype)(z)
        h = _Mid(h.shape[-1], self.dropout, self.dtype, name="mid")(h, deterministic)
        curr_res = self.resolution // 2 ** (num_levels - 1)
        for i_level in reversed(range(num_levels)):
            h = _Level(
                out_channels=self.ch * self.ch_mult[i_level],
                num_blocks=self.num_res_blocks + 1,
                with_attn=curr_res in tuple(self.attn_resolutions),
                resample="up" if i_level != 0 else None,
                dropout=self.dropout,
                dtype=self.dtype,
                name=f"up_{i_level}",
            )(h, deterministic)
            if i_level != 0:
                curr_res *= 2
        h = nn.swish(_normalize("norm_out", self.dtype)(h))
        out = _conv(self.out_ch, 3, h.shape[-1], "conv_out", self.dtype)(h)
        return (out, h) if return_features else out


class CodebookLossTerms(NamedTuple):
    """The two halves of the VQ loss; equal in value, different in where gradients flow.

    commitment: mean((sg(z_q) - z)^2), gradient reaches the encoder only.
    codebook:   mean((z_q - sg(z))^2), gradient reaches the codebook only.
    `predvdm_jax.models.vq_losses.codebook_loss` weights them (LDM legacy: commitment + beta*codebook).
    """

    commitment: Array
    codebook: Array


def nearest_code_indices(z_flat: Array, codebook: Array) -> Array:
    """argmin_j |z_i - e_j|^2 for z_flat (N, D), codebook (K, D), computed as |z|^2 + |e|^2 - 2 z.e in float32.

    Same formula, order of terms and float32 precision as taming's VectorQuantizer2, so the argmin agrees
    with PyTorch (HIGHEST precision keeps TPUs from using bf16 passes for the dot product).
    """
    z_flat = z_flat.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    cross = jnp.matmul(z_flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
    distances = (
        jnp.sum(z_flat**2, axis=1, keepdims=True) + jnp.sum(codebook**2, axis=1) - 2.0 * cross
    )
    return jnp.argmin(distances, axis=1)


def quantize_with_codebook(z: Array, codebook: Array) -> tuple[Array, Array, CodebookLossTerms]:
    """Nearest-code quantization of z (..., D) with a straight-through gradient.

    Returns (z_q, indices of shape z.shape[:-1], CodebookLossTerms). The returned z_q equals the codes in
    value but its gradient w.r.t. z is the identity (z + sg(z_q - z)).
    """
    if z.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"latent has {z.shape[-1]} channels but the codebook has embed_dim={codebook.shape[-1]}; "
            "pass channels-last latents matching embed_dim."
        )
    indices = nearest_code_indices(z.reshape(-1, z.shape[-1]), codebook).reshape(z.shape[:-1])
    z_q = jnp.take(codebook, indices, axis=0).astype(z.dtype)
    terms = CodebookLossTerms(
        commitment=jnp.mean((jax.lax.stop_gradient(z_q) - z) ** 2),
        codebook=jnp.mean((z_q - jax.lax.stop_gradient(z)) ** 2),
    )
    z_q = z + jax.lax.stop_gradient(z_q - z)
    return z_q, indices, terms


class VectorQuantizer(nn.Module):
    """Codebook `embedding` (n_embed, embed_dim), initialised U(-1/n_embed, 1/n_embed) as in taming."""

    n_embed: int = 8192
    embed_dim: int = 3

    @nn.compact
    def __call__(self, z: Array) -> tuple[Array, Array, CodebookLossTerms]:
        codebook = self.param(
            "embedding", _uniform_init(1.0 / self.n_embed), (self.n_embed, self.embed_dim)
        )
        return quantize_with_codebook(z, codebook)


class VQOutput(NamedTuple):
    """What VQ training needs from one forward pass."""

    reconstruction: Array  # (B, H, W, out_ch)
    z: Array  # continuous pre-quantization latents (B, h, w, embed_dim)
    z_q: Array  # straight-through quantized latents
    indices: Array  # (B, h, w) int codebook indices
    loss_terms: CodebookLossTerms
    decoder_features: Array | None = (
        None  # input of decoder/conv_out, only with return_features=True
    )


class VQModel(nn.Module):
    """LDM `VQModel` / `VQModelInterface`: encoder -> quant_conv -> quantize -> post_quant_conv -> decoder.

    Defaults are the VQ-f4 first stage of PredVDM (55,322,782 parameters). `dtype` is the compute dtype
    (bf16 on accelerators); params stay float32 and the codebook search always runs in float32.
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    in_channels: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 8192
    double_z: bool = False
    dtype: Any = jnp.float32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def setup(self):
        if self.double_z:
            raise ValueError(
                "double_z=True is for KL autoencoders; set double_z=False for a VQModel."
            )
        self.encoder = Encoder(
            ch=self.ch,
            ch_mult=tuple(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=tuple(self.attn_resolutions),
            dropout=self.dropout,
            in_channels=self.in_channels,
            resolution=self.resolution,
            z_channels=self.z_channels,
            dtype=self.dtype,
        )
        self.decoder = Decoder(
            ch=self.ch,
            out_ch=self.out_ch,
            ch_mult=tuple(self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=tuple(self.attn_resolutions),
            dropout=self.dropout,
            resolution=self.resolution,
            z_channels=self.z_channels,
            dtype=self.dtype,
        )
        self.quant_conv = _conv(self.embed_dim, 1, self.z_channels, "quant_conv", self.dtype)
        self.post_quant_conv = _conv(
            self.z_channels, 1, self.embed_dim, "post_quant_conv", self.dtype
        )
        # Named "quantize" to match the state_dict; the attribute differs because `quantize` is a method.
        self.quantizer = VectorQuantizer(self.n_embed, self.embed_dim, name="quantize")

    def encode(self, x: Array, deterministic: bool = True) -> Array:
        """Images (B, H, W, C) in [-1, 1] -> continuous latents quant_conv(encoder(x)), not quantized."""
        _check_images(x, self.in_channels, "VQModel.encode input")
        f = self.downsample_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"image size {x.shape[1]}x{x.shape[2]} is not divisible by the downsampling factor {f}; "
                "crop or resize the frames."
            )
        return self.quant_conv(self.encoder(x, deterministic)).astype(jnp.float32)

    def quantize(self, z: Array) -> tuple[Array, Array, CodebookLossTerms]:
        """Latents (B, h, w, embed_dim) -> (straight-through z_q, indices (B, h, w), CodebookLossTerms)."""
        return self.quantizer(z)

    def decode(self, z: Array, quantize: bool = True, deterministic: bool = True) -> Array:
        """Latents -> images. Quantizes first by default, as PredVDM's decode_first_stage does."""
        if quantize:
            z, _, _ = self.quantizer(z)
        return self.decoder(self.post_quant_conv(z), deterministic).astype(jnp.float32)

    def __call__(
        self, x: Array, deterministic: bool = True, return_features: bool = False
    ) -> VQOutput:
        z = self.encode(x, deterministic)
        z_q, indices, terms = self.quantize(z)
        decoded = self.decoder(
            self.post_quant_conv(z_q), deterministic, return_features=return_features
        )
        reconstruction, features = decoded if return_features else (decoded, None)
        return VQOutput(reconstruction.astype(jnp.float32), z, z_q, indices, terms, features)


def vq_model(fields: Mapping[str, Any], **overrides: Any) -> VQModel:
    """A VQModel from its fields (a config's ``vq`` section, lists allowed) and ``overrides``;
    unknown fields are one ValueError naming the valid ones."""
    kwargs = {**module_fields(fields), **overrides}
    valid = [f.name for f in dataclasses.fields(VQModel) if f.name not in ("parent", "name")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown VQ config field(s) {unknown}; valid fields: {valid}.")
    return VQModel(**kwargs)


def _check_images(x: Array, channels: int, what: str) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(
            f"{what} must be channels-last (B, H, W, {channels}); got shape {tuple(x.shape)} "
            "(transpose NCHW to NHWC, or flatten time into the batch)."
        )


def _map_frames(fn, frames: Array, chunk: int) -> Array:
    """Apply fn to (N, ...) frames `chunk` at a time with lax.map; the last chunk is zero-padded."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of frames; got {chunk}.")
    n = frames.shape[0]
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    if pad:
        frames = jnp.concatenate(
            [frames, jnp.zeros((pad,) + frames.shape[1:], frames.dtype)], axis=0
        )
    out = jax.lax.map(fn, frames.reshape((n_chunks, chunk) + frames.shape[1:]))
    return out.reshape((n_chunks * chunk,) + out.shape[2:])[:n]


def _check_video(x: Array, what: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{what} must be (B, T, H, W, C); got shape {tuple(x.shape)}.")


def encode_video(
    model: VQModel, params: Any, video: Array, chunk: int = 256, scale_factor: float = 1.0
) -> Array:
    """Video (B, T, H, W, C) -> continuous latents (B, T, h, w, embed_dim) * scale_factor.

    Frames go through the encoder `chunk` at a time (lax.map, so one compiled chunk is reused and peak
    memory is bounded); mirrors PredVDM's `video_batch_encode` with `VQ_batch_size=chunk`. Traceable:
    call it inside jax.jit (with `model` and `chunk` static / closed over).
    """
    _check_video(video, "encode_video input")
    b, t = video.shape[:2]
    encode = lambda frames: model.apply({"params": params}, frames, method=VQModel.encode)
    z = _map_frames(encode, video.reshape((b * t,) + video.shape[2:]), chunk)
    return z.reshape((b, t) + z.shape[1:]) * scale_factor


def decode_video(
    model: VQModel,
    params: Any,
    latents: Array,
    chunk: int = 256,
    scale_factor: float = 1.0,
    quantize: bool = True,
) -> Array:
    """Latents (B, T, h, w, embed_dim) -> frames (B, T, H, W, out_ch): divides by scale_factor, quantizes
    (by default, as PredVDM's `video_batch_decode`), decodes `chunk` frames at a time."""
    _check_video(latents, "decode_video input")
    b, t = latents.shape[:2]
    decode = lambda z: model.apply({"params": params}, z, quantize, method=VQModel.decode)
    frames = _map_frames(
        decode, (latents / scale_factor).reshape((b * t,) + latents.shape[2:]), chunk
    )
    return frames.reshape((b, t) + frames.shape[1:])

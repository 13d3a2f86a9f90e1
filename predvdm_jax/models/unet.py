"""LDM's openaimodel ``UNetModel`` (legacy attention) as PredVDM configures it.

Channels-last: ``x`` is ``(B, H, W, C)``, ``t`` is ``(B,)`` (integer or fractional
diffusion steps). The output is ``(B, H, W, out_channels)`` in float32.

Submodule names mirror the PyTorch state_dict with dots turned into
underscores (``input_blocks.1.0.in_layers.2`` -> ``input_blocks_1_0/in_layers_2``),
so importing a checkpoint is a mechanical rename (``interop/predvdm_ckpt.py``).
Flax leaf ``kernel`` / ``scale`` is PyTorch ``weight``; conv kernels are OHWI
(``models/conv.py`` says why), dense kernels ``(in, out)``; the attention
``qkv`` (:class:`QKVProjection`) / ``proj_out`` Conv1d(k=1) layers are dense products here.
GroupNorm is ``models/group_norm.py`` and biases are added by ``models/linear.add_bias``
(both for GPU speed; same parameters, results equal up to float32 rounding).

Initialisation follows PyTorch's defaults (kernel and bias uniform in
``±1/sqrt(fan_in)``), with LDM's zero-init of ``out_layers.3`` of every
ResBlock, ``proj_out`` of every AttentionBlock and the final ``out.2`` conv.

Memory: ``remat=True`` recomputes each ResBlock and AttentionBlock in the backward
pass instead of keeping its activations (``nn.remat``); only block inputs are saved.
Parameters, names and results are unchanged.

Precision: ``dtype`` is the computation dtype (float32 by default, bfloat16 on
accelerators); parameters are always float32; GroupNorm, the attention softmax
and the timestep embedding run in float32.

Logical axis names (``nn.with_logical_partitioning``) on every conv and dense
kernel, chosen from ``training/sharding.py``'s ``DEFAULT_LOGICAL_RULES``; biases
and norm parameters are left unannotated (small, replicated by the size rule):

* conv kernels ``(out, kh, kw, in)``: ``('conv_out', 'height', 'width', 'conv_in')``
* dense kernels ``(in, out)``:        ``('conv_in', 'conv_out')`` (the attention
  qkv / proj_out are 1x1 convs in the original; the time-embedding and
  ``emb_layers`` Linears use the same names for their input / output features)

``height`` / ``width`` map to no mesh axis; ``conv_in`` / ``conv_out`` map to
``'fsdp'``, and the rules split the larger of them that divides the fsdp size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from predvdm_jax.config import ATTENTION_IMPLS
from predvdm_jax.models.conv import Conv, torch_uniform_init
from predvdm_jax.models.group_norm import GroupNorm
from predvdm_jax.models.linear import Dense, add_bias, dense_params

DENSE_KERNEL_AXES = ("conv_in", "conv_out")
GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-5


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]`` (cos first), ``f_i = max_period^(-i/half)``.

    Works for fractional ``t``; computed in float32. Odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def attention_implementation(impl: str, q: jax.Array) -> str:
    """``'cudnn'`` (fused flash attention) or ``'xla'`` for ``jax.nn.dot_product_attention``.

    ``'auto'`` picks cuDNN on a GPU for bf16/fp16 queries whose head width it
    supports (a multiple of 8, at most 128), and XLA's einsum + softmax elsewhere.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention implementation {impl!r} is not one of {ATTENTION_IMPLS}")
    if impl == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention implementation 'cudnn' needs a GPU, but the backend is "
            f"{jax.default_backend()}; set model.attention to 'auto' or 'xla'"
        )
    if impl != "auto":
        return impl
    head_ch = q.shape[-1]
    fused = (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and head_ch % 8 == 0
        and head_ch <= 128
    )
    return "cudnn" if fused else "xla"


def _dense(features: int, fan_in: int, name: str, *, dtype: Any, zero_init: bool = False) -> Dense:
    init = nn.initializers.zeros if zero_init else torch_uniform_init(fan_in)
    return Dense(
        features,
        kernel_init=nn.with_logical_partitioning(init, DENSE_KERNEL_AXES),
        bias_init=init,
        dtype=dtype,
        name=name,
    )


def _group_norm(x: jax.Array, name: str) -> jax.Array:
    """LDM's ``GroupNorm32``: 32 groups, eps 1e-5, statistics in float32, in ``x``'s dtype."""
    return GroupNorm(GROUPNORM_GROUPS, GROUPNORM_EPS, name=name)(x)


class ResBlock(nn.Module):
    """``in_layers`` -> + emb (or scale/shift after ``out_layers.0``) -> ``out_layers``, plus skip."""

    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        in_channels = x.shape[-1]
        h = nn.silu(_group_norm(x, "in_layers_0"))
        h = Conv(self.out_channels, dtype=self.dtype, name="in_layers_2")(h)

        emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = _dense(emb_width, emb.shape[-1], "emb_layers_1", dtype=self.dtype)(nn.silu(emb))
        emb_out = emb_out[:, None, None, :].astype(h.dtype)

        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = _group_norm(h, "out_layers_0") * (1 + scale) + shift
        else:
            h = _group_norm(h + emb_out, "out_layers_0")
        h = nn.silu(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = Conv(self.out_channels, zero_init=True, dtype=self.dtype, name="out_layers_3")(h)

        if in_channels == self.out_channels:
            skip = x
        else:
            skip = Conv(self.out_channels, 1, dtype=self.dtype, name="skip_connection")(x)
        return skip + h


class QKVProjection(nn.Module):
    """The legacy ``qkv`` layer (``C -> 3C``, outputs ordered ``(heads, [q|k|v], head_ch)``)
    as three ``C -> C`` products, returning q, k and v, each ``(B, T, heads, head_ch)``.

    Same parameters as one ``nn.Dense(3C)``. Slicing one ``3C`` product made XLA
    concatenate dq, dk and dv in the backward pass (a copy of all three, 0.02–0.07 ms per
    attention block of an H100 train step); three products take their gradients apart.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        c = tokens.shape[-1]
        head_ch = c // self.num_heads
        init = torch_uniform_init(c)
        kernel, bias = dense_params(
            self, c, 3 * c, nn.with_logical_partitioning(init, DENSE_KERNEL_AXES), init
        )
        kernel = kernel.reshape(c, self.num_heads, 3, head_ch)
        bias = bias.reshape(self.num_heads, 3, head_ch)
        tokens = tokens.astype(self.dtype)

        def project(part: int) -> jax.Array:
            weight = kernel[:, :, part, :].reshape(c, c).astype(self.dtype)
            out = tokens @ weight
            return add_bias(out, bias[:, part, :].reshape(c)).reshape(
                *tokens.shape[:-1], self.num_heads, head_ch
            )

        return project(0), project(1), project(2)


class AttentionBlock(nn.Module):
    """Spatial self-attention with LDM's legacy QKV layout (``QKVAttentionLegacy``).

    The ``3C`` qkv channels split as ``(heads, [q|k|v], head_channels)``: heads
    outermost, each head's q, k and v contiguous. LDM scales q and k by
    ``head_channels^(-1/4)`` each; here the logits are scaled by ``head_channels^(-1/2)``,
    the same product. Logits and softmax are float32 on the XLA path and fused in
    cuDNN's flash attention on the other (see :func:`attention_implementation`).
    """

    num_heads: int
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hgt, wid, c = x.shape
        if c % self.num_heads:
            raise ValueError(
                f"AttentionBlock: {c} channels do not split into {self.num_heads} heads; "
                "choose num_head_channels / num_heads dividing every level's width."
            )
        head_ch = c // self.num_heads
        tokens = _group_norm(x, "norm").reshape(b, hgt * wid, c)
        q, k, v = QKVProjection(self.num_heads, self.dtype, name="qkv")(tokens)
        attended = jax.nn.dot_product_attention(
            q, k, v, scale=head_ch**-0.5, implementation=attention_implementation(self.impl, q)
        ).reshape(b, hgt * wid, c)
        out = _dense(c, c, "proj_out", dtype=self.dtype, zero_init=True)(attended)
        return x + out.reshape(b, hgt, wid, c).astype(x.dtype)


class Downsample(nn.Module):
    """conv3x3 stride 2 padding 1 (``op``), or 2x2 average pooling without ``conv_resample``."""

    conv_resample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if self.conv_resample:
            return Conv(c, stride=2, dtype=self.dtype, name="op")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then conv3x3 (``conv``) when ``conv_resample``."""

    conv_resample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.conv_resample:
            c = x.shape[-1]
            x = Conv(c, dtype=self.dtype, name="conv")(x)
        return x


class UNetModel(nn.Module):
    """LDM ``UNetModel`` (2-D, no class / context conditioning, ``resblock_updown=False``).

    ``attention_resolutions`` holds downsampling factors (1 = full resolution).
    Heads per attention block: ``width // num_head_channels`` if
    ``num_head_channels != -1``, else ``num_heads``.
    """

    in_channels: int
    out_channels: int
    model_channels: int
    attention_resolutions: Sequence[int]
    num_res_blocks: int
    channel_mult: Sequence[int] = (1, 2, 4, 8)
    num_head_channels: int = -1
    num_heads: int = -1
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    conv_resample: bool = True
    dtype: Any = jnp.float32
    attention_impl: str = "auto"  # see attention_implementation
    remat: bool = False  # recompute each block's activations in the backward pass

    def _heads(self, width: int) -> int:
        if self.num_head_channels != -1:
            if width % self.num_head_channels:
                raise ValueError(
                    f"UNetModel: width {width} is not a multiple of num_head_channels="
                    f"{self.num_head_channels}; pick num_head_channels dividing every level's width."
                )
            return width // self.num_head_channels
        return self.num_heads

    def _validate(self, x: jax.Array, t: jax.Array) -> None:
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("UNetModel: set num_heads or num_head_channels (both are -1).")
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"UNetModel: expected x of shape (B, H, W, {self.in_channels}), got {x.shape}."
            )
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"UNetModel: H, W = {x.shape[1:3]} must be multiples of {factor} "
                f"(2 ** (len(channel_mult) - 1)); resize or pad the latents."
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNetModel: expected t of shape ({x.shape[0]},), got {t.shape}.")

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
        t = jnp.asarray(t)
        self._validate(x, t)
        mc = self.model_channels
        emb = timestep_embedding(t, mc)
        emb = _dense(4 * mc, mc, "time_embed_0", dtype=self.dtype)(emb)
        emb = _dense(4 * mc, 4 * mc, "time_embed_2", dtype=self.dtype)(nn.silu(emb))

        res_cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        attention_cls = nn.remat(AttentionBlock) if self.remat else AttentionBlock

        def res_block(width: int, name: str) -> ResBlock:
            return res_cls(width, self.dropout, self.use_scale_shift_norm, self.dtype, name=name)

        def attention(width: int, name: str) -> AttentionBlock:
            return attention_cls(
                self._heads(width), self.dtype, impl=self.attention_impl, name=name
            )

        h = Conv(mc, dtype=self.dtype, name="input_blocks_0_0")(x.astype(self.dtype))
        skips = [h]
        block, ds = 1, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(mult * mc, f"input_blocks_{block}_0")(h, emb, train)
                if ds in self.attention_resolutions:
                    h = attention(mult * mc, f"input_blocks_{block}_1")(h)
                skips.append(h)
                block += 1
            if level != len(self.channel_mult) - 1:
                h = Downsample(self.conv_resample, self.dtype, name=f"input_blocks_{block}_0")(h)
                skips.append(h)
                block += 1
                ds *= 2

        width = h.shape[-1]
        h = res_block(width, "middle_block_0")(h, emb, train)
        h = attention(width, "middle_block_1")(h)
        h = res_block(width, "middle_block_2")(h, emb, train)

        block = 0
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res_block(mult * mc, f"output_blocks_{block}_0")(h, emb, train)
                sub = 1
                if ds in self.attention_resolutions:
                    h = attention(mult * mc, f"output_blocks_{block}_{sub}")(h)
                    sub += 1
                if level and i == self.num_res_blocks:
                    h = Upsample(
                        self.conv_resample, self.dtype, name=f"output_blocks_{block}_{sub}"
                    )(h)
                    ds //= 2
                block += 1

        h = nn.silu(_group_norm(h, "out_0"))
        h = Conv(self.out_channels, zero_init=True, dtype=self.dtype, name="out_2")(h)
        return h.astype(jnp.float32)

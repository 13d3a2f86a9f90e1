"""PredVDM's denoiser: one shared UNet over channel-stacked frames (``DiffusionWrapper``).

The ``k`` noisy target latents and the ``n_cond`` clean conditioning latents are
concatenated along time (noisy first) and flattened into UNet channels:

* ``tc``: channel ``t * C + c`` (frame-major), the PyTorch ``b t c h w -> b (t c) h w``;
* ``ct``: channel ``c * T + t`` (channel-major), ``b t c h w -> b (c t) h w``.

Modes (the UNet weights are shared by every pass):

* ``tc`` / ``ct``: one pass, un-flattened in the same order;
* ``tcct_para``: mean of the ``tc`` and ``ct`` passes (run as one UNet call over a
  doubled batch: the same per-sample maths, one compiled UNet);
* ``tc_attn``: ``o = U(tc); o = tc_attn(o) * o`` on the flattened ``k * C``
  channels, then un-flattened;
* ``tcct_para_attn``: the ``tc_attn`` result plus the same with ``ct`` and
  ``ct_attn`` (a sum, not a mean).

Parameter tree: ``diffusion_model`` (the UNet), and ``tc_attn`` / ``ct_attn``
only in the modes that use them, mirroring ``model.diffusion_model.*``,
``model.tc_attn.*``, ``model.ct_attn.*`` of the PyTorch checkpoint.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.core import FrozenDict

from predvdm_jax.config import module_fields
from predvdm_jax.models.conv import Conv
from predvdm_jax.models.unet import UNetModel

MODES = ("tc", "ct", "tcct_para", "tc_attn", "tcct_para_attn")
FLATTEN_ORDERS = ("tc", "ct")


def unet_in_out_channels(k: int, n_cond: int, latent_channels: int) -> tuple[int, int]:
    """UNet ``(in_channels, out_channels)`` for ``k`` predicted and ``n_cond`` conditioning frames."""
    return (k + n_cond) * latent_channels, k * latent_channels


def flatten_frames(frames: jax.Array, order: str) -> jax.Array:
    """``(B, T, H, W, C) -> (B, H, W, T*C)``; channel ``t*C + c`` (``tc``) or ``c*T + t`` (``ct``)."""
    if order not in FLATTEN_ORDERS:
        raise ValueError(f"flatten order must be one of {FLATTEN_ORDERS}, got {order!r}.")
    b, t, h, w, c = frames.shape
    perm = (0, 2, 3, 1, 4) if order == "tc" else (0, 2, 3, 4, 1)
    return jnp.transpose(frames, perm).reshape(b, h, w, t * c)


def unflatten_frames(stacked: jax.Array, order: str, channels: int) -> jax.Array:
    """Inverse of :func:`flatten_frames`: ``(B, H, W, T*C) -> (B, T, H, W, C)``."""
    if order not in FLATTEN_ORDERS:
        raise ValueError(f"flatten order must be one of {FLATTEN_ORDERS}, got {order!r}.")
    b, h, w, tc = stacked.shape
    t = tc // channels
    if order == "tc":
        return jnp.transpose(stacked.reshape(b, h, w, t, channels), (0, 3, 1, 2, 4))
    return jnp.transpose(stacked.reshape(b, h, w, channels, t), (0, 4, 1, 2, 3))


class LinearAttention(nn.Module):
    """LDM's ``LinearAttention`` over spatial positions, in float32.

    ``to_qkv`` (1x1, no bias) channels split as ``(q|k|v, heads, dim_head)``;
    k is softmaxed over positions, q is neither normalised nor scaled;
    ``context = k v^T`` per head, ``out = context^T q``; then ``to_out`` (1x1).
    """

    heads: int
    dim_head: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        hidden = self.heads * self.dim_head
        qkv = Conv(3 * hidden, 1, use_bias=False, name="to_qkv")(x.astype(jnp.float32))
        qkv = qkv.reshape(b, h * w, 3, self.heads, self.dim_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        k = jax.nn.softmax(k, axis=1)
        context = jnp.einsum("bnhd,bnhe->bhde", k, v)
        out = jnp.einsum("bhde,bnhd->bnhe", context, q).reshape(b, h, w, hidden)
        return Conv(c, 1, name="to_out")(out)


class PredVDMDenoiser(nn.Module):
    """``(x_noisy (B,k,h,w,c), t (B,), cond (B,n_cond,h,w,c)) -> (B,k,h,w,c)``: ε̂, x̂0 or v̂,
    whichever ``diffusion.parameterization`` trained it to predict.

    ``unet`` holds the :class:`UNetModel` keyword arguments (an LDM
    ``unet_config.params`` section); ``in_channels`` / ``out_channels`` may be
    omitted and are derived from ``k``, ``n_cond``, ``latent_channels``.
    """

    mode: str = "tc"
    k: int = 5
    n_cond: int = 10
    latent_channels: int = 3
    unet: Mapping[str, Any] = FrozenDict()
    attn_heads_tc: int = 5
    attn_heads_ct: int = 3
    attn_dim_head: int = 32

    def __post_init__(self):
        # Hashable (a ConfigDict / dict with list values -> FrozenDict of tuples): a static jit argument.
        object.__setattr__(self, "unet", FrozenDict(module_fields(self.unet)))
        super().__post_init__()

    def unet_kwargs(self) -> dict[str, Any]:
        """The UNet keyword arguments with ``in_channels`` / ``out_channels`` filled in and checked."""
        if self.mode not in MODES:
            raise ValueError(f"PredVDMDenoiser: mode {self.mode!r} is not one of {MODES}.")
        kwargs = dict(self.unet)
        for key, value in zip(
            ("in_channels", "out_channels"),
            unet_in_out_channels(self.k, self.n_cond, self.latent_channels),
        ):
            if kwargs.setdefault(key, value) != value:
                raise ValueError(
                    f"PredVDMDenoiser: unet.{key}={kwargs[key]} but (k={self.k}, n_cond={self.n_cond}, "
                    f"latent_channels={self.latent_channels}) need {value}; fix or drop unet.{key}."
                )
        return kwargs

    def _validate(self, x_noisy: jax.Array, t: jax.Array, cond: jax.Array) -> None:
        c = self.latent_channels
        if x_noisy.ndim != 5 or x_noisy.shape[1] != self.k or x_noisy.shape[-1] != c:
            raise ValueError(
                f"PredVDMDenoiser: expected x_noisy of shape (B, {self.k}, h, w, {c}), got {x_noisy.shape}."
            )
        b, _, h, w, _ = x_noisy.shape
        if cond.shape != (b, self.n_cond, h, w, c):
            raise ValueError(
                f"PredVDMDenoiser: expected cond of shape {(b, self.n_cond, h, w, c)}, got {cond.shape}."
            )
        if t.shape != (b,):
            raise ValueError(f"PredVDMDenoiser: expected t of shape ({b},), got {t.shape}.")

    @nn.compact
    def __call__(
        self, x_noisy: jax.Array, t: jax.Array, cond: jax.Array, train: bool = False
    ) -> jax.Array:
        unet = UNetModel(**self.unet_kwargs(), name="diffusion_model")
        t = jnp.asarray(t)
        self._validate(x_noisy, t, cond)
        frames = jnp.concatenate([x_noisy, cond.astype(x_noisy.dtype)], axis=1)
        c = self.latent_channels

        def gated(out: jax.Array, gate: LinearAttention | None) -> jax.Array:
            return out if gate is None else gate(out) * out

        if self.mode in ("tc", "ct", "tc_attn"):
            order = "tc" if self.mode == "tc_attn" else self.mode
            out = unet(flatten_frames(frames, order), t, train)
            gate = (
                LinearAttention(self.attn_heads_tc, self.attn_dim_head, name="tc_attn")
                if self.mode == "tc_attn"
                else None
            )
            return unflatten_frames(gated(out, gate), order, c)

        # Both passes in one UNet call over a doubled batch (identical per-sample maths, one compiled UNet).
        stacked = jnp.concatenate(
            [flatten_frames(frames, "tc"), flatten_frames(frames, "ct")], axis=0
        )
        out_tc, out_ct = jnp.split(unet(stacked, jnp.concatenate([t, t]), train), 2, axis=0)
        if self.mode == "tcct_para":
            return (unflatten_frames(out_tc, "tc", c) + unflatten_frames(out_ct, "ct", c)) / 2
        tc_attn = LinearAttention(self.attn_heads_tc, self.attn_dim_head, name="tc_attn")
        ct_attn = LinearAttention(self.attn_heads_ct, self.attn_dim_head, name="ct_attn")
        return unflatten_frames(gated(out_tc, tc_attn), "tc", c) + unflatten_frames(
            gated(out_ct, ct_attn), "ct", c
        )

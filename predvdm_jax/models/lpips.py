"""LPIPS v0.1 (the `lpips` package's `LPIPS`) in Flax, with the AlexNet or the VGG16 trunk.

PredVDM (spec §F.3) calls `lpips.LPIPS(net='alex', spatial=True)` on [-1, 1]
frames at native resolution and takes `.mean()` of the distance map; evaluation
uses AlexNet only. The VGG16 trunk is taming-transformers' `LPIPS` (`net='vgg'`),
the perceptual loss the original VQ-f4 was trained with (`vq_train.lpips_params`).

Parameter names follow the PyTorch state_dicts so the conversion is a rename:
`net/features_{i}/{kernel,bias}` are torchvision's `features.{i}.{weight,bias}`
(AlexNet i = 0, 3, 6, 8, 10; VGG16 i = 0, 2, 5, ..., 28), `lin{k}/kernel` is lpips'
`lin{k}.model.1.weight`. The trunk is told by the params (`net/features_0/kernel` is
11×11 in AlexNet, 3×3 in VGG16). Weights come from `scripts/convert_lpips.py`; without
them LPIPS is unavailable (`load_lpips_params` returns None) and must be reported as such.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from predvdm_jax.models.conv import conv_general_dilated
from predvdm_jax.tensor_files import (
    check_finite,
    check_keys,
    check_weights_setting,
    read_safetensors,
)

# ScalingLayer of lpips v0.1: (x - shift) / scale, per RGB channel.
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10
TAP_CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's relu1..relu5
MIN_INPUT_SIZE = 31  # AlexNet: below this the second 3×3/2 max-pool has no output

# torchvision VGG16 `features`: the conv indices of each block (a 2×2/2 max-pool before every
# block but the first) and its width; the taps are the blocks' last ReLUs, relu1_2..relu5_3.
VGG16_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)
VGG16_MIN_INPUT_SIZE = 16  # relu5_3 comes after four 2×2/2 pools: 16 // 2**4 = 1

ALEXNET = "alexnet"
VGG16 = "vgg16"
TRUNK_NAMES = {ALEXNET: "LPIPS-AlexNet", VGG16: "LPIPS-VGG16"}


def _heads_shapes(tap_channels: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {f"lin{k}/kernel": (1, 1, channels, 1) for k, channels in enumerate(tap_channels)}


LPIPS_PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "net/features_0/kernel": (11, 11, 3, 64),
    "net/features_0/bias": (64,),
    "net/features_3/kernel": (5, 5, 64, 192),
    "net/features_3/bias": (192,),
    "net/features_6/kernel": (3, 3, 192, 384),
    "net/features_6/bias": (384,),
    "net/features_8/kernel": (3, 3, 384, 256),
    "net/features_8/bias": (256,),
    "net/features_10/kernel": (3, 3, 256, 256),
    "net/features_10/bias": (256,),
    **_heads_shapes(TAP_CHANNELS),
}
"""LPIPS-AlexNet's params (the name predates the VGG16 trunk)."""


def _vgg16_param_shapes() -> dict[str, tuple[int, ...]]:
    shapes, in_channels = {}, 3
    for layers, channels in zip(VGG16_BLOCKS, VGG16_TAP_CHANNELS):
        for layer in layers:
            shapes[f"net/features_{layer}/kernel"] = (3, 3, in_channels, channels)
            shapes[f"net/features_{layer}/bias"] = (channels,)
            in_channels = channels
    return {**shapes, **_heads_shapes(VGG16_TAP_CHANNELS)}


VGG16_PARAM_SHAPES = _vgg16_param_shapes()
PARAM_SHAPES = {ALEXNET: LPIPS_PARAM_SHAPES, VGG16: VGG16_PARAM_SHAPES}
MIN_INPUT_SIZES = {ALEXNET: MIN_INPUT_SIZE, VGG16: VGG16_MIN_INPUT_SIZE}

_HIGHEST = jax.lax.Precision.HIGHEST
_conv = partial(nn.Conv, precision=_HIGHEST, conv_general_dilated=conv_general_dilated)


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features` up to the last ReLU; returns the taps relu1..relu5."""

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        pool = partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding="VALID")
        taps = []
        hidden = nn.relu(_conv(64, (11, 11), strides=(4, 4), padding=2, name="features_0")(images))
        taps.append(hidden)
        hidden = nn.relu(_conv(192, (5, 5), padding=2, name="features_3")(pool(hidden)))
        taps.append(hidden)
        hidden = nn.relu(_conv(384, (3, 3), padding=1, name="features_6")(pool(hidden)))
        taps.append(hidden)
        hidden = nn.relu(_conv(256, (3, 3), padding=1, name="features_8")(hidden))
        taps.append(hidden)
        hidden = nn.relu(_conv(256, (3, 3), padding=1, name="features_10")(hidden))
        taps.append(hidden)
        return taps


class VGG16Features(nn.Module):
    """torchvision VGG16 `features` up to relu5_3; returns the taps relu1_2..relu5_3."""

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        taps, hidden = [], images
        for block, (layers, channels) in enumerate(zip(VGG16_BLOCKS, VGG16_TAP_CHANNELS)):
            if block:
                hidden = nn.max_pool(hidden, (2, 2), strides=(2, 2), padding="VALID")
            for layer in layers:
                conv = _conv(channels, (3, 3), padding=1, name=f"features_{layer}")
                hidden = nn.relu(conv(hidden))
            taps.append(hidden)
        return taps


TRUNK_MODULES = {ALEXNET: AlexNetFeatures, VGG16: VGG16Features}


def _unit_normalize(features: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / (norm + NORMALIZE_EPS)


class LPIPS(nn.Module):
    """Per-image LPIPS distance `(N,)` between two `(N, H, W, 3)` batches in [-1, 1].

    `spatial=True` (PredVDM): each layer's 1-channel map is bilinearly upsampled
    (align_corners=False) to H×W, the maps are summed, and the sum is averaged
    over space. `spatial=False` (the usual LPIPS, taming's): each layer's map is averaged
    over its own grid, then the layers are summed. `trunk`: `ALEXNET` or `VGG16`.
    """

    spatial: bool = True
    trunk: str = ALEXNET

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        count, height, width = x.shape[:3]
        shift = jnp.asarray(INPUT_SHIFT, x.dtype)
        scale = jnp.asarray(INPUT_SCALE, x.dtype)
        features = TRUNK_MODULES[self.trunk](name="net")
        taps = features((jnp.concatenate([x, y]) - shift) / scale)
        distance = jnp.zeros((count,), x.dtype)
        for index, tap in enumerate(taps):
            squared_difference = (_unit_normalize(tap[:count]) - _unit_normalize(tap[count:])) ** 2
            layer_map = nn.Conv(1, (1, 1), use_bias=False, precision=_HIGHEST, name=f"lin{index}")(
                squared_difference
            )
            if self.spatial:
                layer_map = jax.image.resize(
                    layer_map, (count, height, width, 1), method="bilinear"
                )
            distance = distance + jnp.mean(layer_map, axis=(1, 2, 3))
        return distance


REBUILD_HINT = "Make the params with scripts/convert_lpips.py (--alexnet or --vgg16)."
_FIRST_KERNEL = "net/features_0/kernel"


def _trunk_by_first_kernel(flat_params: Mapping[str, Any]) -> str | None:
    found = tuple(np.shape(flat_params[_FIRST_KERNEL])) if _FIRST_KERNEL in flat_params else None
    return next((t for t, shapes in PARAM_SHAPES.items() if shapes[_FIRST_KERNEL] == found), None)


def checked_trunk(
    flat_params: Mapping[str, Any], what: str = "LPIPS params", hint: str = REBUILD_HINT
) -> str:
    """`ALEXNET` or `VGG16`, told by the shape of `net/features_0/kernel` in `flat_params`
    (key -> array); a ValueError naming `what` and `hint` when that is neither trunk's
    or the other keys and shapes do not all match the trunk's (e.g. a mix of both)."""
    trunk = _trunk_by_first_kernel(flat_params)
    if trunk is None:
        found = flat_params.get(_FIRST_KERNEL)
        got = "missing" if found is None else f"of shape {tuple(np.shape(found))}"
        raise ValueError(
            f"{what}: {_FIRST_KERNEL} is {got}, neither LPIPS-AlexNet's "
            f"{LPIPS_PARAM_SHAPES[_FIRST_KERNEL]} nor LPIPS-VGG16's "
            f"{VGG16_PARAM_SHAPES[_FIRST_KERNEL]}. {hint}"
        )
    check_keys(PARAM_SHAPES[trunk], flat_params, what=f"{what} ({TRUNK_NAMES[trunk]})", hint=hint)
    return trunk


def lpips_trunk(params) -> str:
    """`ALEXNET` or `VGG16`: the trunk of a params tree (`load_lpips_params`'), checked whole."""
    return checked_trunk(traverse_util.flatten_dict(params, sep="/"))


def trunk_of(params) -> str | None:
    """`ALEXNET` or `VGG16` by the first conv's kernel alone, None for a tree without either's;
    unlike `lpips_trunk` nothing else is checked (for trees that may be stand-ins)."""
    return _trunk_by_first_kernel(traverse_util.flatten_dict(params, sep="/"))


def _check_image_pair(x, y, trunk: str) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"LPIPS needs images of shape (N, H, W, 3); got {x.shape}.")
    if x.shape != y.shape:
        raise ValueError(f"LPIPS needs two batches of the same shape; got {x.shape} and {y.shape}.")
    minimum = MIN_INPUT_SIZES[trunk]
    if min(x.shape[1:3]) < minimum:
        raise ValueError(
            f"{TRUNK_NAMES[trunk]} needs images of at least {minimum}x{minimum}; got "
            f"{x.shape[1]}x{x.shape[2]}. Upsample the frames first."
        )


@partial(jax.jit, static_argnames="spatial")
def lpips_distance(params, x: jax.Array, y: jax.Array, spatial: bool = True) -> jax.Array:
    """LPIPS `(N,)` between `x` and `y`, `(N, H, W, 3)` in [-1, 1]; `params` (either trunk) from
    `load_lpips_params`."""
    trunk = lpips_trunk(params)  # from the shapes, while tracing
    _check_image_pair(x, y, trunk)
    return LPIPS(spatial=spatial, trunk=trunk).apply(
        {"params": params}, x.astype(jnp.float32), y.astype(jnp.float32)
    )


@partial(jax.jit, static_argnames="spatial")
def lpips_video(params, video_a: jax.Array, video_b: jax.Array, spatial: bool = True) -> jax.Array:
    """LPIPS per frame `(B, T)` of two videos `(B, T, H, W, C)` in **[0, 1]** (as
    evaluation.metrics).

    Maps to [-1, 1] as PredVDM's `calculate_lpips1` does; 1 channel is repeated
    to 3. All B·T frames go through the trunk at once: chunk over B for big batches.
    """
    if video_a.ndim != 5 or video_a.shape != video_b.shape:
        raise ValueError(
            f"lpips_video needs two videos of the same shape (B, T, H, W, C); got "
            f"{video_a.shape} and {video_b.shape}."
        )
    batch, frames, height, width, channels = video_a.shape
    if channels not in (1, 3):
        raise ValueError(f"lpips_video needs 1 or 3 channels; got {channels}.")

    def to_images(video):
        images = (
            video.reshape(batch * frames, height, width, channels).astype(jnp.float32) * 2.0 - 1.0
        )
        return jnp.repeat(images, 3 // channels, axis=-1)

    return lpips_distance(params, to_images(video_a), to_images(video_b), spatial=spatial).reshape(
        batch, frames
    )


def load_lpips_params(path: str | os.PathLike | None, setting: str = "eval.lpips_params"):
    """Params tree (either trunk, see `lpips_trunk`) from a file written by
    `scripts/convert_lpips.py`, or None when `path` is unset (None or empty): LPIPS is then
    unavailable and callers report it as such, never as a number. A set path that is not a file
    is an error naming the config `setting` (`tensor_files.check_weights_setting`), as is a
    truncated or corrupt file, one with wrong keys, shapes or dtypes, or one holding NaN or Inf
    (ValueError)."""
    check_weights_setting(
        path,
        setting,
        "make the file with scripts/convert_lpips.py --alexnet=<alexnet.pth> (or "
        f"--vgg16=<vgg16.pth>) --out=<file.safetensors>, or set {setting}='' to skip LPIPS",
    )
    if path is None or not os.fspath(path):
        return None
    flat = read_safetensors(path, "re-create it with scripts/convert_lpips.py")
    checked_trunk(flat, what=f"LPIPS params {os.fspath(path)}")
    check_finite(
        flat,
        f"LPIPS params {os.fspath(path)} ({setting})",
        "the file is damaged: re-create it with scripts/convert_lpips.py",
    )
    nested = traverse_util.unflatten_dict(
        {key: np.asarray(value, np.float32) for key, value in flat.items()}, sep="/"
    )
    return jax.tree.map(jnp.asarray, nested)

"""LPIPS v0.1 with the AlexNet trunk (the `lpips` package's `LPIPS(net='alex')`), in Flax.

PredVDM (spec §F.3) calls `lpips.LPIPS(net='alex', spatial=True)` on [-1, 1]
frames at native resolution and takes `.mean()` of the distance map.

Parameter names follow the PyTorch state_dicts so the conversion is a rename:
`net/features_{0,3,6,8,10}/{kernel,bias}` are torchvision AlexNet's
`features.{i}.{weight,bias}`, `lin{k}/kernel` is lpips' `lin{k}.model.1.weight`.
Weights come from `scripts/convert_lpips.py`; without them LPIPS is
unavailable (`load_lpips_params` returns None) and must be reported as such.
"""

from __future__ import annotations

import os
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from predvdm_jax.models.conv import conv_general_dilated
from predvdm_jax.tensor_files import check_keys, check_weights_setting, read_safetensors

# ScalingLayer of lpips v0.1: (x - shift) / scale, per RGB channel.
INPUT_SHIFT = (-0.030, -0.088, -0.188)
INPUT_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10
TAP_CHANNELS = (64, 192, 384, 256, 256)
MIN_INPUT_SIZE = 31  # below this the second 3×3/2 max-pool has no output

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
    **{f"lin{k}/kernel": (1, 1, channels, 1) for k, channels in enumerate(TAP_CHANNELS)},
}

_HIGHEST = jax.lax.Precision.HIGHEST


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features` up to the last ReLU; returns the taps relu1..relu5."""

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        conv = partial(nn.Conv, precision=_HIGHEST, conv_general_dilated=conv_general_dilated)
        pool = partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding="VALID")
        taps = []
        hidden = nn.relu(conv(64, (11, 11), strides=(4, 4), padding=2, name="features_0")(images))
        taps.append(hidden)
        hidden = nn.relu(conv(192, (5, 5), padding=2, name="features_3")(pool(hidden)))
        taps.append(hidden)
        hidden = nn.relu(conv(384, (3, 3), padding=1, name="features_6")(pool(hidden)))
        taps.append(hidden)
        hidden = nn.relu(conv(256, (3, 3), padding=1, name="features_8")(hidden))
        taps.append(hidden)
        hidden = nn.relu(conv(256, (3, 3), padding=1, name="features_10")(hidden))
        taps.append(hidden)
        return taps


def _unit_normalize(features: jax.Array) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / (norm + NORMALIZE_EPS)


class LPIPS(nn.Module):
    """Per-image LPIPS distance `(N,)` between two `(N, H, W, 3)` batches in [-1, 1].

    `spatial=True` (PredVDM): each layer's 1-channel map is bilinearly upsampled
    (align_corners=False) to H×W, the maps are summed, and the sum is averaged
    over space. `spatial=False` (the usual LPIPS): each layer's map is averaged
    over its own grid, then the layers are summed.
    """

    spatial: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        count, height, width = x.shape[:3]
        shift = jnp.asarray(INPUT_SHIFT, x.dtype)
        scale = jnp.asarray(INPUT_SCALE, x.dtype)
        taps = AlexNetFeatures(name="net")((jnp.concatenate([x, y]) - shift) / scale)
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


def _check_image_pair(x, y) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"LPIPS needs images of shape (N, H, W, 3); got {x.shape}.")
    if x.shape != y.shape:
        raise ValueError(f"LPIPS needs two batches of the same shape; got {x.shape} and {y.shape}.")
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"LPIPS-AlexNet needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}; got "
            f"{x.shape[1]}x{x.shape[2]}. Upsample the frames first."
        )


@partial(jax.jit, static_argnames="spatial")
def lpips_distance(params, x: jax.Array, y: jax.Array, spatial: bool = True) -> jax.Array:
    """LPIPS `(N,)` between `x` and `y`, `(N, H, W, 3)` in [-1, 1]; `params` from `load_lpips_params`."""
    _check_image_pair(x, y)
    return LPIPS(spatial=spatial).apply(
        {"params": params}, x.astype(jnp.float32), y.astype(jnp.float32)
    )


@partial(jax.jit, static_argnames="spatial")
def lpips_video(params, video_a: jax.Array, video_b: jax.Array, spatial: bool = True) -> jax.Array:
    """LPIPS per frame `(B, T)` of two videos `(B, T, H, W, C)` in **[0, 1]** (like evaluation.metrics).

    Maps to [-1, 1] as PredVDM's `calculate_lpips1` does; 1 channel is repeated
    to 3. All B·T frames go through AlexNet at once: chunk over B for big batches.
    """
    if video_a.ndim != 5 or video_a.shape != video_b.shape:
        raise ValueError(
            f"lpips_video needs two videos of the same shape (B, T, H, W, C); got {video_a.shape} and {video_b.shape}."
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


def load_lpips_params(path: str | os.PathLike | None):
    """Params tree from a file written by `scripts/convert_lpips.py`, or None when `path` is
    unset (None or empty): LPIPS is then unavailable and callers report it as such, never as a
    number. A set path that is not a file is an error (`tensor_files.check_weights_setting`), as
    is a truncated or corrupt file or one with wrong keys or shapes (ValueError)."""
    check_weights_setting(
        path,
        "eval.lpips_params",
        "make the file with scripts/convert_lpips.py --alexnet=<alexnet.pth> "
        "--out=<file.safetensors>, or set eval.lpips_params='' to skip LPIPS",
    )
    if path is None or not os.fspath(path):
        return None
    flat = read_safetensors(path, "re-create it with scripts/convert_lpips.py")
    check_keys(
        LPIPS_PARAM_SHAPES,
        flat,
        what=f"LPIPS params {os.fspath(path)}",
        hint="Rebuild it with scripts/convert_lpips.py.",
    )
    nested = traverse_util.unflatten_dict(
        {key: np.asarray(value, np.float32) for key, value in flat.items()}, sep="/"
    )
    return jax.tree.map(jnp.asarray, nested)

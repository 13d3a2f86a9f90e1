"""Reading a user's own video (a GIF/MP4/AVI file or a folder of frame images) as a clip."""

from __future__ import annotations

import glob
import os

import numpy as np
from PIL import Image

from predvdm_jax.data.hdf5 import natural_key
from predvdm_jax.data.loader import to_model_range
from predvdm_jax.data.resize import center_square, resize_lanczos

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _frames_from_path(path: str) -> list[np.ndarray]:
    """RGB frames of a video file, or of a folder's images in natural name order."""
    if os.path.isdir(path):
        files = sorted(
            (f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS)),
            key=lambda f: natural_key(os.path.basename(f)),
        )
        if not files:
            raise FileNotFoundError(
                f"{path!r} holds no frame images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        frames = []
        for f in files:
            with Image.open(f) as image:
                frames.append(np.asarray(image.convert("RGB")))
            if frames[-1].shape != frames[0].shape:
                h, w = frames[-1].shape[:2]
                raise ValueError(
                    f"{f!r} is {w}x{h} but {os.path.basename(files[0])!r}, the first frame, "
                    f"is {frames[0].shape[1]}x{frames[0].shape[0]}; every frame of a video "
                    f"must have one size."
                )
        return frames
    if not os.path.exists(path):
        raise FileNotFoundError(f"video {path!r} not found.")
    import imageio.v3 as iio

    try:
        frames = iio.imread(path, index=None)
    except Exception as err:
        raise ValueError(
            f"cannot decode {path!r} ({err}); for MP4/AVI install imageio-ffmpeg, or "
            f"pass a folder of frame images."
        ) from None
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    return [f[..., :3] if f.shape[-1] >= 3 else np.repeat(f, 3, axis=-1) for f in frames]


def read_clip(path: str, image_size: int, channels: int, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` frames as float32 ``(T, size, size, channels)`` in [-1, 1]."""
    frames = _frames_from_path(path)
    if len(frames) < num_frames:
        raise ValueError(
            f"{path!r} has {len(frames)} frames; at least {num_frames} are needed "
            f"(the conditioning frames)."
        )
    clip = np.stack([resize_lanczos(center_square(f), image_size) for f in frames[:num_frames]])
    if channels == 1:
        gray = np.asarray([np.asarray(Image.fromarray(f).convert("L")) for f in clip])
        clip = gray[..., None]
    return to_model_range(clip)

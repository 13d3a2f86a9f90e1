"""Reading a user's own video (a GIF/MP4/AVI file or a folder of frame images) as a clip."""

from __future__ import annotations

import contextlib
import glob
import os
import sys
import warnings

import numpy as np
from PIL import Image

from predvdm_jax.data.hdf5 import natural_key
from predvdm_jax.data.loader import to_model_range
from predvdm_jax.data.resize import center_square, resize_lanczos

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FFMPEG_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
"""Video files imageio reads only with its imageio-ffmpeg plugin (GIFs it reads with Pillow)."""
_JAX_FORK_WARNING = r"os\.fork\(\) was called\. os\.fork\(\) is incompatible with multithreaded"


@contextlib.contextmanager
def without_jax_fork_warning():
    """Drops JAX's deadlock warning on a fork, only inside the block: imageio-ffmpeg starts
    ffmpeg (to read or write MP4/AVI) through a fork (its preexec_fn) that execs ffmpeg at
    once, which cannot deadlock on JAX's threads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JAX_FORK_WARNING, category=RuntimeWarning)
        yield


def _read_image(path: str) -> np.ndarray:
    """One frame image as RGB uint8 (16-bit gray scaled to 8 bits), or a one-line
    ``ValueError`` naming the file."""
    wide = ("I;16", "I;16L", "I;16B", "I", "F")  # PIL's convert("RGB") clips these above 255
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = np.asarray(image) if mode in wide else np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ValueError(
            f"{path!r} is not a readable image ({_one_line(err)}); it is damaged or not an "
            f"image: replace it or remove it from the folder of frames."
        ) from None
    if mode in ("I", "F"):
        raise ValueError(
            f"{path!r} holds {'32-bit integer' if mode == 'I' else 'float'} pixels, whose range "
            f"is unknown; save the frames as 8- or 16-bit images."
        )
    if mode in wide:  # 16-bit gray
        gray = (pixels.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return pixels


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _is_single_image(path: str, frames: np.ndarray) -> bool:
    """Whether imageio read ``path`` as one image ``(H, W[, C])``, not frames ``(T, H, W[, C])``."""
    if frames.ndim == 2:
        return True
    if frames.ndim != 3:
        return False
    import imageio.v3 as iio

    try:
        with without_jax_fork_warning():
            return not iio.improps(path, index=None).is_batch
    except Exception:  # a plugin without properties: trust the file name
        return path.lower().endswith(IMAGE_EXTENSIONS)


def _ffmpeg_plugin_installed() -> bool:
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _decode_first_frames(path: str, limit: int) -> tuple[np.ndarray, bool]:
    """``(frames, whole)``: the first ``limit`` frames of a video file stacked ``(T, H, W[, C])``,
    the decoder stopped there; or, ``whole`` True, a file imageio reads as one item (an image,
    a one-page TIFF) as ``imread`` returns it."""
    import imageio.v3 as iio

    items = []
    with without_jax_fork_warning(), iio.imopen(path, "r") as file:
        for item in file.iter():
            items.append(np.asarray(item))
            if len(items) >= max(limit, 2):  # a second item tells a video from one image
                break
    if len(items) < 2:  # one item (cheap to read again): the shape imread gives it
        with without_jax_fork_warning():
            return np.asarray(iio.imread(path, index=None)), True
    frames = [frame for item in items for frame in (item if item.ndim == 4 else [item])]
    for t, frame in enumerate(frames):
        if frame.shape != frames[0].shape:
            raise ValueError(f"frame {t} has shape {frame.shape}, frame 0 {frames[0].shape}")
    return np.stack(frames[:limit]), False


def _frames_from_path(path: str, limit: int) -> list[np.ndarray]:
    """The first ``limit`` RGB frames (fewer where the video ends) of a video file, or of a
    folder's images in natural name order; later frames are not read."""
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
        for f in files[:limit]:
            frames.append(_read_image(f))
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
    try:
        frames, whole = _decode_first_frames(path, limit)
    except Exception as err:
        if path.lower().endswith(FFMPEG_EXTENSIONS) and not _ffmpeg_plugin_installed():
            raise ValueError(
                f"cannot decode {path!r}: reading MP4/AVI needs the imageio-ffmpeg plugin, which "
                f"is not installed; install it with pip install -e '.[video]' in the project's "
                f"folder, or pass a GIF or a folder of frame images."
            ) from None
        raise ValueError(
            f"cannot decode {path!r} as a video ({_one_line(err)}); it is damaged or not a "
            f"GIF/MP4/AVI: pass a working video file (MP4/AVI need imageio-ffmpeg) or a folder "
            f"of frame images."
        ) from None
    if whole and _is_single_image(path, frames):
        raise ValueError(
            f"{path!r} is a single image, not a video; --video needs a video file (GIF/MP4/AVI) "
            f"or a folder holding one image per frame."
        )
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4 or frames.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"{path!r} decoded to an array of shape {frames.shape}, not video frames "
            f"(T, H, W[, C]); pass a GIF/MP4/AVI or a folder of frame images."
        )
    if frames.dtype == np.uint16:  # 16-bit levels to 8 bits, as for frame images
        frames = (frames >> 8).astype(np.uint8)
    elif frames.dtype != np.uint8:
        raise ValueError(
            f"{path!r} decoded to {frames.dtype} frames, whose range is unknown; save the video "
            f"with 8- or 16-bit frames."
        )
    return [f[..., :3] if f.shape[-1] >= 3 else np.repeat(f[..., :1], 3, axis=-1) for f in frames]


def square_frames(
    path: str, image_size: int, gray: bool = False, limit: int | None = None
) -> np.ndarray:
    """The first ``limit`` frames (all by default) of a video file or frame folder, each
    cropped to its central square and resized to ``image_size`` (Lanczos), as uint8
    ``(T, size, size, 3)``, or ``(T, size, size, 1)`` with ``gray`` (PIL's ``L``)."""
    frames = _frames_from_path(path, sys.maxsize if limit is None else limit)
    clip = np.stack([resize_lanczos(center_square(f), image_size) for f in frames])
    if gray:
        clip = np.asarray([np.asarray(Image.fromarray(f).convert("L")) for f in clip])[..., None]
    return clip


def read_clip(
    path: str, image_size: int, channels: int, num_frames: int, max_frames: int | None = None
) -> np.ndarray:
    """The first ``num_frames`` frames, or up to ``max_frames`` when the video has more, as
    float32 ``(T, size, size, channels)`` in [-1, 1] (``square_frames``)."""
    clip = square_frames(path, image_size, channels == 1, max(num_frames, max_frames or 0))
    if len(clip) < num_frames:
        raise ValueError(
            f"{path!r} has {len(clip)} frames; at least {num_frames} are needed (the "
            f"conditioning frames): pass a longer video, or use a model with fewer "
            f"conditioning frames."
        )
    return to_model_range(clip)

"""Reading a user's own video (a GIF/MP4/AVI file or a folder of frame images) as a clip."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import threading
import warnings
from typing import Callable

import numpy as np
from PIL import Image

from predvdm_jax.data.hdf5 import natural_key
from predvdm_jax.data.loader import to_model_range
from predvdm_jax.data.resize import center_square, resize_lanczos

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FFMPEG_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
"""Video files imageio reads only with its imageio-ffmpeg plugin (GIFs it reads with Pillow)."""
_JAX_FORK_WARNING = r"os\.fork\(\) was called\. os\.fork\(\) is incompatible with multithreaded"


_fork_warning_lock = threading.Lock()
_fork_warning_holders = 0


@contextlib.contextmanager
def without_jax_fork_warning():
    """Drops JAX's deadlock warning on a fork, only inside the block: imageio-ffmpeg starts
    ffmpeg (to read or write MP4/AVI) through a fork (its preexec_fn) that execs ffmpeg at
    once, which cannot deadlock on JAX's threads. Safe from several threads at once (the
    videos converter decodes in threads): the filter stays while any thread is inside, and
    goes with the last (``warnings.catch_warnings`` restores a copy of the whole filter list,
    so overlapping threads could leave it on for good)."""
    global _fork_warning_holders
    with _fork_warning_lock:
        if _fork_warning_holders == 0:
            warnings.filterwarnings("ignore", message=_JAX_FORK_WARNING, category=RuntimeWarning)
        _fork_warning_holders += 1
    try:
        yield
    finally:
        with _fork_warning_lock:
            _fork_warning_holders -= 1
            if _fork_warning_holders == 0:
                entry = ("ignore", re.compile(_JAX_FORK_WARNING, re.I), RuntimeWarning, None, 0)
                with contextlib.suppress(ValueError):
                    warnings.filters.remove(entry)
                getattr(warnings, "_filters_mutated", lambda: None)()  # as catch_warnings does


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


def _rgb_uint8(path: str, frames: np.ndarray) -> list[np.ndarray]:
    """Decoded frames ``(T, H, W[, C])`` as RGB uint8 frames (16-bit levels scaled to 8 bits),
    or a one-line ``ValueError`` naming the file."""
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


def _decoded_frames(path: str, limit: int, transform: Callable) -> list[np.ndarray]:
    """The first ``limit`` frames of a video file, each made RGB uint8 and passed through
    ``transform`` as it is decoded (a long video's full-size frames are never all held); the
    decoder stops there. A file imageio reads as one item (an image, a one-page TIFF) is
    read whole, and refused when it is a single image."""
    import imageio.v3 as iio

    frames, items, first_shape = [], 0, None
    with without_jax_fork_warning(), iio.imopen(path, "r") as file:
        for item in file.iter():
            items += 1
            item = np.asarray(item)
            for frame in item if item.ndim == 4 else [item]:
                if len(frames) == limit:
                    break
                first_shape = first_shape or frame.shape
                if frame.shape != first_shape:
                    raise ValueError(
                        f"frame {len(frames)} has shape {frame.shape}, frame 0 {first_shape}"
                    )
                frames.append(transform(_rgb_uint8(path, frame[None])[0]))
            if len(frames) >= limit and items >= 2:  # a second item tells a video from one image
                break
    if items < 2:  # one item (cheap to read again): the shape imread gives it
        with without_jax_fork_warning():
            whole = np.asarray(iio.imread(path, index=None))
        if _is_single_image(path, whole):
            raise ValueError(
                f"{path!r} is a single image, not a video; pass a video file (GIF/MP4/AVI) "
                f"or a folder holding one image per frame."
            )
        return [transform(frame) for frame in _rgb_uint8(path, whole)[:limit]]
    return frames


def _frames_from_path(
    path: str, limit: int, transform: Callable = lambda frame: frame
) -> list[np.ndarray]:
    """The first ``limit`` RGB frames (fewer where the video ends) of a video file, or of a
    folder's images in natural name order, each passed through ``transform`` as it is read;
    later frames are not read."""
    if os.path.isdir(path):
        files = sorted(
            (f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS)),
            key=lambda f: natural_key(os.path.basename(f)),
        )
        if not files:
            raise FileNotFoundError(
                f"{path!r} holds no frame images ({', '.join(IMAGE_EXTENSIONS)})."
            )
        frames, first_shape = [], None
        for f in files[:limit]:
            frame = _read_image(f)
            first_shape = first_shape or frame.shape
            if frame.shape != first_shape:
                h, w = frame.shape[:2]
                raise ValueError(
                    f"{f!r} is {w}x{h} but {os.path.basename(files[0])!r}, the first frame, "
                    f"is {first_shape[1]}x{first_shape[0]}; every frame of a video "
                    f"must have one size."
                )
            frames.append(transform(frame))
        return frames
    if not os.path.exists(path):
        raise FileNotFoundError(f"video {path!r} not found.")
    try:
        return _decoded_frames(path, limit, transform)
    except ValueError as err:
        if str(err).startswith(repr(path)):  # already names the file and the fix
            raise
        cause = err
    except Exception as err:
        cause = err
    if path.lower().endswith(FFMPEG_EXTENSIONS) and not _ffmpeg_plugin_installed():
        raise ValueError(
            f"cannot decode {path!r}: reading MP4/AVI needs the imageio-ffmpeg plugin, which "
            f"is not installed; install it with pip install -e '.[video]' in the project's "
            f"folder, or pass a GIF or a folder of frame images."
        ) from None
    raise ValueError(
        f"cannot decode {path!r} as a video ({_one_line(cause)}); it is damaged or not a "
        f"GIF/MP4/AVI: pass a working video file (MP4/AVI need imageio-ffmpeg) or a folder "
        f"of frame images."
    ) from None


def square_frames(
    path: str, image_size: int, gray: bool = False, limit: int | None = None
) -> np.ndarray:
    """The first ``limit`` frames (all by default) of a video file or frame folder, each
    cropped to its central square and resized to ``image_size`` (Lanczos), as uint8
    ``(T, size, size, 3)``, or ``(T, size, size, 1)`` with ``gray`` (PIL's ``L``)."""

    def square(frame: np.ndarray) -> np.ndarray:
        frame = resize_lanczos(center_square(frame), image_size)
        return np.asarray(Image.fromarray(frame).convert("L"))[..., None] if gray else frame

    return np.stack(_frames_from_path(path, sys.maxsize if limit is None else limit, square))


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

"""Stochastic moving digits, following the SMMNIST protocol (spec §A.5).

Each digit (resized to ``digit_size``) starts at a random position with an
integer velocity in [-4, 4]; when it leaves the canvas it is put back on the
border and gets a random new velocity pointing inwards. Digits are summed and
clipped at 1, then stored as ``uint8(x * 255)`` (truncation, as the original).

``write_moving_digits`` writes the embedded default from scikit-learn's 8×8
handwritten digits, upscaled, so it works offline; genuine SMMNIST, from real
MNIST, is ``converters/smmnist.py`` (``scripts/prepare_data.py --dataset=smmnist``).

Unlike the original (one global ``np.random.seed(0)``), every video has its own
generator seeded by ``(seed, split, index)``: a video is reproducible on its
own, independent of generation order.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
from PIL import Image

from predvdm_jax.data import hdf5, manifest as manifest_lib

SPLIT_IDS = {"train": 0, "test": 1}


def load_sklearn_digits(num_train: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten 8×8 digits as uint8 (train, test) images."""
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    return images[:num_train], images[num_train:]


def resize_digits(images: np.ndarray, digit_size: int = 32) -> np.ndarray:
    """uint8 ``(N, h, w)`` → float32 ``(N, digit_size, digit_size)`` in [0, 1] (bilinear)."""
    out = np.empty((len(images), digit_size, digit_size), np.float32)
    for i, img in enumerate(images):
        resized = Image.fromarray(img).resize((digit_size, digit_size), Image.BILINEAR)
        out[i] = np.asarray(resized, np.float32) / 255.0
    return out


def _bounce(position: int, limit: int, max_speed: int, rng: np.random.Generator):
    """``(position, speed along, speed across)`` after a wall at 0 or ``limit`` is hit (a
    new random speed, pointing inward), or None inside the frame."""
    if position < 0:
        return 0, rng.integers(1, max_speed + 1), rng.integers(-max_speed, max_speed + 1)
    if position >= limit:
        return limit - 1, rng.integers(-max_speed, 0), rng.integers(-max_speed, max_speed + 1)
    return None


def digit_trajectory(
    rng: np.random.Generator, seq_len: int, limit: int, max_speed: int = 4
) -> np.ndarray:
    """Top-left positions ``(seq_len, 2)`` as (y, x) of one bouncing digit, all in [0, limit)."""
    sy, sx = rng.integers(0, limit, size=2)
    dy, dx = rng.integers(-max_speed, max_speed + 1, size=2)
    positions = np.empty((seq_len, 2), np.int64)
    for t in range(seq_len):
        if (hit := _bounce(sy, limit, max_speed, rng)) is not None:
            sy, dy, dx = hit
        if (hit := _bounce(sx, limit, max_speed, rng)) is not None:
            sx, dx, dy = hit
        positions[t] = (sy, sx)
        sy, sx = sy + dy, sx + dx
    return positions


def moving_digits_video(
    digits: np.ndarray,
    rng: np.random.Generator,
    num_digits: int = 2,
    seq_len: int = 40,
    image_size: int = 64,
) -> np.ndarray:
    """One video ``(seq_len, image_size, image_size)`` uint8 from a pool of [0,1] digits."""
    digit_size = digits.shape[-1]
    limit = image_size - digit_size
    if limit <= 0:
        raise ValueError(f"digits of {digit_size}px do not fit a {image_size}px canvas.")
    canvas = np.zeros((seq_len, image_size, image_size), np.float32)
    for _ in range(num_digits):
        digit = digits[rng.integers(len(digits))]
        for t, (y, x) in enumerate(digit_trajectory(rng, seq_len, limit)):
            canvas[t, y : y + digit_size, x : x + digit_size] += digit
    return (np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8)


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def write_moving_digits(
    out_dir: str,
    num_train: int = 2000,
    num_test: int = 256,
    num_digits: int = 2,
    seq_len: int = 40,
    seed: int = 0,
    image_size: int = 64,
    digit_size: int = 32,
    progress: bool = True,
) -> dict[str, int]:
    """Writes ``out_dir/train`` and ``out_dir/test`` from scikit-learn's digits (1500
    train / 297 test images) in the HDF5 video format.

    A split whose shard already exists is kept, so an interrupted run resumes. The settings
    are recorded in ``out_dir/conversion.json`` (as ``prepare_data.py`` does); an ``out_dir``
    holding data of other settings, or of another dataset, is refused (``ValueError``)
    before anything is written.
    """
    settings = {
        "num_train": num_train,
        "num_test": num_test,
        "num_digits": num_digits,
        "seq_len": seq_len,
        "seed": seed,
        "image_size": image_size,
        "digit_size": digit_size,
    }
    manifest = moving_digits_manifest(**settings)
    for name in ("num_train", "num_test", "num_digits", "seq_len", "image_size", "digit_size"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"--{name} must be a whole number >= 1, got {value!r}.")
    if digit_size >= image_size:
        raise ValueError(
            f"digits of {digit_size}px do not fit a {image_size}px canvas; use a digit_size "
            f"below image_size."
        )
    manifest_lib.check_manifest(out_dir, manifest)
    train_images, test_images = load_sklearn_digits()
    counts = {}
    for split, images, count in (
        ("train", train_images, num_train),
        ("test", test_images, num_test),
    ):
        split_dir = os.path.join(out_dir, split)
        if os.path.exists(hdf5.shard_path(split_dir, 1)):
            counts[split] = len(hdf5.VideoShards(split_dir))
            continue
        digits = resize_digits(images, digit_size)
        videos = (
            moving_digits_video(digits, video_rng(seed, split, i), num_digits, seq_len, image_size)
            for i in range(count)
        )
        if progress:
            from tqdm import tqdm

            videos = tqdm(videos, total=count, desc=f"moving digits {split}", unit="video")
        counts[split] = hdf5.write_split(split_dir, videos)
    return counts


def moving_digits_manifest(**settings: int) -> dict:
    """The ``conversion.json`` that ``write_moving_digits`` records for these settings (its
    keyword arguments; its defaults for the others)."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(write_moving_digits).parameters.items()
        if name not in ("out_dir", "progress")
    }
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise TypeError(f"write_moving_digits has no setting {', '.join(unknown)}")
    options = {**defaults, **settings}
    return {"dataset": "moving_digits", "options": options, "compression": "lzf"}

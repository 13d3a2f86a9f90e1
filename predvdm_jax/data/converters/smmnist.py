"""Stochastic Moving MNIST (spec §A.5) from real MNIST, via ``data.moving_digits``.

``train``: 60000 videos from the 60000 MNIST training digits; ``test``: 256
videos whose digits come only from the first 256 MNIST test images. 40 frames
of 64×64 grayscale, 3 digits (PredVDM; MCVD used 2). Video ``i`` of a split is
``moving_digits.moving_digits_video`` of ``video_rng(seed, split, i)``.
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile

import numpy as np

from predvdm_jax.data import moving_digits
from predvdm_jax.data.converters import common

TEST_DIGIT_POOL = 256


EXPECTED = (
    "expected MNIST as a mnist.npz with uint8 x_train/x_test arrays of shape (N, 28, 28) "
    "(keras.datasets.mnist), or a folder holding train-images-idx3-ubyte.gz and "
    "t10k-images-idx3-ubyte.gz from the MNIST site"
)


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except gzip.BadGzipFile:
        raise common.SourceError(
            f"{path} is not a gzip file despite its .gz name (damaged or mislabelled); "
            f"re-download it, or name an uncompressed idx file without .gz; {EXPECTED}."
        ) from None
    except (OSError, EOFError) as err:
        raise common.SourceError(
            f"{path} cannot be read ({err}); the download is damaged or incomplete: "
            f"re-download it; {EXPECTED}."
        ) from None
    if len(data) < 4:
        raise common.SourceError(
            f"{path} holds {len(data)} bytes, not an idx file; re-download it; {EXPECTED}."
        )
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != 3:
        raise common.SourceError(
            f"{path}: not an idx file of uint8 images (magic {data[:4]!r}; "
            f"an images file starts with b'\\x00\\x00\\x08\\x03'); {EXPECTED}."
        )
    if len(data) < 4 + 4 * ndim:
        raise common.SourceError(f"{path} is truncated in its header; re-download it.")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    expected_bytes = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != expected_bytes:
        raise common.SourceError(
            f"{path} holds {len(data)} bytes but its header announces {shape[0]} images of "
            f"{shape[1]}x{shape[2]} ({expected_bytes} bytes): the file is "
            f"{'truncated' if len(data) < expected_bytes else 'damaged'}; re-download it."
        )
    return _checked_images(np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape), path)


def _checked_images(images: np.ndarray, where: str) -> np.ndarray:
    """``images`` as uint8 ``(N, H, W)``, N >= 1, or a ``SourceError`` saying what is wrong."""
    if images.ndim != 3:
        hint = (
            " (flattened rows: reshape them to (N, 28, 28))"
            if images.ndim == 2 and images.shape[-1] == 784
            else ""
        )
        raise common.SourceError(f"{where} holds images of shape {images.shape}{hint}; {EXPECTED}.")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise common.SourceError(f"{where} holds no images (shape {images.shape}); {EXPECTED}.")
    if images.dtype.kind not in "ui":
        hint = (
            " (if they are in [0, 1]: np.round(x * 255).astype(np.uint8))"
            if images.dtype.kind == "f"
            else ""
        )
        raise common.SourceError(f"{where} holds {images.dtype} images{hint}; {EXPECTED}.")
    if images.dtype != np.uint8:
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise common.SourceError(
                f"{where} holds {images.dtype} values in [{lo}, {hi}], not pixels 0..255; "
                f"{EXPECTED}."
            )
    return np.asarray(images, np.uint8)


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise common.SourceError(
            f"{path} is not an .npz (zip) archive (damaged, truncated or another format); "
            f"re-download it; {EXPECTED}."
        )
    try:
        with np.load(path) as f:
            keys = sorted(f.files)
            missing = [k for k in ("x_train", "x_test") if k not in keys]
            if missing:
                raise common.SourceError(
                    f"{path} has no {' / '.join(missing)} array (it holds: "
                    f"{', '.join(keys) or 'nothing'}); {EXPECTED}."
                )
            return (
                _checked_images(f["x_train"], f"{path} x_train"),
                _checked_images(f["x_test"], f"{path} x_test"),
            )
    except common.SourceError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        detail = " ".join(str(err).split()).split(". ")[0]
        raise common.SourceError(
            f"{path} is not a readable .npz of MNIST arrays ({detail}); re-download it; {EXPECTED}."
        ) from None


def load_mnist(path: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (train, test) uint8 images ``(N, 28, 28)`` from ``mnist.npz`` or idx files.

    ``path`` is an ``.npz`` file (keys ``x_train``/``x_test``) or a folder with
    ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``. Anything else
    (missing keys, floats, flattened or no images, damaged files) is a ``SourceError``.
    """
    if os.path.isfile(path) and path.endswith(".npz"):
        return _load_npz(path)
    if os.path.isdir(path):
        found = {}
        for split, stem in (
            ("train", "train-images-idx3-ubyte"),
            ("test", "t10k-images-idx3-ubyte"),
        ):
            for name in (stem + ".gz", stem):
                if os.path.exists(os.path.join(path, name)):
                    found[split] = _read_idx(os.path.join(path, name))
                    break
        if len(found) == 2:
            return found["train"], found["test"]
    raise common.SourceError(
        f"SMMNIST source: no MNIST found at {path!r}; give a mnist.npz file or a folder holding "
        f"train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz."
    )


def plan(
    src: str,
    num_digits: int = 3,
    num_train: int = 60000,
    num_test: int = 256,
    seq_len: int = 40,
    seed: int = 0,
) -> common.ConversionPlan:
    for name, value in (
        ("num_digits", num_digits),
        ("num_train", num_train),
        ("num_test", num_test),
        ("seq_len", seq_len),
    ):
        if value < 1:
            raise common.SourceError(f"--{name} must be >= 1, got {value}.")
    train_images, test_images = load_mnist(src)
    pools = {
        "train": moving_digits.resize_digits(train_images),
        "test": moving_digits.resize_digits(test_images[:TEST_DIGIT_POOL]),
    }
    splits = []
    for split, count in (("train", num_train), ("test", num_test)):

        def load(index, split=split):
            return moving_digits.moving_digits_video(
                pools[split], moving_digits.video_rng(seed, split, index), num_digits, seq_len
            )

        splits.append(common.SplitPlan(split, range(count), load=load))
    options = {
        "num_digits": num_digits,
        "num_train": num_train,
        "num_test": num_test,
        "seq_len": seq_len,
        "seed": seed,
    }
    notes = [
        f"digits: {len(train_images)} train images, test pool = first "
        f"{min(TEST_DIGIT_POOL, len(test_images))} test images"
    ]
    return common.ConversionPlan("smmnist", splits, options, notes)

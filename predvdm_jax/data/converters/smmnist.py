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

import numpy as np

from predvdm_jax.data import moving_digits
from predvdm_jax.data.converters import common

TEST_DIGIT_POOL = 256


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise common.SourceError(f"{path}: not an idx file of uint8 images (magic {data[:4]!r}).")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(path: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST (train, test) uint8 images ``(N, 28, 28)`` from ``mnist.npz`` or idx files.

    ``path`` is an ``.npz`` file (keys ``x_train``/``x_test``) or a folder with
    ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``.
    """
    if os.path.isfile(path) and path.endswith(".npz"):
        with np.load(path) as f:
            return np.asarray(f["x_train"], np.uint8), np.asarray(f["x_test"], np.uint8)
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

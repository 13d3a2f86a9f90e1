"""Stochastic Moving MNIST (spec §A.5) from real MNIST, via ``data.moving_digits``.

``train``: 60000 videos from the 60000 MNIST training digits; ``test``: 256
videos whose digits come only from the first 256 MNIST test images. 40 frames
of 64×64 grayscale, 3 digits (PredVDM; MCVD used 2). Video ``i`` of a split is
the same as ``moving_digits.write_moving_digits`` makes with the same seed.
"""

from __future__ import annotations

import os

from predvdm_jax.data import moving_digits
from predvdm_jax.data.converters import common

TEST_DIGIT_POOL = 256


def plan(
    src: str,
    num_digits: int = 3,
    num_train: int = 60000,
    num_test: int = 256,
    seq_len: int = 40,
    seed: int = 0,
) -> common.ConversionPlan:
    if not os.path.exists(src):
        raise common.SourceError(
            f"SMMNIST source {src!r} does not exist; expected mnist.npz or a "
            f"folder with train-images-idx3-ubyte.gz and "
            f"t10k-images-idx3-ubyte.gz."
        )
    try:
        train_images, test_images = moving_digits.load_mnist(src)
    except FileNotFoundError as e:
        raise common.SourceError(f"SMMNIST source: {e}") from e
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

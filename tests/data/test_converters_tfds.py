"""The TFDS converter: a conversion of ``tfds.testing.mock_data`` and its unknown-feature error
(needs the tfds extra). A missing ``--tfds_key`` is tested in test_converters.py."""

import numpy as np
import pytest

from predvdm_jax.data import converters, hdf5
from predvdm_jax.data.converters import SourceError


def test_tfds_moving_mnist_mock(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow")
    with tfds.testing.mock_data(num_examples=3):
        reference = [
            ex["image_sequence"]
            for ex in tfds.as_numpy(
                tfds.builder("moving_mnist").as_dataset(split="test", shuffle_files=False)
            )
        ]
        summary = converters.convert(
            "tfds:moving_mnist",
            "",
            str(tmp_path / "out"),
            vids_per_shard=2,
            progress=False,
            tfds_key="image_sequence",
            tfds_splits=["test"],
        )
        with pytest.raises(SourceError, match="no feature 'image'"):
            converters.convert(
                "tfds:moving_mnist",
                "",
                str(tmp_path / "bad"),
                progress=False,
                tfds_key="image",
                tfds_splits=["test"],
            )
    shards = hdf5.VideoShards(str(tmp_path / "out/test"))
    assert len(shards) == 3 and summary.split("test").num_frames == 60
    assert shards.frame_shape == (64, 64)  # 1-channel videos are stored as grayscale frames
    for i, video in enumerate(reference):
        assert video.shape == (20, 64, 64, 1)
        np.testing.assert_array_equal(shards.read_clip(i, 0, 20), video)

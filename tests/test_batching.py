import numpy as np
import pytest

from predvdm_jax.batching import device_batch_size, pad_batch


def test_pad_batch_repeats_the_last_row_up_to_the_size():
    batch = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(pad_batch(batch, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert pad_batch(batch, 3) is batch
    with pytest.raises(ValueError, match="got 3 rows for a batch of 2"):
        pad_batch(batch, 2)


def test_device_batch_size_fills_every_device_without_exceeding_the_request():
    assert device_batch_size(64, 10, 4) == 12  # 10 rows rounded up to 3 per device
    assert device_batch_size(5, 100, 4) == 8
    assert device_batch_size(64, 100, 1) == 64

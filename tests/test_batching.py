import numpy as np
import pytest

from predvdm_jax.batching import pad_batch


def test_pad_batch_repeats_the_last_row_up_to_the_size():
    batch = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(pad_batch(batch, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert pad_batch(batch, 3) is batch
    with pytest.raises(ValueError, match="got 3 rows for a batch of 2"):
        pad_batch(batch, 2)

import numpy as np

from predvdm_jax.data import hdf5, moving_digits


def _digits():
    train, _ = moving_digits.load_sklearn_digits()
    return moving_digits.resize_digits(train[:20])


def test_deterministic_per_seed_and_in_range():
    digits = _digits()
    a = moving_digits.moving_digits_video(digits, moving_digits.video_rng(0, "train", 5), 2, 12)
    b = moving_digits.moving_digits_video(digits, moving_digits.video_rng(0, "train", 5), 2, 12)
    c = moving_digits.moving_digits_video(digits, moving_digits.video_rng(1, "train", 5), 2, 12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (12, 64, 64) and a.max() > 100


def test_digits_bounce_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(200):
        pos = moving_digits.digit_trajectory(rng, 40, limit=32)
        assert pos.min() >= 0 and pos.max() < 32
        step = np.abs(np.diff(pos, axis=0))
        assert step.max() <= 4  # integer velocities in [-4, 4]; a bounce clamps to the border
    # Bounces happen: a digit moving 4 px/frame for 40 frames must turn around.
    pos = moving_digits.digit_trajectory(np.random.default_rng(3), 200, limit=32)
    assert (np.diff(np.sign(np.diff(pos[:, 0]))) != 0).any()


def test_sum_and_clip():
    digits = np.ones((1, 32, 32), np.float32) * 0.6
    video = moving_digits.moving_digits_video(digits, np.random.default_rng(0), 3, 40)
    # Overlaps sum and clip at 1 → 255; a single digit stores uint8(0.6 * 255) = 153 (truncated).
    assert set(np.unique(video)) <= {0, 153, 255}
    assert (video == 255).any()


def test_writes_splits_and_resumes(tmp_path):
    counts = moving_digits.write_moving_digits(str(tmp_path), 6, 3, seq_len=10, progress=False)
    assert counts == {"train": 6, "test": 3}
    test = hdf5.VideoShards(str(tmp_path / "test"))
    assert test.frame_shape == (64, 64) and list(test.frame_counts) == [10] * 3
    first = test.read_clip(2, 0, 10)
    again = moving_digits.write_moving_digits(str(tmp_path), 6, 3, seq_len=10, progress=False)
    assert again == counts
    np.testing.assert_array_equal(
        hdf5.VideoShards(str(tmp_path / "test")).read_clip(2, 0, 10), first
    )

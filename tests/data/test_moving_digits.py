import os

import h5py
import numpy as np

from predvdm_jax.data import hdf5, moving_digits


def _digits():
    train, _ = moving_digits.load_sklearn_digits()
    return moving_digits.resize_digits(train[:20])


def _replay(digits, rng, num_digits, seq_len, limit):
    """The (digit index, (seq_len, 2) top-left (y, x)) draws of ``moving_digits_video``, in its
    order: per digit an index, then its trajectory."""
    draws = []
    for _ in range(num_digits):
        index = int(rng.integers(len(digits)))
        draws.append((index, moving_digits.digit_trajectory(rng, seq_len, limit)))
    return draws


def test_deterministic_per_seed_and_in_range():
    digits = _digits()
    a = moving_digits.moving_digits_video(digits, moving_digits.video_rng(0, "train", 5), 2, 12)
    b = moving_digits.moving_digits_video(digits, moving_digits.video_rng(0, "train", 5), 2, 12)
    c = moving_digits.moving_digits_video(digits, moving_digits.video_rng(1, "train", 5), 2, 12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (12, 64, 64) and a.max() > 100
    # Each digit is pasted, top-left at its trajectory's (y, x) of frame t, into frame t; the
    # sum is clipped at 1 and stored as uint8(x * 255), truncated.
    draws = _replay(digits, moving_digits.video_rng(0, "train", 5), 2, 12, 64 - 32)
    expected = np.zeros((12, 64, 64), np.float32)  # the original's float32 canvas
    for index, positions in draws:
        for t, (y, x) in enumerate(positions):
            expected[t, y : y + 32, x : x + 32] += digits[index]
    expected = (np.minimum(expected, 1.0) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(a, expected)


def test_one_digit_lands_at_its_trajectory():
    """A constant 0.5 digit: frame t is lit (uint8(0.5 * 255) = 127, truncated, not rounded)
    exactly on the 32×32 square whose top-left is the replayed trajectory's (y, x) of frame t."""
    digits = np.full((1, 32, 32), 0.5, np.float32)
    video = moving_digits.moving_digits_video(digits, np.random.default_rng(4), 1, 40)
    ((_, positions),) = _replay(digits, np.random.default_rng(4), 1, 40, 64 - 32)
    assert len({tuple(p) for p in positions}) > 10 and (positions[:, 0] != positions[:, 1]).any()
    for t, (y, x) in enumerate(positions):
        rows, cols = np.nonzero(video[t])
        assert (rows.min(), cols.min(), rows.max(), cols.max()) == (y, x, y + 31, x + 31), t
        assert set(np.unique(video[t][rows, cols])) == {127}


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
    # Pixel by pixel: 0 where no digit covers it, 153 under one, 255 under two or more.
    cover = np.zeros((40, 64, 64), np.int64)
    for _, positions in _replay(digits, np.random.default_rng(0), 3, 40, 64 - 32):
        for t, (y, x) in enumerate(positions):
            cover[t, y : y + 32, x : x + 32] += 1
    np.testing.assert_array_equal(video, np.select([cover == 0, cover == 1], [0, 153], 255))


def _mark_frame(path, video, frame, value):
    """Overwrites one stored frame with a constant no generated video holds."""
    with h5py.File(path, "a") as f:
        f[str(video)][str(frame)][...] = value


def test_writes_splits_and_resumes(tmp_path, monkeypatch):
    counts = moving_digits.write_moving_digits(str(tmp_path), 6, 3, seq_len=10, progress=False)
    assert counts == {"train": 6, "test": 3}
    test = hdf5.VideoShards(str(tmp_path / "test"))
    assert test.frame_shape == (64, 64) and list(test.frame_counts) == [10] * 3
    first = test.read_clip(2, 0, 10)
    test.close()
    # Each video is the generator's output for its own (seed, split, index).
    train_images, test_images = moving_digits.load_sklearn_digits()
    for split, images, count in (("train", train_images, 6), ("test", test_images, 3)):
        shards = hdf5.VideoShards(str(tmp_path / split))
        digits = moving_digits.resize_digits(images, 32)
        for i in (0, count - 1):
            rng = moving_digits.video_rng(0, split, i)
            video = moving_digits.moving_digits_video(digits, rng, 2, 10)
            np.testing.assert_array_equal(shards.read_clip(i, 0, 10)[..., 0], video)
        shards.close()

    # A finished split is kept as it is, not generated again: a marked frame survives and
    # the generator is never called.
    _mark_frame(tmp_path / "train" / "shard_0001.hdf5", 4, 7, 77)
    _mark_frame(tmp_path / "test" / "shard_0001.hdf5", 1, 0, 77)
    generated = []
    real_video = moving_digits.moving_digits_video

    def counting_video(digits, rng, *args):
        generated.append(rng)
        return real_video(digits, rng, *args)

    monkeypatch.setattr(moving_digits, "moving_digits_video", counting_video)
    again = moving_digits.write_moving_digits(str(tmp_path), 6, 3, seq_len=10, progress=False)
    assert again == counts and generated == []
    train = hdf5.VideoShards(str(tmp_path / "train"))
    assert (train.read_clip(4, 7, 1) == 77).all() and not (train.read_clip(4, 6, 1) == 77).all()
    assert (hdf5.VideoShards(str(tmp_path / "test")).read_clip(1, 0, 1) == 77).all()
    train.close()
    # A missing split is generated again (the same videos), the finished one still kept.
    os.remove(tmp_path / "test" / "shard_0001.hdf5")
    again = moving_digits.write_moving_digits(str(tmp_path), 6, 3, seq_len=10, progress=False)
    assert again == counts and len(generated) == 3
    assert (hdf5.VideoShards(str(tmp_path / "train")).read_clip(4, 7, 1) == 77).all()
    np.testing.assert_array_equal(
        hdf5.VideoShards(str(tmp_path / "test")).read_clip(2, 0, 10), first
    )

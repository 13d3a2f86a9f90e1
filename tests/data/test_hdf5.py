import os

import h5py
import numpy as np
import pytest

from predvdm_jax.data import hdf5


def _videos(rng, lengths, shape):
  return [rng.integers(0, 256, (t, *shape), dtype=np.uint8) for t in lengths]


@pytest.mark.parametrize("shape", [(8, 6), (8, 6, 3)])
def test_round_trip_gray_and_rgb(tmp_path, shape):
  videos = _videos(np.random.default_rng(0), [5, 9, 7], shape)
  assert hdf5.write_split(str(tmp_path / "train"), videos, vids_per_shard=2) == 3
  assert sorted(os.listdir(tmp_path / "train")) == ["shard_0001.hdf5", "shard_0002.hdf5"]
  shards = hdf5.VideoShards(str(tmp_path / "train"))
  assert len(shards) == 3 and list(shards.frame_counts) == [5, 9, 7]
  assert shards.channels == (1 if len(shape) == 2 else 3)
  for i, video in enumerate(videos):
    clip = shards.read_clip(i, 1, 4)
    expected = video[1:5] if len(shape) == 3 else video[1:5, ..., None]
    np.testing.assert_array_equal(clip, expected)


def test_layout_matches_predvdm(tmp_path):
  hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(1), [3], (4, 4)))
  with h5py.File(tmp_path / "shard_0001.hdf5", "r") as f:
    assert set(f.keys()) == {"len", "videos", "0"}
    assert int(f["len"]["0"][()]) == 3
    assert sorted(f["0"].keys()) == ["0", "1", "2"]
    assert f["0"]["1"].shape == (4, 4) and f["0"]["1"].dtype == np.uint8


def test_missing_folder(tmp_path):
  with pytest.raises(hdf5.DatasetError, match="does not exist"):
    hdf5.VideoShards(str(tmp_path / "nope"))


def test_no_shards(tmp_path):
  with pytest.raises(hdf5.DatasetError, match="no shard_"):
    hdf5.VideoShards(str(tmp_path))


def test_missing_len_entries(tmp_path):
  hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(2), [3, 3], (4, 4)))
  with h5py.File(tmp_path / "shard_0001.hdf5", "a") as f:
    del f["len"]["1"]
    f["len"].create_dataset("2", data=3)
  with pytest.raises(hdf5.DatasetError, match="lack a 'len' entry"):
    hdf5.VideoShards(str(tmp_path))


def test_wrong_dtype_rejected_on_write_and_read(tmp_path):
  with pytest.raises(hdf5.DatasetError, match="dtype float32"):
    hdf5.write_split(str(tmp_path / "a"), [np.zeros((2, 4, 4), np.float32)])
  assert not os.listdir(tmp_path / "a")  # the aborted shard left nothing behind
  with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
    f.create_group("len").create_dataset("0", data=1)
    f.create_group("0").create_dataset("0", data=np.zeros((4, 4), np.int64))
  with pytest.raises(hdf5.DatasetError, match="dtype int64"):
    hdf5.VideoShards(str(tmp_path))


def test_bad_frames_found_on_read(tmp_path):
  """Only video 0's first frame is checked on open; every later frame is checked as it is read."""
  with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
    f.create_group("len").create_dataset("0", data=5)
    group = f.create_group("0")
    group.create_dataset("0", data=np.zeros((4, 4), np.uint8))
    group.create_dataset("1", data=np.zeros((4, 4), np.float32))
    group.create_dataset("2", data=np.zeros((2, 8), np.uint8))
    group.create_dataset("3", data=np.full((4, 4), 7, np.uint8))
  shards = hdf5.VideoShards(str(tmp_path))
  with pytest.raises(hdf5.DatasetError, match=r"video 0 frame 1 is float32\(4, 4\), expected uint8"):
    shards.read_clip(0, 0, 2)
  with pytest.raises(hdf5.DatasetError, match=r"frame 2 is uint8\(2, 8\), expected uint8\(4, 4\)"):
    shards.read_clip(0, 2, 2)
  with pytest.raises(hdf5.DatasetError, match="video 0 has no frame 4; its 'len' entry says 5"):
    shards.read_clip(0, 3, 2)
  np.testing.assert_array_equal(shards.read_clip(0, 3, 1), np.full((1, 4, 4, 1), 7, np.uint8))


def test_wrong_shape(tmp_path):
  with pytest.raises(hdf5.DatasetError, match="every frame must have one shape"):
    hdf5.write_split(str(tmp_path), [[np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)]])
  with pytest.raises(hdf5.DatasetError, match=r"expected \(H, W\) or \(H, W, 3\)"):
    hdf5.write_split(str(tmp_path), [np.zeros((2, 4, 4, 5), np.uint8)])


def test_video_shorter_than_clip(tmp_path):
  hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(3), [20, 8], (4, 4)))
  shards = hdf5.VideoShards(str(tmp_path))
  with pytest.raises(hdf5.DatasetError, match="shorter than the clip length 10"):
    shards.check_min_length(10)


def test_interrupted_write_leaves_no_finished_shard(tmp_path):
  def videos():
    yield np.zeros((2, 4, 4), np.uint8)
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    hdf5.write_split(str(tmp_path), videos())
  assert os.listdir(tmp_path) == []

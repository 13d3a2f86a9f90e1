import os
import pickle
import re

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
    # Read back with h5py alone: video k of a shard is group "<k>" (numbered from 0 in each
    # shard), frame t its dataset "<t>" holding the frame as written.
    where = [("shard_0001.hdf5", "0"), ("shard_0001.hdf5", "1"), ("shard_0002.hdf5", "0")]
    for video, (name, key) in zip(videos, where):
        with h5py.File(tmp_path / "train" / name, "r") as f:
            assert int(f["len"][key][()]) == len(video)
            for t in range(len(video)):
                np.testing.assert_array_equal(f[key][str(t)][()], video[t])


def test_layout_matches_predvdm(tmp_path):
    """Spec §A.1: groups 'len' (one scalar frame count per video), 'videos' (empty) and one
    group per video holding one lzf uint8 dataset per frame, (H, W) or (H, W, 3)."""
    rng = np.random.default_rng(1)
    videos = [rng.integers(0, 256, (t, 5, 7, 3), dtype=np.uint8) for t in (3, 4)]
    hdf5.write_split(str(tmp_path), videos)
    assert os.listdir(tmp_path) == ["shard_0001.hdf5"]
    with h5py.File(tmp_path / "shard_0001.hdf5", "r") as f:
        assert set(f.keys()) == {"len", "videos", "0", "1"}
        assert len(f["videos"]) == 0 and sorted(f["len"].keys()) == ["0", "1"]
        for k, video in enumerate(videos):
            assert f["len"][str(k)].shape == () and int(f["len"][str(k)][()]) == len(video)
            assert sorted(f[str(k)].keys(), key=int) == [str(t) for t in range(len(video))]
            for t, frame in enumerate(video):
                stored = f[str(k)][str(t)]
                assert (stored.shape, stored.dtype, stored.compression) == (
                    (5, 7, 3),
                    np.uint8,
                    "lzf",
                )
                np.testing.assert_array_equal(stored[()], frame)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)])
def test_reads_shards_written_in_predvdm_layout(tmp_path, shape):
    """Shards built here with h5py as PredVDM's HDF5Maker writes them (spec §A.1), two of them,
    the second with the '.h5' suffix the reader also globs: VideoShards numbers the videos
    across shards in shard order and returns each frame as stored."""
    rng = np.random.default_rng(2)
    shards_videos = [
        [rng.integers(0, 256, (t, *shape), dtype=np.uint8) for t in (4, 3)],
        [rng.integers(0, 256, (t, *shape), dtype=np.uint8) for t in (3,)],
    ]
    for name, videos in zip(("shard_0001.hdf5", "shard_0002.h5"), shards_videos):
        with h5py.File(tmp_path / name, "w") as f:
            f.create_group("len")
            f.create_group("videos")
            for k, video in enumerate(videos):
                f["len"].create_dataset(str(k), data=len(video))
                group = f.create_group(str(k))
                for t, frame in enumerate(video):
                    group.create_dataset(str(t), data=frame, compression="lzf", dtype="uint8")
    shards = hdf5.VideoShards(str(tmp_path))
    assert len(shards) == 3 and list(shards.frame_counts) == [4, 3, 3]
    assert shards.frame_shape == shape and shards.channels == (1 if len(shape) == 2 else 3)
    for i, video in enumerate(shards_videos[0] + shards_videos[1]):
        expected = video if len(shape) == 3 else video[..., None]
        np.testing.assert_array_equal(shards.read_clip(i, 0, len(video)), expected)
        np.testing.assert_array_equal(shards.read_clip(i, 1, 2), expected[1:3])


def test_missing_folder(tmp_path):
    with pytest.raises(hdf5.DatasetError, match="does not exist"):
        hdf5.VideoShards(str(tmp_path / "nope"))


def test_video_that_is_not_a_frame_group(tmp_path):
    hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(2), [3, 3], (4, 4)))
    with h5py.File(tmp_path / "shard_0001.hdf5", "a") as f:
        del f["1"]
        f.create_dataset("1", data=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(
        hdf5.DatasetError, match=r"videos \['1'\] lack a 'len' entry or frame group"
    ):
        hdf5.VideoShards(str(tmp_path))


def test_no_shards(tmp_path):
    with pytest.raises(hdf5.DatasetError, match="no shard_"):
        hdf5.VideoShards(str(tmp_path))


def test_shards_without_videos_name_the_fix(tmp_path):
    hdf5.ShardWriter(str(tmp_path / "shard_0001.hdf5")).close()
    with pytest.raises(
        hdf5.DatasetError,
        match=rf"^Dataset folder {re.escape(repr(str(tmp_path)))} holds shards but no videos "
        r"\(shard_0001\.hdf5 is empty\); re-create the split with the command that wrote it, "
        r"or point at the split folder that holds the videos\.$",
    ):
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
        hdf5.write_split(str(tmp_path / "a" / "train"), [np.zeros((2, 4, 4), np.float32)])
    assert not os.path.exists(tmp_path / "a")  # the aborted split left no folder behind
    os.makedirs(tmp_path / "c")  # a folder that was there stays
    with pytest.raises(hdf5.DatasetError, match="dtype float32"):
        hdf5.write_split(str(tmp_path / "c"), [np.zeros((2, 4, 4), np.float32)])
    assert os.listdir(tmp_path / "c") == []
    with pytest.raises(hdf5.DatasetError, match="dtype int64"):  # we write uint8 only
        hdf5.write_split(str(tmp_path / "b"), [np.zeros((2, 4, 4), np.int64)])
    with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
        f.create_group("len").create_dataset("0", data=1)
        f.create_group("0").create_dataset("0", data=np.full((4, 4), 0.5, np.float64))
    # 2-D floats in [0, 1] are images: scaled, not clipped (black), and no latent cache
    with pytest.raises(hdf5.DatasetError) as err:
        hdf5.VideoShards(str(tmp_path))
    assert str(err.value).endswith(
        "dtype float64; expected uint8. Convert them with np.round(x * 255).astype(np.uint8) "
        "(for this frame's value range)."
    )


@pytest.mark.parametrize(
    "low, high, conversion",
    [
        (0.0, 1.0, "np.round(x * 255).astype(np.uint8)"),
        (-1.0, 1.0, "np.round((x + 1) * 127.5).astype(np.uint8)"),
        (0.0, 255.0, "np.clip(np.round(x), 0, 255).astype(np.uint8)"),
    ],
)
def test_float_frames_are_refused_with_the_conversion_their_range_needs(
    tmp_path, low, high, conversion
):
    """Clipping [0, 1] or [-1, 1] floats to 0..255 as uint8 would make a black video."""
    video = np.linspace(low, high, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    with pytest.raises(hdf5.DatasetError, match=rf"Convert them with {re.escape(conversion)}\.$"):
        hdf5.write_split(str(tmp_path), [video])
    converted = eval(conversion, {"np": np, "x": video})
    assert converted.dtype == np.uint8 and (converted.min(), converted.max()) == (0, 255)


def test_int64_frames_of_mcvds_bair_converter_read_as_uint8(tmp_path):
    """MCVD's (and PredVDM's) BAIR converter stores each frame as int64 (64, 64, 3) (spec
    §A.6): such a split reads as uint8 frames of the same values, from disk and memory."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (3, 4, 4, 3))  # int64, as np.array(img.getdata()) gives
    with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
        f.create_group("len").create_dataset("0", data=3)
        f.create_group("videos")
        group = f.create_group("0")
        for t, frame in enumerate(frames):
            group.create_dataset(str(t), data=frame)
    shards = hdf5.VideoShards(str(tmp_path))
    assert shards.dtype == np.uint8 and shards.stored_dtype == np.int64
    clip = shards.read_clip(0, 1, 2)
    assert clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, frames[1:3])
    shards.check_all_frames()
    shards.check_decodes()
    shards.load_into_memory()
    np.testing.assert_array_equal(shards.read_clip(0, 0, 3), frames)


def test_integer_frames_beyond_uint8_are_refused_not_saturated(tmp_path):
    """16-bit frames (0..65535) read as uint8 saturate to 255: a white video, without a word."""
    frames = np.array([[[0, 1000], [40000, 65535]]] * 2, np.uint16)
    with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
        f.create_group("len").create_dataset("0", data=2)
        f.create_group("videos")
        group = f.create_group("0")
        for t, frame in enumerate(frames):
            group.create_dataset(str(t), data=frame)
    with pytest.raises(
        hdf5.DatasetError,
        match=rf"^{re.escape(str(tmp_path))}: video 0 has uint16 frames with values in \[0, 65535\], "
        r"beyond uint8's 0\.\.255; convert them to uint8 \(for 16-bit frames: x >> 8\) and write "
        r"the split again\.$",
    ):
        hdf5.VideoShards(str(tmp_path))


def test_wide_integer_frames_beyond_uint8_after_the_first_are_refused_on_read(tmp_path):
    """The first frame of the split fits uint8, a later frame of another video does not: the
    check on opening passes, and reading that frame (a clip, or check_decodes) is refused."""
    frames = np.zeros((3, 2, 2), np.uint16)
    frames[2, 1, 0] = 300
    with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
        f.create_group("videos")
        lengths = f.create_group("len")
        for video, video_frames in (("0", np.zeros_like(frames)), ("1", frames)):
            lengths.create_dataset(video, data=3)
            group = f.create_group(video)
            for t, frame in enumerate(video_frames):
                group.create_dataset(str(t), data=frame)
    shards = hdf5.VideoShards(str(tmp_path))
    np.testing.assert_array_equal(shards.read_clip(1, 0, 2), 0)
    message = (
        rf"^{re.escape(str(tmp_path / 'shard_0001.hdf5'))}: video 1 frame 2 has uint16 values "
        r"in \[0, 300\], beyond uint8's 0\.\.255; convert the frames to uint8 \(for 16-bit "
        r"frames: x >> 8\) and write the split again\.$"
    )
    with pytest.raises(hdf5.DatasetError, match=message):
        shards.read_clip(1, 1, 2)
    with pytest.raises(hdf5.DatasetError, match=message):
        shards.check_decodes()


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
    with pytest.raises(
        hdf5.DatasetError, match=r"video 0 frame 1 is float32\(4, 4\), expected uint8"
    ):
        shards.read_clip(0, 0, 2)
    with pytest.raises(
        hdf5.DatasetError, match=r"frame 2 is uint8\(2, 8\), expected uint8\(4, 4\)"
    ):
        shards.read_clip(0, 2, 2)
    with pytest.raises(
        hdf5.DatasetError, match=r"video 0 has no frame 4 \(its 'len' entry says 5\); the shard"
    ):
        shards.read_clip(0, 3, 2)
    np.testing.assert_array_equal(shards.read_clip(0, 3, 1), np.full((1, 4, 4, 1), 7, np.uint8))


def test_wrong_shape(tmp_path):
    with pytest.raises(hdf5.DatasetError, match="every frame must have one shape"):
        hdf5.write_split(str(tmp_path), [[np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)]])
    with pytest.raises(hdf5.DatasetError, match=r"expected \(H, W\) or \(H, W, 3\)"):
        hdf5.write_split(str(tmp_path), [np.zeros((2, 4, 4, 5), np.uint8)])


def test_a_frame_shape_differing_from_an_earlier_shard_is_refused_when_written(tmp_path):
    """The reader takes the split's frame shape from its first frame: a later shard of another
    shape would be written without a word and fail only when training draws one of its clips."""
    videos = [np.zeros((3, 4, 6), np.uint8), np.zeros((3, 5, 5), np.uint8)]
    with pytest.raises(
        hdf5.DatasetError,
        match=r"video 0 has a frame of shape \(5, 5\), but the dataset's frames are \(4, 6\)",
    ):
        hdf5.write_split(str(tmp_path / "split"), videos, vids_per_shard=1)
    assert sorted(os.listdir(tmp_path / "split")) == ["shard_0001.hdf5", hdf5.UNFINISHED]


def test_video_shorter_than_clip(tmp_path):
    hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(3), [20, 8], (4, 4)))
    shards = hdf5.VideoShards(str(tmp_path))
    with pytest.raises(
        hdf5.DatasetError,
        match=r"1 video\(s\) are shorter than the clip length 10 \(e.g. video 1 has 8 frames\); "
        r"ask for less, or drop those videos\.$",
    ):
        shards.check_min_length(10, "ask for less")
    shards.check_min_length(8, "ask for less")


def test_interrupted_write_leaves_no_finished_shard(tmp_path):
    def videos():
        yield np.zeros((2, 4, 4), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hdf5.write_split(str(tmp_path), videos())
    assert os.listdir(tmp_path) == []


def test_an_interrupted_split_keeps_its_finished_shards_and_is_refused_as_unfinished(tmp_path):
    """Its first shard alone would read as a finished split of 2 of the videos."""
    written = _videos(np.random.default_rng(8), [2, 3, 2], (4, 4))

    def videos():
        yield from written
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hdf5.write_split(str(tmp_path), videos(), vids_per_shard=2)
    assert sorted(os.listdir(tmp_path)) == ["shard_0001.hdf5", hdf5.UNFINISHED]
    with pytest.raises(
        hdf5.DatasetError,
        match=rf"^{re.escape(str(tmp_path))} is unfinished \(its writing stopped before the end\); "
        rf"delete {re.escape(str(tmp_path))} and write the split again\.$",
    ):
        hdf5.VideoShards(str(tmp_path))
    with h5py.File(tmp_path / "shard_0001.hdf5", "r") as f:
        for i in range(2):
            np.testing.assert_array_equal(
                np.stack([f[str(i)][str(t)][()] for t in range(len(written[i]))]), written[i]
            )


def test_a_split_of_whole_shards_ends_without_an_empty_one(tmp_path):
    videos = _videos(np.random.default_rng(9), [1, 1, 1, 1], (4, 4))
    assert hdf5.write_split(str(tmp_path / "a"), iter(videos), vids_per_shard=2) == 4
    assert sorted(os.listdir(tmp_path / "a")) == ["shard_0001.hdf5", "shard_0002.hdf5"]
    assert hdf5.write_split(str(tmp_path / "b"), []) == 0
    assert not os.path.exists(tmp_path / "b")
    with pytest.raises(ValueError, match="vids_per_shard must be >= 1"):
        hdf5.write_split(str(tmp_path / "c"), videos, vids_per_shard=0)


def test_shards_are_read_in_shard_number_order_past_9999(tmp_path):
    """``shard_{:04d}`` names shard 10000 ``shard_10000``: before ``shard_1001`` as text."""
    numbers = [2, 1001, 9999, 10000, 10001]
    assert os.path.basename(hdf5.shard_path(str(tmp_path), 10000)) == "shard_10000.hdf5"
    for n in reversed(numbers):
        with hdf5.ShardWriter(hdf5.shard_path(str(tmp_path), n)) as writer:
            writer.add_video(np.full((1, 2, 2), n % 251, np.uint8))
    shards = hdf5.VideoShards(str(tmp_path))
    assert [os.path.basename(p) for p in shards.paths] == [
        "shard_0002.hdf5",
        "shard_1001.hdf5",
        "shard_9999.hdf5",
        "shard_10000.hdf5",
        "shard_10001.hdf5",
    ]
    assert [int(shards.read_clip(i, 0, 1).max()) for i in range(5)] == [n % 251 for n in numbers]


def test_two_names_for_one_shard_number_are_refused(tmp_path):
    hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(4), [2], (4, 4)))
    os.link(tmp_path / "shard_0001.hdf5", tmp_path / "shard_1.h5")
    with pytest.raises(hdf5.DatasetError, match="shard_0001.hdf5 and shard_1.h5 have the same"):
        hdf5.VideoShards(str(tmp_path))


@pytest.mark.parametrize("shape", [(4, 4, 1), (4, 4, 4)])
def test_frames_with_one_or_four_channels_are_refused(tmp_path, shape):
    with pytest.raises(hdf5.DatasetError, match=r"expected \(H, W\) or \(H, W, 3\)"):
        hdf5.write_split(str(tmp_path / "w"), [np.zeros((2, *shape), np.uint8)])
    with h5py.File(tmp_path / "shard_0001.hdf5", "w") as f:
        f.create_group("len").create_dataset("0", data=1)
        f.create_group("0").create_dataset("0", data=np.zeros(shape, np.uint8))
    with pytest.raises(hdf5.DatasetError, match=r"video 0 has a frame of shape \(4, 4, "):
        hdf5.VideoShards(str(tmp_path))


def test_latents_keep_any_channel_count(tmp_path):
    with hdf5.ShardWriter(hdf5.shard_path(str(tmp_path), 1), kind="latents") as writer:
        writer.add_video(np.zeros((2, 4, 4, 4), np.float16))
    assert hdf5.VideoShards(str(tmp_path), kind="latents").frame_shape == (4, 4, 4)


def test_wrong_kind_messages(tmp_path):
    hdf5.write_split(str(tmp_path / "frames"), _videos(np.random.default_rng(5), [2], (4, 4)))
    with pytest.raises(hdf5.DatasetError) as err:
        hdf5.VideoShards(str(tmp_path / "frames"), kind="latents")
    assert "dtype uint8; a latent cache holds float16/float32" in str(err.value)
    assert "read it with kind='frames'" in str(err.value) and "astype" not in str(err.value)
    with hdf5.ShardWriter(hdf5.shard_path(str(tmp_path / "latents"), 1), kind="latents") as writer:
        writer.add_video(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(
        hdf5.DatasetError, match="expected uint8 \\(a latent cache: read it with kind='latents'"
    ):
        hdf5.VideoShards(str(tmp_path / "latents"))


def test_a_shard_file_instead_of_its_folder(tmp_path):
    hdf5.write_split(str(tmp_path), _videos(np.random.default_rng(6), [2], (4, 4)))
    path = str(tmp_path / "shard_0001.hdf5")
    with pytest.raises(
        hdf5.DatasetError,
        match=f"{path!r} is a file; pass the split folder that holds it \\({str(tmp_path)!r}\\)",
    ):
        hdf5.VideoShards(path)


def test_check_all_frames_finds_every_bad_frame_without_reading_pixels(tmp_path):
    hdf5.write_split(
        str(tmp_path), _videos(np.random.default_rng(7), [3, 4, 2], (8, 8)), vids_per_shard=2
    )
    hdf5.VideoShards(str(tmp_path)).check_all_frames()  # a good split passes
    with h5py.File(tmp_path / "shard_0001.hdf5", "a") as f:
        del f["1"]["2"]
        f["1"].create_dataset("2", data=np.zeros((4, 8), np.uint8))
        f["len"]["1"][()] = 6
    with h5py.File(tmp_path / "shard_0002.hdf5", "a") as f:
        del f["0"]["1"]
        f["0"].create_dataset("1", data=np.zeros((8, 8), np.float32))
    shards = hdf5.VideoShards(str(tmp_path))  # opening checks only video 0's first frame
    with pytest.raises(hdf5.DatasetError) as err:
        shards.check_all_frames(max_listed=2)
    message = str(err.value)
    assert message.startswith(f"{tmp_path}: 4 bad frame(s): ")
    assert "shard_0001.hdf5: video 1 frame 2 is uint8(4, 8), expected uint8(8, 8)" in message
    assert "shard_0001.hdf5: video 1 has no frame 4 (its 'len' entry says 6)" in message
    assert message.endswith("(and 2 more); re-create the dataset.")
    with pytest.raises(hdf5.DatasetError, match=r"video 0 frame 1 is float32\(8, 8\)"):
        shards.check_all_frames(max_listed=4)


def test_a_missing_frame_is_told_alike_on_open_read_and_check(tmp_path):
    """Opening (video 0's frame 0), ``read_clip`` and ``check_all_frames`` name a missing frame
    in one wording; the errors add the fix, the check lists the problem and the fix once."""
    hdf5.write_split(str(tmp_path / "a"), _videos(np.random.default_rng(8), [3, 3], (4, 4)))
    path = str(tmp_path / "a" / "shard_0001.hdf5")
    fix = "; the shard is incomplete or malformed: re-create it."
    with h5py.File(path, "a") as f:
        del f["1"]["2"]
    shards = hdf5.VideoShards(str(tmp_path / "a"))
    problem = f"{path}: video 1 has no frame 2 (its 'len' entry says 3)"
    with pytest.raises(hdf5.DatasetError) as err:
        shards.read_clip(1, 0, 3)
    assert str(err.value) == problem + fix
    # as a reader process sends it back (pickled): the fix still once
    assert str(pickle.loads(pickle.dumps(err.value))) == problem + fix
    with pytest.raises(hdf5.DatasetError) as err:
        shards.check_all_frames()
    assert str(err.value) == f"{tmp_path / 'a'}: 1 bad frame(s): {problem}; re-create the dataset."
    shards.close()
    with h5py.File(path, "a") as f:
        del f["0"]["0"]
    with pytest.raises(hdf5.DatasetError) as err:
        hdf5.VideoShards(str(tmp_path / "a"))
    assert str(err.value) == f"{path}: video 0 has no frame 0 (its 'len' entry says 3)" + fix


def test_split_dirs_are_the_sub_folders_holding_shards(tmp_path):
    """What ``shard_paths`` counts, ``.h5`` included, in natural order; not a hidden temporary
    file (``atomic_io``'s ``.tmp-...``), a folder without shards, or a shard at the top."""
    video = _videos(np.random.default_rng(9), [1], (2, 2))
    hdf5.write_split(str(tmp_path / "train"), video)
    hdf5.write_shard(str(tmp_path / "test" / "videos.h5"), video)
    hdf5.write_shard(str(tmp_path / "split10" / "a.hdf5"), video)
    hdf5.write_shard(str(tmp_path / "split9" / "a.hdf5"), video)
    hdf5.write_shard(str(tmp_path / "top.hdf5"), video)
    os.makedirs(tmp_path / "notes")
    (tmp_path / "notes" / "readme.txt").write_text("x")
    (tmp_path / "notes" / ".tmp-abcshard_0001.hdf5").write_bytes(b"partial")
    assert hdf5.split_dirs(str(tmp_path)) == ["split9", "split10", "test", "train"]
    assert hdf5.split_dirs(str(tmp_path / "nope")) == []
    assert hdf5.split_dirs(str(tmp_path / "top.hdf5")) == []


def test_folders_of_shards_past_9999_are_named_by_their_first_shard(tmp_path):
    """The latent cache's and the converters' output checks list shards as the reader does
    (``shard_paths``), so they name ``shard_9999``, not ``shard_10000`` (first as text)."""
    from predvdm_jax.data import latent_cache, manifest

    for n in (10000, 9999):
        hdf5.write_shard(
            hdf5.shard_path(str(tmp_path / "out" / "train"), n), [np.zeros((1, 2, 2), np.uint8)]
        )
    with pytest.raises(hdf5.DatasetError, match=r"holds shards \(shard_9999.hdf5\) but no cache"):
        latent_cache.check_output_folder(str(tmp_path / "src"), str(tmp_path / "out" / "train"))
    first = tmp_path / "out" / "train" / "shard_9999.hdf5"
    with pytest.raises(hdf5.DatasetError, match=rf"holds shards \({re.escape(str(first))}\) from"):
        manifest.check_manifest(str(tmp_path / "out"), {"dataset": "toy"})
    assert not os.path.exists(tmp_path / "out" / manifest.MANIFEST_NAME)


def test_write_split_refuses_a_folder_that_already_holds_shards(tmp_path):
    """Rewriting a split in place would overwrite its first shards and keep the rest."""
    rng = np.random.default_rng(4)
    first = _videos(rng, [3] * 6, (4, 4))
    hdf5.write_split(str(tmp_path), first, vids_per_shard=2)
    with pytest.raises(hdf5.DatasetError, match=r"already holds shards \(shard_0001\.hdf5\)"):
        hdf5.write_split(str(tmp_path), _videos(rng, [3] * 2, (4, 4)))
    shards = hdf5.VideoShards(str(tmp_path))
    assert len(shards) == 6
    np.testing.assert_array_equal(shards.read_clip(0, 0, 3)[..., 0], first[0])

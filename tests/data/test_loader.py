import multiprocessing
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from predvdm_jax.data import hdf5, loader


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Videos whose frame t of video v is filled with the value 10*v + t."""
    root = tmp_path_factory.mktemp("data")
    lengths = [12, 7, 9, 20]
    videos = [
        np.stack([np.full((4, 6), 10 * v + t, np.uint8) for t in range(n)])
        for v, n in enumerate(lengths)
    ]
    hdf5.write_split(str(root / "train"), videos)
    return str(root / "train"), lengths


def _decode(clip):
    """(T, H, W, 1) in [-1, 1] → (video, start)."""
    values = np.round((clip[:, 0, 0, 0] + 1) * 127.5).astype(int)
    return values[0] // 10, values[0] % 10


def test_train_windows_cover_every_start(split):
    split_dir, lengths = split
    shards = hdf5.VideoShards(split_dir)
    windows = loader.TrainWindows(shards.frame_counts, 7, seed=0)
    seen = {}
    for g in range(2000):
        video, start, flip = windows(g)
        assert not flip
        seen.setdefault(video, set()).add(start)
    for video, n in enumerate(lengths):
        assert seen[video] == set(range(n - 7 + 1))  # the last start n-7 included


def test_each_epoch_visits_every_video_once(split):
    split_dir, lengths = split
    windows = loader.TrainWindows(hdf5.VideoShards(split_dir).frame_counts, 5, seed=3)
    for epoch in range(3):
        videos = [windows(epoch * 4 + i)[0] for i in range(4)]
        assert sorted(videos) == [0, 1, 2, 3]


def test_clips_are_the_frames_of_their_window(split):
    split_dir, _ = split
    it = loader.train_iterator(split_dir, 5, 4, seed=1, num_threads=1, prefetch=1)
    batch = next(it)["video"]
    assert batch.shape == (4, 5, 4, 6, 1) and batch.dtype == np.float32
    for clip in batch:
        video, start = _decode(clip)
        values = np.round((clip[:, 0, 0, 0] + 1) * 127.5).astype(int)
        np.testing.assert_array_equal(values, 10 * video + start + np.arange(5))


def test_preloaded_split_serves_the_same_clips_without_the_files(tmp_path, split):
    """Up to the size limit the split is read once: its shard files can then vanish."""
    split_dir, lengths = split
    copies = {}
    for name in ("preloaded", "over_limit"):
        (tmp_path / name).mkdir()
        for shard in os.listdir(split_dir):
            (tmp_path / name / shard).write_bytes(open(os.path.join(split_dir, shard), "rb").read())
        copies[name] = str(tmp_path / name)
    nbytes = sum(lengths) * 4 * 6
    assert hdf5.VideoShards(split_dir).nbytes == nbytes
    kw = dict(num_frames=5, batch_size=4, seed=2, num_threads=1, prefetch=1)
    on_disk = loader.train_iterator(split_dir, **kw)
    preloaded = loader.train_iterator(copies["preloaded"], preload_max_bytes=nbytes, **kw)
    over_limit = loader.train_iterator(copies["over_limit"], preload_max_bytes=nbytes - 1, **kw)
    for path in copies.values():
        for shard in os.listdir(path):
            os.remove(os.path.join(path, shard))
    for _ in range(6):
        np.testing.assert_array_equal(next(preloaded)["video"], next(on_disk)["video"])
    missing = os.path.join(copies["over_limit"], "shard_0001.hdf5")  # the split's one shard
    with pytest.raises(hdf5.DatasetError, match=f"^{re.escape(missing)}: cannot read video"):
        next(over_limit)


def test_flip_is_per_clip(tmp_path):
    frame = np.arange(24, dtype=np.uint8).reshape(4, 6)
    hdf5.write_split(str(tmp_path), [np.stack([frame] * 6)] * 3)
    it = loader.train_iterator(str(tmp_path), 3, 8, seed=0, horizontal_flip=True, num_threads=1)
    flips = []
    for _ in range(4):
        for clip in next(it)["video"]:
            pixels = np.round((clip[0, ..., 0] + 1) * 127.5).astype(np.uint8)
            assert np.array_equal(pixels, frame) or np.array_equal(pixels, frame[:, ::-1])
            flips.append(np.array_equal(pixels, frame[:, ::-1]))
    assert 0 < sum(flips) < len(flips)


def test_restore_yields_identical_next_batches(split):
    split_dir, _ = split
    straight = loader.train_iterator(split_dir, 5, 4, seed=7)
    expected = [next(straight)["video"] for _ in range(6)]
    first = loader.train_iterator(split_dir, 5, 4, seed=7)
    for _ in range(3):
        next(first)
    state = first.get_state()
    resumed = loader.train_iterator(split_dir, 5, 4, seed=7)
    resumed.set_state(state)
    for want in expected[3:]:
        np.testing.assert_array_equal(next(resumed)["video"], want)


def test_a_resume_with_another_batch_size_goes_on_from_the_examples_served(split):
    """Training example g is a function of g alone: 3 batches of 4 served examples 0..11, so
    a resume with batches of 6 serves 12..17 next (the straight batch-6 run's third batch),
    and one with batches of 8 starts at the next whole batch, 16..23: nothing repeats."""
    split_dir, _ = split
    first = loader.train_iterator(split_dir, 5, 4, seed=7)
    for _ in range(3):
        next(first)
    state = first.get_state()
    for batch_size, position in ((6, 2), (8, 2)):
        straight = loader.train_iterator(split_dir, 5, batch_size, seed=7)
        expected = [next(straight)["video"] for _ in range(position + 1)][position]
        resumed = loader.train_iterator(split_dir, 5, batch_size, seed=7)
        resumed.set_state(state)
        np.testing.assert_array_equal(next(resumed)["video"], expected)
    with pytest.raises(ValueError, match=r"records no examples served .*start a new workdir$"):
        resumed.set_state({"next_index": 3})


def test_a_state_restores_only_into_the_same_clip_stream(split, tmp_path):
    """Example g is a function of (seed, clip length, flip, videos): restoring a position into
    another stream resumes neither run (a new epoch order mid-epoch repeats and skips videos)."""
    split_dir, lengths = split
    first = loader.train_iterator(split_dir, 5, 4, seed=7)
    next(first)
    state = first.get_state()
    more = str(tmp_path / "more")
    hdf5.write_split(more, [np.zeros((n, 4, 6), np.uint8) for n in lengths + [9]])
    longer = str(tmp_path / "longer")  # as many videos, one of them longer: other windows
    hdf5.write_split(longer, [np.zeros((n, 4, 6), np.uint8) for n in lengths[:-1] + [30]])
    for name, other in (
        (
            "video_lengths 'sha256:[0-9a-f]{16}' \\(now 'sha256:[0-9a-f]{16}'\\)",
            loader.train_iterator(longer, 5, 4, seed=7),
        ),
        ("seed 7 \\(now 8\\)", loader.train_iterator(split_dir, 5, 4, seed=8)),
        ("frames 5 \\(now 6\\)", loader.train_iterator(split_dir, 6, 4, seed=7)),
        (
            "videos 4 \\(now 5\\), "
            "video_lengths 'sha256:[0-9a-f]{16}' \\(now 'sha256:[0-9a-f]{16}'\\)",
            loader.train_iterator(more, 5, 4, seed=7),
        ),
        (
            "horizontal_flip False \\(now True\\)",
            loader.train_iterator(split_dir, 5, 4, seed=7, horizontal_flip=True),
        ),
    ):
        with pytest.raises(
            ValueError,
            match=rf"^the data position to resume \(4 examples served\) is of another clip stream: "
            rf"{name}; resume with the run's seed, clip length, flip and training split, or pass "
            r"a new --workdir to start over \(with --config\.train\.init_from=<a bundle of this "
            r"run> to keep its weights\)\.$",
        ):
            other.set_state(state)
    same = loader.train_iterator(split_dir, 5, 2, seed=7)  # another batch size: allowed
    same.set_state(state)
    same.set_state({"examples": 4})  # a state that records no stream (older runs)


def test_reader_processes_serve_the_same_batches_and_states_cross_over(split):
    """Two spawned readers give the in-process reader's batches; a state saved under one reader
    count restores under the other."""
    split_dir, _ = split
    plain = loader.train_iterator(split_dir, 5, 4, seed=7)
    expected = [next(plain)["video"] for _ in range(8)]
    before = set(multiprocessing.active_children())
    with loader.train_iterator(split_dir, 5, 4, seed=7, num_workers=2) as workers:
        got = [next(workers)["video"] for _ in range(4)]
        state = workers.get_state()
        assert len(set(multiprocessing.active_children()) - before) == 2
    assert not set(multiprocessing.active_children()) - before  # the block stopped the readers
    resumed = loader.train_iterator(split_dir, 5, 4, seed=7)
    resumed.set_state(state)
    got += [next(resumed)["video"] for _ in range(2)]
    with loader.train_iterator(split_dir, 5, 4, seed=7, num_workers=2) as back:
        back.set_state(resumed.get_state())
        got += [next(back)["video"] for _ in range(2)]
    assert len(got) == len(expected)
    for clip, want in zip(got, expected):
        assert type(clip) is np.ndarray
        np.testing.assert_array_equal(clip, want)


def test_eval_windows_repeat_and_spread(split):
    split_dir, lengths = split
    counts = np.array(lengths)
    a = loader.eval_windows(counts, 10, 7, seed=0)
    assert a == loader.eval_windows(counts, 10, 7, seed=0)
    assert a != loader.eval_windows(counts, 10, 7, seed=1)
    assert [v for v, _ in a] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    it = loader.eval_iterator(split_dir, 7, 10, 4, seed=0, num_threads=1)
    batches = list(it)
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    got = [_decode(c) for b in batches for c, m in zip(b["video"], b["mask"]) if m]
    assert got == a
    # 3 clips per batch in rows of 4 (a device count's rounding): batch b holds clips 3b on.
    padded = list(loader.eval_iterator(split_dir, 7, 10, 4, seed=0, clips_per_batch=3))
    assert len(padded) == 4
    for b, batch in enumerate(padded):
        real = batch["mask"] > 0
        np.testing.assert_array_equal(real, [1, 1, 1, 0] if b < 3 else [1, 0, 0, 0])
        assert [_decode(c) for c in batch["video"][real]] == a[3 * b : 3 * b + 3]
        # clip numbers of the real rows; padding rows number no clip (10: past the last)
        expected = [3 * b + r if r < 3 and 3 * b + r < 10 else 10 for r in range(4)]
        np.testing.assert_array_equal(batch["index"], expected)


def test_too_short_for_the_clip(split):
    split_dir, _ = split
    with pytest.raises(hdf5.DatasetError, match="shorter than the clip length 8"):
        loader.train_iterator(split_dir, 8, 4, seed=0)


def test_batch_sharded_over_eight_devices(split):
    split_dir, _ = split
    script = textwrap.dedent(f"""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from predvdm_jax.data import loader
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    batch = next(loader.train_iterator({split_dir!r}, 5, 16, seed=2, sharding=sharding))["video"]
    plain = next(loader.train_iterator({split_dir!r}, 5, 16, seed=2))["video"]
    assert batch.shape == (16, 5, 4, 6, 1) and batch.sharding == sharding
    shards = sorted(batch.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 8 and all(s.data.shape == (2, 5, 4, 6, 1) for s in shards)
    assert len({{s.device for s in shards}}) == 8
    np.testing.assert_array_equal(np.asarray(batch), plain)
    print("OK")
  """)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]

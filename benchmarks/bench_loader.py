"""Loader throughput (clips/s) on the moving-digits set: from disk, with reader processes,
preloaded.

Baseline measured in the same run: the same clips read by a plain single-threaded loop over
h5py's high-level API as this project's reader did before it used h5py's low-level calls,
``np.asarray(group[name])`` per frame. Rows: the same loop with ``group[name][()]`` (h5py's
faster high-level spelling); ``VideoShards.read_clip`` in the same loop; grain's
``train_iterator`` from disk with one reading thread and with ``--workers`` reader processes
(``data.num_workers``); the split preloaded in memory (``data.preload_max_gb``, the
training default for splits up to 2 GB), whose one-off read is timed separately.

  python benchmarks/bench_loader.py [--data=data/moving_digits] [--workers=2]
"""

import os
import sys
import tempfile
import time

import h5py
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

from predvdm_jax.data import hdf5, loader, moving_digits  # noqa: E402

flags.DEFINE_string("data", None, "Moving-digits folder (default: generate 512 videos in /tmp).")
flags.DEFINE_integer("batch", 64, "Clips per batch.")
flags.DEFINE_integer("frames", 15, "Frames per clip.")
flags.DEFINE_integer("batches", 30, "Batches to time.")
flags.DEFINE_integer("workers", os.cpu_count(), "Reader processes for the worker row.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    root = FLAGS.data or os.path.join(tempfile.gettempdir(), "bench_moving_digits")
    if not os.path.exists(os.path.join(root, "train")):
        moving_digits.write_moving_digits(root, 512, 32, progress=False)
    split = os.path.join(root, "train")
    n = FLAGS.batch * FLAGS.batches
    shards = hdf5.VideoShards(split)
    windows = [loader.TrainWindows(shards.frame_counts, FLAGS.frames, seed=0)(g) for g in range(n)]
    assert len(shards.paths) == 1, "the baseline reads one shard"

    def high_level_rate(read_frame):
        with h5py.File(shards.paths[0], "r") as f:
            start = time.perf_counter()
            for video, t0, _ in windows:
                group = f[str(video)]
                frames = [read_frame(group[str(t)]) for t in range(t0, t0 + FLAGS.frames)]
                loader.to_model_range(np.stack(frames)[..., None])
            return n / (time.perf_counter() - start)

    baseline = high_level_rate(np.asarray)
    rows = [("h5py high-level loop, dataset[()]", high_level_rate(lambda d: d[()]))]

    start = time.perf_counter()
    for video, t0, _ in windows:
        loader.to_model_range(shards.read_clip(video, t0, FLAGS.frames))
    read_clip_rate = n / (time.perf_counter() - start)

    def iterator_rate(**kw):
        prefetch = 8
        with loader.train_iterator(
            split, FLAGS.frames, FLAGS.batch, seed=0, prefetch=prefetch, **kw
        ) as it:
            for _ in range(prefetch + 1):  # drain what was read ahead: time the steady state
                next(it)
            start = time.perf_counter()
            for _ in range(FLAGS.batches):
                next(it)
            return n / (time.perf_counter() - start)

    rows += [
        ("VideoShards.read_clip loop", read_clip_rate),
        ("grain train_iterator, from disk", iterator_rate()),
        (
            f"same, {FLAGS.workers} reader processes",
            iterator_rate(num_workers=FLAGS.workers),
        ),
    ]
    start = time.perf_counter()
    hdf5.VideoShards(split).load_into_memory()
    preload_s = time.perf_counter() - start
    rows.append(("grain train_iterator, preloaded", iterator_rate(preload_max_bytes=shards.nbytes)))

    print(f"hardware: {common.hardware()}")
    print(f"{'loader':<44}{'clips/s':>10}{'ratio':>8}")
    print(f"{'baseline: h5py loop, np.asarray(dataset)':<44}{baseline:>10.1f}{1.0:>8.2f}")
    for name, rate in rows:
        print(f"{name:<44}{rate:>10.1f}{rate / baseline:>8.2f}")
    print(f"one-off preload of {shards.nbytes / 1e6:.0f} MB: {preload_s:.1f} s")
    for name, rate in rows:
        common.emit(
            f"loader, moving digits, {FLAGS.frames}-frame clips: {name}",
            rate,
            "clips/s",
            "h5py loop, np.asarray(dataset)",
            baseline,
        )


if __name__ == "__main__":
    app.run(main)

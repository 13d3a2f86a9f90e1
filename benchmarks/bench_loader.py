"""Loader throughput (clips/s) on the moving-digits set, from disk and preloaded.

Baseline measured in the same run: reading the same clips with a plain
single-threaded h5py loop (no grain, no prefetch). The preloaded iterator
holds the split in memory (``data.preload_max_gb``, the training default for
splits up to 2 GB); its one-off read is timed separately.

  python benchmarks/bench_loader.py [--data=data/moving_digits]
"""

import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

from predvdm_jax.data import hdf5, loader, moving_digits  # noqa: E402

flags.DEFINE_string("data", None, "Moving-digits folder (default: generate 512 videos in /tmp).")
flags.DEFINE_integer("batch", 64, "Clips per batch.")
flags.DEFINE_integer("frames", 15, "Frames per clip.")
flags.DEFINE_integer("batches", 30, "Batches to time.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    root = FLAGS.data or os.path.join(tempfile.gettempdir(), "bench_moving_digits")
    if not os.path.exists(os.path.join(root, "train")):
        moving_digits.write_moving_digits(root, None, 512, 32, progress=False)
    split = os.path.join(root, "train")
    n = FLAGS.batch * FLAGS.batches

    shards = hdf5.VideoShards(split)
    windows = loader.TrainWindows(shards.frame_counts, FLAGS.frames, seed=0)
    start = time.perf_counter()
    for g in range(n):
        video, t0, _ = windows(g)
        loader.to_model_range(shards.read_clip(video, t0, FLAGS.frames))
    baseline = n / (time.perf_counter() - start)

    def iterator_rate(**kw):
        prefetch = 8
        it = loader.train_iterator(
            split, FLAGS.frames, FLAGS.batch, seed=0, prefetch=prefetch, **kw
        )
        for _ in range(prefetch + 1):  # drain what was read ahead: time the steady state
            next(it)
        start = time.perf_counter()
        for _ in range(FLAGS.batches):
            next(it)
        return n / (time.perf_counter() - start)

    grain_rate = iterator_rate()
    start = time.perf_counter()
    hdf5.VideoShards(split).load_into_memory()
    preload_s = time.perf_counter() - start
    preloaded_rate = iterator_rate(preload_max_bytes=shards.nbytes)

    print(f"hardware: {common.hardware()}, {os.cpu_count()} CPU cores")
    print(f"{'loader':<40}{'clips/s':>10}{'ratio':>8}")
    print(f"{'baseline: plain h5py loop':<40}{baseline:>10.1f}{1.0:>8.2f}")
    for name, rate in (
        ("grain train_iterator, from disk", grain_rate),
        ("grain train_iterator, preloaded", preloaded_rate),
    ):
        print(f"{name:<40}{rate:>10.1f}{rate / baseline:>8.2f}")
    print(f"one-off preload of {shards.nbytes / 1e6:.0f} MB: {preload_s:.1f} s")
    common.emit(
        f"loader, moving digits, {FLAGS.frames}-frame clips, from disk",
        grain_rate,
        "clips/s",
        "plain h5py loop",
        baseline,
    )
    common.emit(
        f"loader, moving digits, {FLAGS.frames}-frame clips, preloaded",
        preloaded_rate,
        "clips/s",
        "plain h5py loop",
        baseline,
    )


if __name__ == "__main__":
    app.run(main)

"""Loader throughput (clips/s) on the moving-digits set.

Baseline measured in the same run: reading the same clips with a plain
single-threaded h5py loop (no grain, no prefetch).

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

    it = loader.train_iterator(split, FLAGS.frames, FLAGS.batch, seed=0)
    next(it)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
        next(it)
    grain_rate = n / (time.perf_counter() - start)

    print(f"hardware: {common.hardware()}, {os.cpu_count()} CPU cores")
    print(f"{'loader':<34}{'clips/s':>10}{'ratio':>8}")
    print(f"{'baseline: plain h5py loop':<34}{baseline:>10.1f}{1.0:>8.2f}")
    print(
        f"{'grain train_iterator (4 threads)':<34}{grain_rate:>10.1f}{grain_rate / baseline:>8.2f}"
    )
    common.emit(
        f"loader, moving digits, {FLAGS.frames}-frame clips",
        grain_rate,
        "clips/s",
        "plain h5py loop",
        baseline,
    )


if __name__ == "__main__":
    app.run(main)

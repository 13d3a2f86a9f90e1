"""Checks every frame of one or more dataset split folders (HDF5 metadata only: presence,
shape, dtype), then prints each split's summary. ``--decode`` also reads every frame (one pass
over the data) to find corrupt compressed chunks and, in a latent cache, NaN/Inf. A dataset
folder (one holding split folders, e.g. ``data/moving_digits``) stands for all its splits.

python scripts/inspect_data.py [--kind=latents] [--decode] \
    data/moving_digits/train data/moving_digits/test
"""

import os

from absl import flags

from predvdm_jax import cli
from predvdm_jax.data import hdf5

flags.DEFINE_enum("kind", "frames", ["frames", "latents"], "Frames (uint8) or a latent cache.")
flags.DEFINE_bool("decode", False, "Also read every frame: as long as one pass over the data.")
FLAGS = flags.FLAGS


def _splits(folders: list[str]) -> list[str]:
    """Each folder, or the splits of a dataset folder that holds no shards itself."""
    splits = []
    for folder in folders:
        inside = [] if hdf5.shard_paths(folder) else hdf5.split_dirs(folder)
        splits += [os.path.join(folder, name) for name in inside] or [folder]
    return splits


def main(folders):
    for split_dir in _splits(folders):
        shards = hdf5.VideoShards(split_dir, FLAGS.kind, kind_flag="--kind")
        shards.check_all_frames()
        if FLAGS.decode:
            shards.check_decodes(progress=True)
        print(shards.summary())


if __name__ == "__main__":
    cli.run(main, args="split or dataset folders, e.g. data/moving_digits/train")

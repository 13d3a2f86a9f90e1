"""Checks every frame of one or more dataset split folders (HDF5 metadata only: presence,
shape, dtype), then prints each split's summary. ``--decode`` also reads every frame (one pass
over the data) to find corrupt compressed chunks and, in a latent cache, NaN/Inf.

python scripts/inspect_data.py [--kind=latents] [--decode] \
    data/moving_digits/train data/moving_digits/test
"""

from absl import flags

from predvdm_jax import cli
from predvdm_jax.data import hdf5

flags.DEFINE_enum("kind", "frames", ["frames", "latents"], "Frames (uint8) or a latent cache.")
flags.DEFINE_bool("decode", False, "Also read every frame: as long as one pass over the data.")
FLAGS = flags.FLAGS


def main(split_dirs):
    for split_dir in split_dirs:
        shards = hdf5.VideoShards(split_dir, FLAGS.kind, kind_flag="--kind")
        shards.check_all_frames()
        if FLAGS.decode:
            shards.check_decodes(progress=True)
        print(shards.summary())


if __name__ == "__main__":
    cli.run(main, args="split folders, e.g. data/moving_digits/train")

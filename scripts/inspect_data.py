"""Checks every frame of one or more dataset split folders (HDF5 metadata only: presence,
shape, dtype), then prints each split's summary. ``--decode`` also reads every frame (one pass
over the data) to find corrupt compressed chunks and, in a latent cache, NaN/Inf.

python scripts/inspect_data.py [--kind=latents] [--decode] \
    data/moving_digits/train data/moving_digits/test
"""

import sys

from absl import app, flags

from predvdm_jax.data import hdf5

flags.DEFINE_enum("kind", "frames", ["frames", "latents"], "Frames (uint8) or a latent cache.")
flags.DEFINE_bool("decode", False, "Also read every frame: as long as one pass over the data.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) < 2:
        sys.exit("error: give one or more split folders, e.g. data/moving_digits/train")
    for split_dir in argv[1:]:
        try:
            shards = hdf5.VideoShards(split_dir, FLAGS.kind)
            shards.check_all_frames()
            if FLAGS.decode:
                shards.check_decodes(progress=True)
            print(shards.summary())
        except hdf5.DatasetError as e:
            sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)

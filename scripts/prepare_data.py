"""Converts a published benchmark, or your own videos, into the HDF5 video format (docs/data.md).

  python scripts/prepare_data.py --dataset=kth --src=/data/kth_zips --out=data/KTH_h5
  python scripts/prepare_data.py --dataset=smmnist --src=/data/mnist.npz --out=data/SMMNIST_h5
  python scripts/prepare_data.py --dataset=tfds:moving_mnist --tfds_key=image_sequence \
      --src=~/tensorflow_datasets --out=data/moving_mnist_tfds
  python scripts/prepare_data.py --dataset=videos --src=my_videos --out=data/mine --gray

``--dataset=videos`` converts your own: one sub-folder of --src per split (train/, test/ …),
each holding video files (GIF/MP4/AVI …) and folders of frame images, one video each.

Re-running the same command resumes an interrupted conversion.
"""

from absl import flags

from predvdm_jax import cli
from predvdm_jax.data import converters

flags.DEFINE_string("dataset", None, f"One of {sorted(converters.CONVERTERS)} or tfds:NAME.")
flags.DEFINE_string("src", "", "Downloaded source (folder or file; for tfds: the data_dir).")
flags.DEFINE_string("out", None, "Output folder; gets one sub-folder per split.")
flags.DEFINE_integer(
    "vids_per_shard",
    converters.common.DEFAULT_VIDS_PER_SHARD,
    "Videos per shard_NNNN.hdf5 (also the unit of resuming).",
)
flags.DEFINE_integer("num_workers", 4, "Threads decoding videos ahead of the writer.")
flags.DEFINE_enum("kth_split", None, ["mcvd", "rvd"], "KTH persons split (default mcvd).")
flags.DEFINE_enum("kth_crop", None, ["squash", "center"], "KTH resize (default squash).")
flags.DEFINE_integer("num_digits", None, "SMMNIST digits per video (default 3; MCVD used 2).")
flags.DEFINE_integer("num_train", None, "SMMNIST training videos (default 60000).")
flags.DEFINE_integer("num_test", None, "SMMNIST test videos (default 256).")
flags.DEFINE_integer("seed", None, "SMMNIST seed (default 0).")
flags.DEFINE_integer("ucf_split", None, "UCF-101 official split 1, 2 or 3 (default 1).")
flags.DEFINE_enum("ucf_crop", None, ["squash", "center"], "UCF-101 resize (default squash).")
flags.DEFINE_integer(
    "image_size", None, "Output frame size (KTH/UCF/videos 64, Cityscapes 128).", lower_bound=1
)
flags.DEFINE_bool("gray", None, "videos: store gray frames (default: RGB).")
flags.DEFINE_bool(
    "verify_crc",
    None,
    "BAIR: check every record's CRC32C (default: when the crc32c package is installed).",
)
flags.DEFINE_string("tfds_key", None, "TFDS video feature, e.g. image_sequence.")
flags.DEFINE_list("tfds_splits", None, "TFDS splits to convert (default: all).")
flags.DEFINE_bool("tfds_download", None, "Download and prepare the TFDS dataset first.")
flags.mark_flags_as_required(["dataset", "out"])
FLAGS = flags.FLAGS

_OPTION_FLAGS = (
    "kth_split",
    "kth_crop",
    "num_digits",
    "num_train",
    "num_test",
    "seed",
    "ucf_split",
    "ucf_crop",
    "image_size",
    "gray",
    "verify_crc",
    "tfds_key",
    "tfds_splits",
    "tfds_download",
)


def main():
    if FLAGS.seed is not None and FLAGS.seed < 0:  # before anything is written
        cli.fail(f"--seed must be >= 0, got {FLAGS.seed}")
    options = converters.select_options(
        FLAGS.dataset,
        {name: FLAGS[name].value for name in _OPTION_FLAGS},
        given=[name for name in _OPTION_FLAGS if FLAGS[name].present],
    )
    summary = converters.convert(
        FLAGS.dataset,
        FLAGS.src,
        FLAGS.out,
        vids_per_shard=FLAGS.vids_per_shard,
        num_workers=FLAGS.num_workers,
        **options,
    )
    print(summary)


if __name__ == "__main__":
    cli.run(main)

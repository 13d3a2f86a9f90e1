"""Encode every split of an HDF5 frame dataset with a frozen VQ into a latent cache.

  python scripts/encode_dataset.py --config=configs/vq_digits_demo.py \
      --vq_params=runs/vq_digits_demo/vq_params.safetensors \
      --src=data/moving_digits --out=data/moving_digits_latents --dtype=float16

Every sub-folder of --src holding shard files (train/, test/, ...) becomes the same sub-folder of
--out, with the same videos and frame counts and (h, w, c) latent frames. Run it again to resume
an interrupted cache. Then set data.latent_train_dir / data.latent_test_dir (and
data.latent_val_dir for a val/ split) to the new folders, and train with the scale_factor it
printed.

The latents are stored × scale_factor (the config's, or with --unit_std 1 / their std on
clips of the train/ split, LDM's scale_by_std: a VQ of your own rarely has unit-std latents).
"""

import os

from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib
from predvdm_jax.data.hdf5 import DatasetError, shard_paths, split_dirs
from predvdm_jax.data.latent_cache import (
    check_output,
    check_output_folder,
    encode_split,
    unit_std_scale_factor,
)
from predvdm_jax.interop.params import load_vq_params, with_recorded_vq

config_flags.DEFINE_config_file(
    "config", None, "Experiment config (its vq section and scale_factor)."
)
flags.DEFINE_string("vq_params", None, "VQ params (.safetensors); default: the config's vq_params.")
flags.DEFINE_string("src", None, "Frame dataset folder (holds train/, test/, ...).")
flags.DEFINE_string("out", None, "Output folder for the latent cache.")
flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "Stored latent dtype.")
flags.DEFINE_integer("batch_frames", 256, "Frames per encoder call.")
flags.DEFINE_bool(
    "unit_std",
    False,
    "Encode with scale_factor = 1 / std of the latents of 32 clips of the train split (LDM's "
    "scale_by_std) instead of the config's; train with the value it prints.",
)
flags.mark_flags_as_required(["config", "src", "out"])
FLAGS = flags.FLAGS


def _splits(src: str) -> list[str]:
    if not os.path.isdir(src):
        raise DatasetError(
            f"--src {src!r} is not a folder; make the dataset first "
            f"(scripts/make_moving_digits.py or scripts/prepare_data.py)."
        )
    names = split_dirs(src)
    if not names and shard_paths(src):
        parent = os.path.dirname(os.path.abspath(src))
        raise DatasetError(
            f"--src {src!r} is a split folder (it holds shard files); pass the dataset folder "
            f"that holds the splits: --src={parent}"
        )
    if not names:
        raise DatasetError(f"--src {src!r} holds no split folders with shard files.")
    return names


READ_FIELDS = (
    "vq",
    "vq_params",
    "vq_chunk",
    "scale_factor",
    "data.image_size",
    "data.channels",
    "model.dtype",
)
"""The config fields the encoder reads (the frames' folders are --src and --out)."""
FOLDER_FIELDS = (
    "train_dir",
    "test_dir",
    "val_dir",
    "latent_train_dir",
    "latent_test_dir",
    "latent_val_dir",
)


def main():
    overrides = config_flags.get_override_values(FLAGS["config"])
    cli.reject_unread_overrides(
        overrides,
        READ_FIELDS if FLAGS.vq_params is None else set(READ_FIELDS) - {"vq_params"},
        ": encode_dataset.py reads the VQ, its params, scale_factor, vq_chunk, model.dtype "
        "and the frames' data.image_size and data.channels",
        {
            **{f"data.{name}": "--src and --out name the folders" for name in FOLDER_FIELDS},
            "vq_params": "--vq_params sets it",
        },
    )
    if FLAGS.unit_std and "scale_factor" in overrides:
        cli.fail("--unit_std measures scale_factor: drop --config.scale_factor")
    check_output_folder(FLAGS.src, FLAGS.out)  # before any work
    splits = _splits(FLAGS.src)
    params_path = FLAGS.vq_params or FLAGS.config.vq_params
    if not params_path:
        raise ValueError("no VQ params: pass --vq_params or set config.vq_params")
    # The VQ architecture and frame size train_vq.py recorded in the file (overrides win).
    config = config_lib.validate(with_recorded_vq(FLAGS.config, params_path, overrides))
    vq_params = load_vq_params(
        params_path, config, "--vq_params" if FLAGS.vq_params else "config.vq_params"
    )
    if FLAGS.unit_std:
        measured_on = os.path.join(FLAGS.src, "train" if "train" in splits else splits[0])
        config = config_lib.with_overrides(
            config, {"scale_factor": unit_std_scale_factor(config, vq_params, measured_on)}
        )
    for split in splits:  # every split's --out folder is checked before any is written
        check_output(
            config,
            vq_params,
            os.path.join(FLAGS.src, split),
            os.path.join(FLAGS.out, split),
            dtype=FLAGS.dtype,
            vq_params_path=params_path,
        )
    for split in splits:
        out_dir = os.path.join(FLAGS.out, split)
        written = encode_split(
            config,
            vq_params,
            os.path.join(FLAGS.src, split),
            out_dir,
            dtype=FLAGS.dtype,
            batch_frames=FLAGS.batch_frames,
            vq_params_path=params_path,
        )
        print(f"{split}: wrote {written} shard(s) to {out_dir}")
    print(
        f"latents stored x scale_factor {config.scale_factor!r}: train with "
        f"--config.scale_factor={config.scale_factor!r}"
    )


if __name__ == "__main__":
    cli.run(main)

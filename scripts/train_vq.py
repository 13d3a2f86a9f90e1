"""Train the VQ-f4 first stage (VQGAN objective) on an HDF5 frame dataset.

  python scripts/train_vq.py --config=configs/vq_digits_demo.py --workdir=runs/vq_digits_demo \
      [--config.vq_train.num_steps=2000]

Resumes from the newest checkpoint in --workdir. Writes --workdir/vq_params.safetensors
(point config.vq_params at it) and --workdir/vq_eval.json (test PSNR/SSIM, codebook usage).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from predvdm_jax import config as config_lib
from predvdm_jax.data.hdf5 import DatasetError
from predvdm_jax.training import loop, mesh, vq_trainer

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the trained VQ params.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mesh.initialize_distributed()
    try:
        config = config_lib.validate(FLAGS.config)
        result = vq_trainer.train_vq(config, FLAGS.workdir)
    except (config_lib.ConfigError, DatasetError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    except loop.TrainingPreempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.parse_flags)

"""Train the VQ-f4 first stage (VQGAN objective) on an HDF5 frame dataset.

  python scripts/train_vq.py --config=configs/vq_digits_demo.py --workdir=runs/vq_digits_demo \
      [--config.vq_train.num_steps=2000]

Resumes from the newest checkpoint in --workdir. Writes --workdir/vq_params.safetensors
(point config.vq_params at it: the run records that path and prints the flags that use it) and
--workdir/vq_eval.json (test PSNR/SSIM, codebook usage).
"""

import jax
from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib, mesh
from predvdm_jax.training import vq_trainer

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and the trained VQ params.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main():
    cli.reject_unread_overrides(
        config_flags.get_override_values(FLAGS["config"]),
        vq_trainer.READ_FIELDS,
        " in VQ training, which reads --config.vq.*, --config.vq_train.*, --config.mesh.*, the "
        "data fields it trains on and a few others (vq_trainer.READ_FIELDS)",
        vq_trainer.unread_hints(FLAGS.workdir),
    )
    mesh.initialize_distributed()
    result = vq_trainer.train_vq(config_lib.validate(FLAGS.config), FLAGS.workdir)
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )
    if jax.process_index() == 0:
        print(next_step(FLAGS.workdir))


def next_step(workdir: str) -> str:
    """The line naming the written VQ params and the flags that use them next."""
    path = vq_trainer.params_path(workdir)
    return (
        f"VQ params written to {path}; use them with --config.vq_params={path} (train.py) or "
        f"--vq_params={path} (encode_dataset.py, evaluate.py)"
    )


if __name__ == "__main__":
    cli.run(main)

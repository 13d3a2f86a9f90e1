"""Trains the PredVDM denoiser; resumes from the newest checkpoint in --workdir.

  python scripts/train.py --config=configs/kth64.py --workdir=runs/kth64 \
      [--config.data.batch_size=64 --config.mesh.fsdp=4 ...]

Multi-host: start one process per TPU host, or per GPU, with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID set (or JAX_AUTO_DISTRIBUTED=1 on TPU pods / SLURM).

On SIGTERM (preemption) it saves the current step and exits with status 143;
the same command resumes.
"""

from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib, mesh
from predvdm_jax.data.latent_cache import other_source
from predvdm_jax.training import diffusion_trainer

config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. configs/kth64.py.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and TensorBoard events go here.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main():
    overrides = config_flags.get_override_values(FLAGS["config"])
    cli.reject_unread_overrides(
        overrides,
        cli.fields_except("vq_train"),
        " in denoiser training (the VQ trains with scripts/train_vq.py)",
    )
    cached, frames = FLAGS.config.data.latent_train_dir, FLAGS.config.data.train_dir
    # Overridden frames must be those of the cache the batches come from (not, say, the demo's).
    source = cached and "data.train_dir" in overrides and other_source(cached, frames)
    if source:
        cli.fail(
            f"--config.data.train_dir={frames} is not what the batches come from: they come from "
            f"data.latent_train_dir={cached}, encoded from {source}. Encode {frames} "
            f"(scripts/encode_dataset.py) and pass its cache as --config.data.latent_train_dir, "
            f"or add --config.data.latent_train_dir= to encode every batch in the step"
        )
    mesh.initialize_distributed()
    diffusion_trainer.train(config_lib.validate(FLAGS.config), FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)

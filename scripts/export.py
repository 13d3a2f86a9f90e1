"""Exports a training run's checkpoint: as an inference bundle, or back to PredVDM's format.

  python scripts/export.py --workdir=runs/kth64 --out=bundles/kth64 [--step=N] [--nouse_ema]
  python scripts/export.py --workdir=runs/kth64 --predvdm_ckpt=exports/kth64.ckpt

A bundle (EMA denoiser + VQ + config) loads anywhere with
`predvdm_jax.interop.bundle.load_bundle(path)`; scripts/sample.py and scripts/evaluate.py take
it as --bundle. `--predvdm_ckpt` writes the whole PredVDM `LatentDiffusion` state_dict (raw and
EMA denoiser, VQ as first and cond stage, schedule buffers) in a Lightning checkpoint's layout
(`.ckpt`, needs PyTorch), which the PyTorch original loads, or as `.safetensors`.

Launched as several JAX processes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID,
or JAX_AUTO_DISTRIBUTED=1) it is one job: every process reads its part of the checkpoint and
process 0 writes each file once.
"""

import jax
from absl import flags

from predvdm_jax import atomic_io, cli, mesh
from predvdm_jax.training import checkpoint

flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_string("out", None, "Bundle folder to write (replaced atomically if it exists).")
flags.DEFINE_string(
    "predvdm_ckpt", None, "PredVDM checkpoint file to write (.ckpt / .pt / .safetensors)."
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest finished one).")
flags.DEFINE_bool("use_ema", True, "Bundle the EMA weights (PredVDM samples with them).")
flags.DEFINE_string(
    "vq_params",
    None,
    "VQ params file, when the one the run recorded (its config.vq_params) has moved.",
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main():
    if not (FLAGS.out or FLAGS.predvdm_ckpt):
        cli.fail("nothing to write: pass --out (a bundle) and/or --predvdm_ckpt")
    if not FLAGS.out:  # the PredVDM checkpoint holds both the raw and the EMA weights
        cli.reject_flags(["use_ema"], "without --out")
    # Both paths before either is written.
    if FLAGS.out and FLAGS.predvdm_ckpt and atomic_io.is_inside(FLAGS.predvdm_ckpt, FLAGS.out):
        cli.fail(
            f"--predvdm_ckpt {FLAGS.predvdm_ckpt} is in --out {FLAGS.out}, the bundle folder "
            f"this export writes; nothing was written. Pass a file path outside it"
        )
    if FLAGS.out:
        checkpoint.check_bundle_export_path(FLAGS.out, FLAGS.workdir)
    if FLAGS.predvdm_ckpt:
        checkpoint.check_export_path(FLAGS.predvdm_ckpt, FLAGS.workdir)
    mesh.initialize_distributed()
    report = print if jax.process_index() == 0 else lambda *args: None
    if FLAGS.out:
        exported = checkpoint.export_bundle(
            FLAGS.workdir, FLAGS.out, FLAGS.use_ema, FLAGS.step, FLAGS.vq_params
        )
        source = exported.source
        report(
            f"wrote {FLAGS.out} (step {source.step}, {source.weights} weights, config "
            f"{exported.config.name})"
        )
    if FLAGS.predvdm_ckpt:
        step, config = checkpoint.export_latent_diffusion_checkpoint(
            FLAGS.workdir, FLAGS.predvdm_ckpt, FLAGS.step, FLAGS.vq_params
        )
        report(
            f"wrote {FLAGS.predvdm_ckpt} (step {step}, raw and EMA weights); set "
            f"scale_factor: {config.scale_factor} in the PredVDM yaml"
        )
        target = config.diffusion.parameterization
        if target != "eps":
            report(
                f"this run predicts {target} (diffusion.parameterization), PredVDM's configs ε: "
                f"set parameterization: {target} in the yaml and check that its sampler reads "
                f"the model's output as {target}"
            )


if __name__ == "__main__":
    cli.run(main)

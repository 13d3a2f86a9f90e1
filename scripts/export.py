"""Exports a training run's checkpoint: as an inference bundle, or back to PredVDM's format.

  python scripts/export.py --workdir=runs/kth64 --out=bundles/kth64 [--step=N] [--noema]
  python scripts/export.py --workdir=runs/kth64 --predvdm_ckpt=exports/kth64.ckpt

A bundle (EMA denoiser + VQ + config) loads anywhere with
`predvdm_jax.interop.bundle.load_bundle(path)`; scripts/sample.py and scripts/evaluate.py take
it as --bundle. `--predvdm_ckpt` writes the whole PredVDM `LatentDiffusion` state_dict (raw and
EMA denoiser, VQ as first and cond stage, schedule buffers) in a Lightning checkpoint's layout
(`.ckpt`, needs PyTorch), which the PyTorch original loads, or as `.safetensors`.
"""

import os
import sys

from absl import app, flags

from predvdm_jax import folders
from predvdm_jax.interop import bundle
from predvdm_jax.training import checkpoint

flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_string("out", None, "Bundle folder to write (replaced atomically if it exists).")
flags.DEFINE_string(
    "predvdm_ckpt", None, "PredVDM checkpoint file to write (.ckpt / .pt / .safetensors)."
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest finished one).")
flags.DEFINE_bool("ema", True, "Bundle the EMA weights (PredVDM samples with them).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def _unsafe_predvdm_ckpt(path: str, workdir: str) -> str | None:
    """Why writing the export to ``path`` could destroy something, or None. Only a new path, or
    an earlier export (an existing ``.ckpt`` outside any bundle folder), may be written."""
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    checkpoints = os.path.join(workdir, folders.CHECKPOINT_DIR)
    if os.path.commonpath([checkpoints, real]) == checkpoints:
        return f"is inside the run's checkpoint folder {checkpoints}"
    if os.path.isdir(real):
        return "is a folder"
    if not os.path.exists(real):
        return None
    if folders.is_bundle(folder):
        return f"exists inside the bundle folder {folder}, whose file it would replace"
    if not real.endswith(".ckpt"):
        return "exists and is not an earlier export (.ckpt), so it is not replaced"
    return None


def main(argv):
    if len(argv) > 1:
        sys.exit(
            f"error: unexpected arguments {argv[1:]}; this script takes only flags (see --helpshort)"
        )
    if not (FLAGS.out or FLAGS.predvdm_ckpt):
        sys.exit("error: nothing to write: pass --out (a bundle) and/or --predvdm_ckpt")
    workdir = os.path.realpath(FLAGS.workdir)
    if FLAGS.out and os.path.commonpath([workdir, os.path.realpath(FLAGS.out)]) == workdir:
        sys.exit(
            f"error: --out {FLAGS.out} is inside --workdir {FLAGS.workdir}, where a bundle "
            f"could replace the run's checkpoints; pick a folder outside the workdir"
        )
    if FLAGS.predvdm_ckpt:
        problem = _unsafe_predvdm_ckpt(FLAGS.predvdm_ckpt, workdir)
        if problem:
            sys.exit(
                f"error: --predvdm_ckpt {FLAGS.predvdm_ckpt} {problem}; nothing was written. "
                f"Pass a new file path (e.g. exports/<run>.ckpt)."
            )
    try:
        if FLAGS.out:
            exported = checkpoint.load_from_checkpoint(
                FLAGS.workdir, use_ema=FLAGS.ema, step=FLAGS.step
            )
            bundle.save_bundle(FLAGS.out, exported)
            weights = "EMA" if FLAGS.ema else "raw"
            print(f"wrote {FLAGS.out} ({weights} weights, config {exported.config.name})")
        if FLAGS.predvdm_ckpt:
            step, scale_factor = checkpoint.export_latent_diffusion_checkpoint(
                FLAGS.workdir, FLAGS.predvdm_ckpt, FLAGS.step
            )
            print(
                f"wrote {FLAGS.predvdm_ckpt} (step {step}, raw and EMA weights); set "
                f"scale_factor: {scale_factor} in the PredVDM yaml"
            )
    except (OSError, ValueError, ImportError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)

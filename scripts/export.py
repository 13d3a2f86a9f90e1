"""Exports a training run's checkpoint as an inference bundle (EMA denoiser + VQ + config).

  python scripts/export.py --workdir=runs/kth64 --out=bundles/kth64 [--step=N] [--noema]

Load it anywhere with `predvdm_jax.interop.bundle.load_bundle(path)`; scripts/sample.py and
scripts/evaluate.py take it as --bundle.
"""

import sys

from absl import app, flags

from predvdm_jax.interop import bundle

flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
flags.DEFINE_string("out", None, "Bundle folder to write (replaced atomically if it exists).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest finished one).")
flags.DEFINE_bool("ema", True, "Export the EMA weights (PredVDM samples with them).")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        exported = bundle.load_from_checkpoint(FLAGS.workdir, use_ema=FLAGS.ema, step=FLAGS.step)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    bundle.save_bundle(FLAGS.out, exported)
    print(
        f"wrote {FLAGS.out} ({'EMA' if FLAGS.ema else 'raw'} weights, config {exported.config.name})"
    )


if __name__ == "__main__":
    app.run(main)

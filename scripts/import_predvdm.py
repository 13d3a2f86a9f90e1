"""Imports a checkpoint trained by the PyTorch original (PredVDM) as an inference bundle.

  python scripts/import_predvdm.py --ckpt=logs/kth64/checkpoints/last.ckpt \
      --config=configs/kth64.py --config.model.mode=tcct_para_attn --out=bundles/predvdm_kth64

The bundle holds the checkpoint's EMA denoiser (`model_ema.*`; `--nouse_ema` for `model.*`),
its VQ (`first_stage_model.*`) and the config, so scripts/sample.py and scripts/evaluate.py score
the original's model with this project's protocols (`--bundle=bundles/predvdm_kth64`). The
config must describe the run's yaml: the UNet and VQ shapes (a mismatch lists the offending
keys), `model.mode`, `diffusion.parameterization`, `data.cond_frames` / `pred_frames`, the
schedule (checked against the checkpoint's `betas`) and `scale_factor` (a file that
scripts/export.py --predvdm_ckpt wrote records them, and a config that differs is refused). Lightning `.ckpt` files that pickle Python objects
need `--allow_pickle` (it runs code from the file: trusted files only).
"""

from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib
from predvdm_jax.interop import bundle, predvdm_ckpt

flags.DEFINE_string("ckpt", None, "PredVDM checkpoint (.ckpt, bare state_dict or .safetensors).")
flags.DEFINE_string("out", None, "Bundle folder to write (replaced atomically if it exists).")
flags.DEFINE_bool(
    "use_ema", True, "Take the EMA weights (PredVDM samples and evaluates with them)."
)
flags.DEFINE_bool(
    "allow_pickle", False, "Read a pickle that holds Python objects (trusted files only)."
)
config_flags.DEFINE_config_file("config", None, "Config describing the run (configs/*.py).")
flags.mark_flags_as_required(["ckpt", "out", "config"])
FLAGS = flags.FLAGS


def main():
    config_lib.validate(FLAGS.config)
    imported, summary = predvdm_ckpt.bundle_from_predvdm_checkpoint(
        FLAGS.ckpt, FLAGS.config, use_ema=FLAGS.use_ema, allow_pickle=FLAGS.allow_pickle
    )
    bundle.save_bundle(FLAGS.out, imported)
    print(f"wrote {FLAGS.out}: {summary}")


if __name__ == "__main__":
    cli.run(main)

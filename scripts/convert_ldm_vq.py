"""Convert the LDM VQ-f4 first stage (or a PredVDM checkpoint's `first_stage_model.*`) to Flax params.

  python scripts/convert_ldm_vq.py --ckpt models/first_stage_models/vq-f4/model.ckpt \
      --out checkpoints/vq-f4.safetensors [--config configs/kth64.py] [--allow_pickle]

The output is a safetensors file of the flattened Flax param tree ('/'-joined keys such as
`encoder/down_0/block_1/conv1/kernel`, conv kernels HWIO, float32); read it back with
`predvdm_jax.interop.torch_checkpoint.load_params_safetensors`. The architecture is the config's `vq`
section, validated after the --config.* overrides; without --config, the config an export of
this project records (scripts/export.py --predvdm_ckpt), else the VQ-f4 defaults. The file is
written to a temporary name and then renamed.
"""

from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib
from predvdm_jax.interop import ldm_vq, predvdm_ckpt

flags.DEFINE_string(
    "ckpt",
    None,
    "PyTorch checkpoint: LDM model.ckpt, PredVDM .ckpt, bare state_dict or .safetensors.",
)
flags.DEFINE_string("out", None, "Output .safetensors path for the Flax params.")
flags.DEFINE_bool(
    "allow_pickle", False, "Read a pickle that holds Python objects (trusted files only)."
)
config_flags.DEFINE_config_file(
    "config", None, "Optional experiment config; its `vq` section sets the architecture."
)
flags.mark_flags_as_required(["ckpt", "out"])
FLAGS = flags.FLAGS


def main():
    if FLAGS.config is not None:
        cli.reject_unread_overrides(
            config_flags.get_override_values(FLAGS["config"]),
            ["vq"],
            ": the converter reads only the config's vq section (--config.vq.*)",
        )
    vq, source = None, ""
    if FLAGS.config is not None:
        vq = config_lib.validate(FLAGS.config).vq
    elif (recorded := predvdm_ckpt.recorded_config(FLAGS.ckpt)) is not None:
        vq, source = recorded.vq, " (the VQ of the config this export records)"
    summary = ldm_vq.convert_vq_checkpoint(
        FLAGS.ckpt, FLAGS.out, vq, allow_pickle=FLAGS.allow_pickle
    )
    print(f"wrote {FLAGS.out}: {summary['num_params']:,} parameters{source}")


if __name__ == "__main__":
    cli.run(main)

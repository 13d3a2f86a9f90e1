"""Converts LPIPS-AlexNet (v0.1) PyTorch weights into one Flax params file.

  python scripts/convert_lpips.py --alexnet=alexnet-owt-7be5be79.pth \
      --out=weights/lpips_alex_v0.1.safetensors [--allow_pickle]

--heads defaults to weights/v0.1/alex.pth of an installed `lpips` package
(pip install lpips==0.1.4 --no-deps). Needs PyTorch to read the .pth files. A file that pickles
Python objects needs --allow_pickle (it runs code from the file: trusted files only).
"""

from absl import flags

from predvdm_jax import cli
from predvdm_jax.interop import lpips_torch

flags.DEFINE_string(
    "alexnet", None, "torchvision AlexNet state_dict (.pth), or a full lpips.LPIPS state_dict."
)
flags.DEFINE_string(
    "heads",
    None,
    "lpips linear heads file (weights/v0.1/alex.pth); default: the installed lpips package's.",
)
flags.DEFINE_string("out", None, "Where to write the Flax params (.safetensors).")
flags.DEFINE_bool(
    "allow_pickle", False, "Read a pickle that holds Python objects (trusted files only)."
)
flags.mark_flags_as_required(["alexnet", "out"])
FLAGS = flags.FLAGS


def main():
    heads = FLAGS.heads or lpips_torch.find_lpips_heads_file()
    if heads is None:
        cli.fail(
            "no --heads given and no lpips package found; pip install lpips==0.1.4 --no-deps, "
            "or pass --heads=alex.pth"
        )
    lpips_torch.convert_lpips_files(
        FLAGS.alexnet, heads, FLAGS.out, allow_pickle=FLAGS.allow_pickle
    )
    print(f"wrote {FLAGS.out} (trunk {FLAGS.alexnet}, heads {heads})")


if __name__ == "__main__":
    cli.run(main)

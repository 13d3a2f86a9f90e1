"""Writes the moving-digits dataset (train/test HDF5 splits).

  python scripts/make_moving_digits.py --out=data/moving_digits
  python scripts/make_moving_digits.py --out=data/smmnist --mnist=/path/mnist.npz \
      --num_train=60000 --num_test=256 --num_digits=3 --test_digit_pool=256
"""

from absl import app, flags

from predvdm_jax.data import hdf5, moving_digits

flags.DEFINE_string("out", "data/moving_digits", "Output folder (gets train/ and test/).")
flags.DEFINE_string(
    "mnist",
    None,
    "mnist.npz or a folder of MNIST idx files; default: scikit-learn's 8x8 digits (offline).",
)
flags.DEFINE_integer("num_train", 2000, "Training videos.")
flags.DEFINE_integer("num_test", 256, "Test videos.")
flags.DEFINE_integer("num_digits", 2, "Digits per video.")
flags.DEFINE_integer("seq_len", 40, "Frames per video.")
flags.DEFINE_integer("seed", 0, "Base seed; every video is a function of (seed, split, index).")
flags.DEFINE_integer("test_digit_pool", None, "Use only the first N test digits (SMMNIST: 256).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    moving_digits.write_moving_digits(
        FLAGS.out,
        FLAGS.mnist,
        FLAGS.num_train,
        FLAGS.num_test,
        FLAGS.num_digits,
        FLAGS.seq_len,
        FLAGS.seed,
        FLAGS.test_digit_pool,
    )
    for split in ("train", "test"):
        print(hdf5.VideoShards(f"{FLAGS.out}/{split}").summary())


if __name__ == "__main__":
    app.run(main)

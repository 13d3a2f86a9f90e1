"""Writes the embedded moving-digits dataset (train/test HDF5 splits) from scikit-learn's digits.

  python scripts/make_moving_digits.py --out=data/moving_digits

Works offline; the demo and the digits configs train on it. Stochastic Moving MNIST from real
MNIST digits is a benchmark conversion:

  python scripts/prepare_data.py --dataset=smmnist --src=/path/mnist.npz --out=data/SMMNIST_h5
"""

from absl import flags

from predvdm_jax import cli
from predvdm_jax.data import hdf5, moving_digits

flags.DEFINE_string("out", "data/moving_digits", "Output folder (gets train/ and test/).")
flags.DEFINE_integer("num_train", 2000, "Training videos.")
flags.DEFINE_integer("num_test", 256, "Test videos.")
flags.DEFINE_integer("num_digits", 2, "Digits per video.")
flags.DEFINE_integer("seq_len", 40, "Frames per video.")
flags.DEFINE_integer("seed", 0, "Base seed; every video is a function of (seed, split, index).")
FLAGS = flags.FLAGS


def main():
    if FLAGS.seed < 0:  # before anything is written (numpy refuses it only per video)
        cli.fail(f"--seed must be >= 0, got {FLAGS.seed}")
    moving_digits.write_moving_digits(
        FLAGS.out,
        num_train=FLAGS.num_train,
        num_test=FLAGS.num_test,
        num_digits=FLAGS.num_digits,
        seq_len=FLAGS.seq_len,
        seed=FLAGS.seed,
    )
    for split in ("train", "test"):
        print(hdf5.VideoShards(f"{FLAGS.out}/{split}").summary())


if __name__ == "__main__":
    cli.run(main)

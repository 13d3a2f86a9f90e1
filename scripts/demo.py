"""The main job: moving digits → VQ-f4 → latent cache → PredVDM → predictions → evaluation.

  python scripts/demo.py                      # everything in runs/demo (resumes if interrupted)
  python scripts/demo.py --config.train.num_steps=20000   # trains runs/demo on, re-evaluates
  python scripts/demo.py --workdir=runs/demo2 --config.train.num_steps=3000

A workdir whose VQ or denoiser was trained with other settings is refused, naming them, and
a smaller train.num_steps keeps the denoiser trained longer: other settings need a new
--workdir, as in the last line.

Writes runs/demo/report.md (numbers against copy-last-frame and the VQ floor,
per_frame.png, ground truth | prediction GIFs). CPU-sized: about 6–10 minutes on 2 cores.
"""

import os

from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib
from predvdm_jax import demo

config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "digits_demo.py"),
    "Demo config.",
    lock_config=True,
)
flags.DEFINE_string("workdir", "runs/demo", "Everything the demo makes goes here.")
flags.DEFINE_integer("num_train", 500, "Training videos of moving digits.", lower_bound=1)
flags.DEFINE_integer("num_test", 256, "Test videos of moving digits.", lower_bound=1)
flags.DEFINE_integer("long_clips", 16, "Test clips for the 10 -> 30 rollout.", lower_bound=1)
flags.DEFINE_integer(
    "fvd_clips", 8, "Test clips for FVD (I3D costs ~0.3 s per frame on a CPU).", lower_bound=1
)
flags.DEFINE_bool("progress", True, "Show progress bars.")
FLAGS = flags.FLAGS


def main():
    cli.reject_unread_overrides(
        config_flags.get_override_values(FLAGS["config"]),
        cli.fields_except(*demo.SET_BY_DEMO),
        " in the demo",
        demo.SET_BY_DEMO,
    )
    numbers = demo.run_demo(
        config_lib.validate(FLAGS.config),
        FLAGS.workdir,
        num_train=FLAGS.num_train,
        num_test=FLAGS.num_test,
        long_clips=FLAGS.long_clips,
        fvd_clips=FLAGS.fvd_clips,
        progress=FLAGS.progress,
    )
    print(
        f"done in {numbers['total_seconds'] / 60:.1f} min; report: "
        f"{demo.demo_paths(FLAGS.workdir)['report']}"
    )


if __name__ == "__main__":
    cli.run(main)

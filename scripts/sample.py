"""Predicts future frames with a trained model and writes ground truth | prediction videos.

  # test clips of the model's dataset (fixed seeded windows), 10 -> 30 frames:
  python scripts/sample.py --workdir=runs/kth64 --num_frames=30 --num_clips=8 --out=samples/kth
  # a given checkpoint step of the run, its raw (not EMA) weights:
  python scripts/sample.py --workdir=runs/kth64 --step=20000 --nouse_ema --out=samples/kth_raw
  # your own video (a GIF/MP4 file or a folder of frames), from an exported bundle:
  python scripts/sample.py --bundle=bundles/kth64 --video=my_clip.mp4 --num_frames=30 --out=samples/mine

Writes OUT/video_NNNN.gif (+ .mp4 with imageio-ffmpeg), OUT/grid.png and OUT/sample.json (what
ran: the model with its step and weights, sampler, seed, clips, frames and input; a rerun
replaces it). A video's frames after the conditioning frames are its ground-truth half, blank
where the video ends. Sampler settings come from the model's config; override them with
--config.sampling.sampler=dpm_solver_pp --config.sampling.steps=20 etc. Clips are predicted
--config.eval.batch_size at a time, split over every device of this host. It runs as one
process: launched as several JAX processes (JAX_NUM_PROCESSES, JAX_AUTO_DISTRIBUTED) it stops
with an error, writing nothing.
"""

import json
import os

import jax
from absl import flags
from ml_collections import config_flags

from predvdm_jax import atomic_io, cli, mesh
from predvdm_jax.config import SEED_LIMIT
from predvdm_jax.evaluation import report, sampling, sweep
from predvdm_jax.seeds import prng_key
from predvdm_jax.training import checkpoint

cli.define_overrides_flag("Overrides of the model's config, e.g. --config.sampling.steps=20.")
flags.DEFINE_string("bundle", None, "Exported bundle folder (scripts/export.py).")
flags.DEFINE_string(
    "workdir",
    None,
    "Training workdir: samples with its newest checkpoint's EMA weights (see --step, --nouse_ema).",
)
flags.DEFINE_bool(
    "use_ema", True, "With --workdir: sample with the EMA weights (else the raw ones)."
)
flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
flags.DEFINE_string(
    "video", None, "A video file or folder of frames to continue (default: test clips)."
)
flags.DEFINE_integer(
    "num_frames", None, "Frames to predict (default: config eval.pred_frames).", lower_bound=1
)
flags.DEFINE_integer("num_clips", 8, "Test clips to predict (without --video).", lower_bound=1)
flags.DEFINE_integer(
    "seed",
    0,
    "Sampling seed, in [0, 2**63) like the config's seeds.",
    lower_bound=0,
    upper_bound=SEED_LIMIT - 1,
)
flags.DEFINE_integer(
    "fps",
    10,
    "Frames per second of the written videos (GIF delays are whole 1/100 s and browsers slow "
    "delays under 2/100 s down, so at most 50).",
    lower_bound=1,
    upper_bound=50,
)
flags.DEFINE_string("out", None, "Output folder.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def _reject_unread_overrides(overrides):
    """Refuses the ``--config.*`` overrides that sampling does not read: its flags replace
    ``seed`` and ``eval.num_clips``, --num_frames ``eval.pred_frames``, --video the test clips."""
    replaced = {"seed": "--seed sets the sampling key", "eval.num_clips": "--num_clips sets it"}
    if FLAGS.num_frames:
        replaced["eval.pred_frames"] = "--num_frames sets it"
    if FLAGS.video:
        replaced.update(
            dict.fromkeys(("data.test_dir", "eval.seed"), "--video replaces the test clips")
        )
    reads = cli.MODEL_FIELDS + ("eval.batch_size", "eval.pred_frames", "data.test_dir", "eval.seed")
    cli.reject_unread_overrides(
        overrides,
        [field for field in reads if field not in replaced],
        f" in sample.py, which reads only {cli.MODEL_FIELDS_TEXT}, --config.eval.batch_size, "
        "--config.eval.pred_frames (without --num_frames), --config.data.test_dir and "
        "--config.eval.seed (the test clips, without --video)",
        {**cli.INFERENCE_HINTS, **replaced},
    )


RECORD_FILE = "sample.json"


def _record(
    source: checkpoint.ModelSource, config, num_clips: int, num_frames: int, known: int
) -> dict:
    """What ``OUT/sample.json`` holds: the model, sampler, seed, clips, frames and input."""
    if FLAGS.video:
        clips = {"video": os.path.abspath(FLAGS.video)}
    else:
        clips = {"test_dir": config.data.test_dir, "clip_seed": int(config.eval.seed)}
    return {
        "model": source,
        "step": source.step,
        "weights": source.weights or "unknown (the bundle records no source)",
        "sampler": sweep.sampler_description(config.sampling),
        "sampling": config.sampling.to_dict(),
        "seed": FLAGS.seed,
        "num_clips": num_clips,
        "cond_frames": int(config.data.cond_frames),
        "pred_frames": num_frames,
        "ground_truth_frames": known,
        "input": clips,
        "fps": FLAGS.fps,
    }


def main():
    if (FLAGS.bundle is None) == (FLAGS.workdir is None):
        cli.fail("give exactly one of --bundle or --workdir")
    if FLAGS.video == "":
        cli.fail(
            "--video is empty; pass a video file or a folder of frames, or leave --video out "
            "to predict test clips"
        )
    if FLAGS.video:
        cli.reject_flags(["num_clips"], "with --video (it picks test clips)")
    overrides = config_flags.get_override_values(FLAGS["config"])
    _reject_unread_overrides(overrides)
    report.check_output_dir(FLAGS.out, example="samples/<name>")
    mesh.initialize_distributed()  # so that a launch as several processes is seen, and refused
    if jax.process_count() > 1:
        cli.fail(
            f"sample.py runs as one process (it splits the clips over that host's devices), not "
            f"as {jax.process_count()}; launch it once, without JAX_NUM_PROCESSES or "
            f"JAX_AUTO_DISTRIBUTED (scripts/evaluate.py runs as several processes)"
        )
    bundle, source = checkpoint.load_model(
        FLAGS.bundle, FLAGS.workdir, overrides, use_ema=FLAGS.use_ema, step=FLAGS.step
    )
    print(f"model: {source}")
    cond, future, predicted, known = sampling.predict_test_clips_or_video(
        bundle,
        prng_key(FLAGS.seed),
        num_frames=FLAGS.num_frames,
        video=FLAGS.video,
        num_clips=FLAGS.num_clips,
    )
    written = report.write_videos(
        FLAGS.out, future, predicted, cond, fps=FLAGS.fps, max_videos=len(predicted)
    )
    if known < len(predicted[0]):
        print(
            f"the video ends {known} frame(s) after the conditioning frames: the ground-truth "
            f"half is blank (black) for the last {len(predicted[0]) - known} predicted frames"
        )
    for note in written["notes"]:
        print(note)
    record = _record(source, bundle.config, len(predicted), len(predicted[0]), known)
    record_path = os.path.join(FLAGS.out, RECORD_FILE)
    atomic_io.write_text(record_path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(written['gif'])} GIF(s), {len(written['mp4'])} MP4(s), {written['grid']} "
        f"and {record_path}"
    )


if __name__ == "__main__":
    cli.run(main)

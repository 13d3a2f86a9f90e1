"""Evaluates a trained PredVDM model (or only its VQ's baselines), or scores two folders of
videos, and writes reports.

  # a training run's newest checkpoint (EMA weights), the MCVD protocol:
  python scripts/evaluate.py --workdir=runs/kth64 --protocol=mcvd --out=eval/kth64_mcvd
  # an exported bundle, 10 -> 40 frames, 256 clips x 100 samples (ExtDM):
  python scripts/evaluate.py --bundle=bundles/kth64 --protocol=extdm --pred_frames=40 \
      --out=eval/kth64_extdm --config.eval.lpips_params=weights/lpips_alex_v0.1.safetensors
  # one model under several samplers, on the same clips (OUT/<sampler>/ and OUT/sweep.md):
  python scripts/evaluate.py --bundle=bundles/kth64 --out=eval/kth64_samplers \
      --sweep="steps=10;steps=100;eta=0,steps=20;sampler=dpm_solver_pp,steps=20"
  # no model: the baselines only (copy last frame, VQ reconstruction), the VQ's floor:
  python scripts/evaluate.py --vq_params=runs/vq_kth/vq_params.safetensors --protocol=mcvd \
      --config.data.test_dir=data/KTH/test --config.data.cond_frames=10 --out=eval/kth64_vq
  # two HDF5 splits of videos paired by index (the first 10 frames are conditioning), e.g.
  # another method's predictions written with predvdm_jax.data.hdf5.write_split:
  python scripts/evaluate.py --real_dir=data/KTH/test --fake_dir=other_model/kth_test_h5 \
      --cond_frames=10 --out=eval/folders

Writes OUT/metrics.json (every number with its protocol), OUT/metrics.md,
OUT/per_frame.png and OUT/videos/; with --save_predictions also OUT/predictions/ (every
predicted clip as HDF5 splits, for re-scoring). A stopped model evaluation resumes when the
same command is rerun (OUT/progress/ keeps its finished batches until the reports are
written). ``--config.<field>=value`` overrides fields
of the run's config (e.g. ``--config.data.test_dir``, ``--config.eval.batch_size``,
``--config.sampling.steps``). See docs/evaluation.md.
"""

import jax
from absl import flags
from ml_collections import config_flags

from predvdm_jax import cli, config as config_lib, mesh
from predvdm_jax.evaluation import predictions as predictions_lib
from predvdm_jax.evaluation import protocol as protocol_lib
from predvdm_jax.evaluation import report
from predvdm_jax.evaluation import run as run_lib
from predvdm_jax.evaluation import sweep as sweep_lib
from predvdm_jax.interop.params import load_vq_params, with_recorded_vq
from predvdm_jax.training import checkpoint

cli.define_overrides_flag(
    "Overrides of the model's config: --config.eval.batch_size=64 --config.data.test_dir=...",
    source="the saved model's (--workdir or --bundle), or the defaults when scoring folders "
    "or evaluating a VQ (--vq_params)",
)
flags.DEFINE_string("bundle", None, "Exported inference bundle folder (scripts/export.py).")
flags.DEFINE_string("workdir", None, "Training workdir: evaluates its newest checkpoint.")
flags.DEFINE_string(
    "vq_params",
    None,
    "VQ params file (scripts/train_vq.py's WORKDIR/vq_params.safetensors): no model, only the "
    "copy-last-frame and VQ-reconstruction baselines (the first stage's floor); the VQ's "
    "architecture and frame size are those train_vq.py recorded in the file (else the "
    "defaults, LDM's vq-f4), with --config.vq.* / --config.data.* overrides.",
)
flags.DEFINE_bool("use_ema", True, "With --workdir: evaluate the EMA weights (else the raw ones).")
flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step (default: the newest).")
flags.DEFINE_enum(
    "protocol",
    None,
    sorted(protocol_lib.PRESETS),
    "predvdm (1 sample, mean), mcvd (10 samples, best-of-10 + mean), extdm "
    "(100 samples, best-of-100 + mean); default: config eval.protocol.",
)
flags.DEFINE_integer(
    "num_clips", None, "Test clips; default: config eval.num_clips.", lower_bound=1
)
flags.DEFINE_integer(
    "num_samples",
    None,
    "Samples per clip; default: the protocol's, or config eval.num_samples when set above 1.",
    lower_bound=1,
)
flags.DEFINE_integer(
    "pred_frames", None, "Frames to predict; default: config eval.pred_frames.", lower_bound=1
)
flags.DEFINE_integer("keep_videos", 8, "Sample videos written to OUT/videos.", lower_bound=0)
flags.DEFINE_string(
    "sweep",
    None,
    "Sampler settings to compare on the same clips and keys: ';'-separated entries of "
    "comma-separated config.sampling fields, e.g. 'steps=10;sampler=dpm_solver_pp,steps=20'.",
)
flags.DEFINE_bool(
    "save_predictions",
    False,
    "Also write every predicted clip (all samples, uint8) as HDF5 splits: OUT/predictions/real "
    "(the clips scored against) and OUT/predictions/sample_<s> (their cond frames, then sample "
    "s's prediction), video k being clip k; re-score one with --real_dir and --fake_dir. With "
    "--sweep, each sampler's in OUT/<sampler>/predictions.",
)
flags.DEFINE_string("real_dir", None, "HDF5 split of real videos (with --fake_dir).")
flags.DEFINE_string(
    "fake_dir", None, "HDF5 split of generated videos, paired with --real_dir by index."
)
flags.DEFINE_integer(
    "cond_frames",
    0,
    "With --real_dir: leading frames excluded from SSIM/PSNR/LPIPS.",
    lower_bound=0,
)
flags.DEFINE_integer(
    "num_frames", 0, "With --real_dir: frames per video (0: the shortest length).", lower_bound=0
)
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def _score_folders():
    config = config_lib.validate(FLAGS.config)
    metrics = run_lib.score_folders(
        FLAGS.real_dir,
        FLAGS.fake_dir,
        FLAGS.out,
        cond_frames=FLAGS.cond_frames,
        num_frames=FLAGS.num_frames,
        batch_size=min(config.eval.batch_size, 64),
        lpips_params=config.eval.lpips_params,
        i3d_params=config.eval.i3d_params,
        fvd=config.eval.fvd,
        fvd_resize=config.eval.fvd_resize,
        metric_style=config.eval.metric_style,
        keep_videos=FLAGS.keep_videos,
        show_progress=FLAGS.progress,
    )
    return metrics


def _evaluate_vq():
    overrides = config_flags.get_override_values(FLAGS["config"])
    config = config_lib.validate(with_recorded_vq(FLAGS.config, FLAGS.vq_params, overrides))
    vq_params = load_vq_params(FLAGS.vq_params, config, "--vq_params")
    protocol = protocol_lib.protocol_from_config(
        config, overrides, name=FLAGS.protocol, num_clips=FLAGS.num_clips
    )
    metrics = run_lib.evaluate_vq(
        config,
        vq_params,
        FLAGS.out,
        protocol=protocol,
        pred_frames=FLAGS.pred_frames or config.eval.pred_frames,
        source=f"VQ params {FLAGS.vq_params}",
        keep_videos=FLAGS.keep_videos,
        show_progress=FLAGS.progress,
    )
    if jax.process_index() == 0:
        print(report.markdown_table(metrics))
        print(f"wrote {FLAGS.out}/metrics.json")


def _evaluate_model():
    overrides = config_flags.get_override_values(FLAGS["config"])
    bundle, source = checkpoint.load_model(
        FLAGS.bundle, FLAGS.workdir, overrides, use_ema=FLAGS.use_ema, step=FLAGS.step
    )
    config = bundle.config
    protocol = protocol_lib.protocol_from_config(
        config,
        overrides,
        name=FLAGS.protocol,
        num_clips=FLAGS.num_clips,
        num_samples=FLAGS.num_samples,
    )
    samplings = (
        sweep_lib.parse_sweep(FLAGS.sweep, config)
        if FLAGS.sweep is not None
        else {protocol_lib.MODEL: config.sampling}
    )
    all_metrics = run_lib.evaluate_samplers(
        config,
        bundle.params,
        bundle.vq_params,
        FLAGS.out,
        samplings,
        protocol=protocol,
        pred_frames=FLAGS.pred_frames or config.eval.pred_frames,
        source=source,
        keep_videos=FLAGS.keep_videos,
        show_progress=FLAGS.progress,
        save_predictions=FLAGS.save_predictions,
    )
    if jax.process_index() != 0:  # process 0 wrote the reports
        return
    if FLAGS.sweep is None:
        print(report.markdown_table(all_metrics[protocol_lib.MODEL]))
        print(f"wrote {FLAGS.out}/metrics.json")
        if FLAGS.save_predictions:
            last = protocol.num_samples - 1
            samples = f"sample_0/ ... sample_{last}/" if last else "sample_0/"
            scoring = run_lib.scoring_settings(protocol, config)
            rescore = predictions_lib.rescore_command(FLAGS.out, config.data.cond_frames, scoring)
            print(
                f"wrote {FLAGS.out}/predictions/ (real/, {samples}, clips.json); re-score a "
                f"sample with {rescore} --out=<another folder>"
            )
    else:
        print(sweep_lib.sweep_table(all_metrics))
        print(f"wrote {FLAGS.out}/sweep.md and one folder per sampler")
        if FLAGS.save_predictions:
            print(f"wrote each sampler's predictions to {FLAGS.out}/<sampler>/predictions/")


# Flags that choose and score a model, and flags that describe the folders' videos: each
# set does nothing in the other mode.
MODEL_FLAGS = (
    "bundle",
    "workdir",
    "use_ema",
    "step",
    "protocol",
    "num_clips",
    "num_samples",
    "pred_frames",
    "save_predictions",
)
FOLDER_FLAGS = ("cond_frames", "num_frames")
# What a VQ-only evaluation (--vq_params) does not read: the model's, and the samples'.
VQ_UNREAD_FLAGS = ("bundle", "workdir", "use_ema", "step", "num_samples", "save_predictions")
EVAL_CONFIG_FIELDS = (
    "data.test_dir",
    "eval.batch_size",
    "eval.seed",
    "eval.gray_as_rgb",
    "eval.lpips_params",
    "eval.i3d_params",
    "eval.fvd",
    "eval.fvd_resize",
    "eval.metric_style",
    "eval.mcvd_style",
    "eval.protocol",
    "eval.num_clips",
    "eval.pred_frames",
)
"""The config fields that evaluating test clips reads, with a model or the VQ alone."""
VQ_CONFIG_FIELDS = (
    "vq",
    "vq_chunk",
    "data.image_size",
    "data.channels",
    "data.cond_frames",
) + EVAL_CONFIG_FIELDS
# The config fields that scoring folders reads; other --config.* overrides would do nothing.
FOLDER_CONFIG_FIELDS = (
    "eval.batch_size",
    "eval.lpips_params",
    "eval.i3d_params",
    "eval.fvd",
    "eval.fvd_resize",
    "eval.metric_style",
)
# The config fields that evaluating a model reads, and the flags that replace some of them.
MODEL_CONFIG_FIELDS = cli.MODEL_FIELDS + EVAL_CONFIG_FIELDS + ("eval.num_samples",)
FLAG_FIELDS = {
    "protocol": "eval.protocol",
    "num_clips": "eval.num_clips",
    "num_samples": "eval.num_samples",
    "pred_frames": "eval.pred_frames",
}


def _reject_unread_overrides(overrides, folders, vq_only=False):
    """Refuses the ``--config.*`` overrides that scoring folders, evaluating a VQ alone or
    evaluating a model does not read; a flag of ``FLAG_FIELDS`` given replaces its field, and
    one given with another value for that field conflicts with it."""
    conflicts = [
        f"--{flag}={FLAGS[flag].value} and --config.{field}={overrides[field]}"
        for flag, field in FLAG_FIELDS.items()
        if FLAGS[flag].present and field in overrides and overrides[field] != FLAGS[flag].value
    ]
    if conflicts:
        which = "them" if len(conflicts) == 1 else "each pair"
        cli.fail(f"{'; '.join(conflicts)} conflict: pass only one of {which}")
    replaced = {
        field: f"--{flag} sets it" for flag, field in FLAG_FIELDS.items() if FLAGS[flag].present
    }
    if vq_only:
        cli.reject_unread_overrides(
            overrides,
            [field for field in VQ_CONFIG_FIELDS if field not in replaced],
            " with --vq_params, which reads only the VQ's architecture (--config.vq.*, "
            "--config.vq_chunk, --config.data.image_size, --config.data.channels), "
            "--config.data.cond_frames, --config.data.test_dir and the --config.eval.* fields "
            "that the flags given do not set",
            {"vq_params": "--vq_params sets it", **replaced},
        )
        return
    if folders:
        cli.reject_unread_overrides(
            overrides,
            FOLDER_CONFIG_FIELDS,
            f" when scoring folders, which reads only "
            f"{', '.join('--config.' + f for f in FOLDER_CONFIG_FIELDS)}",
        )
        return
    cli.reject_unread_overrides(
        overrides,
        [field for field in MODEL_CONFIG_FIELDS if field not in replaced],
        f" in evaluate.py, which reads only {cli.MODEL_FIELDS_TEXT}, --config.data.test_dir "
        "and the --config.eval.* fields that the flags given do not set",
        {**cli.INFERENCE_HINTS, **replaced},
    )


def main():
    folders = FLAGS.real_dir is not None or FLAGS.fake_dir is not None
    vq_only = FLAGS.vq_params is not None
    if vq_only and folders:
        cli.fail("--vq_params evaluates a VQ on the test clips; it does not score folders.")
    if vq_only and FLAGS.sweep is not None:
        cli.fail("--sweep compares a model's samplers; --vq_params evaluates no model.")
    if vq_only:
        cli.reject_flags(
            VQ_UNREAD_FLAGS + FOLDER_FLAGS,
            "with --vq_params (the VQ's baselines only: no model, one deterministic sample)",
        )
    if folders and not (FLAGS.real_dir and FLAGS.fake_dir):
        cli.fail("--real_dir and --fake_dir go together; pass both folders.")
    if not (folders or vq_only) and bool(FLAGS.bundle) == bool(FLAGS.workdir):
        cli.fail(
            "pass exactly one of --bundle or --workdir (or --real_dir with --fake_dir, or "
            "--vq_params)."
        )
    if folders and FLAGS.sweep is not None:
        cli.fail("--sweep scores a model's samplers; it needs --bundle or --workdir.")
    if folders:
        cli.reject_flags(MODEL_FLAGS, "when scoring folders (--real_dir, --fake_dir)")
    else:
        cli.reject_flags(FOLDER_FLAGS, "without --real_dir and --fake_dir")
    _reject_unread_overrides(config_flags.get_override_values(FLAGS["config"]), folders, vq_only)
    report.check_output_dir(FLAGS.out)
    mesh.initialize_distributed()
    if folders:
        print(report.markdown_table(_score_folders()))
        print(f"wrote {FLAGS.out}/metrics.json")
    elif vq_only:
        _evaluate_vq()
    else:
        _evaluate_model()


if __name__ == "__main__":
    cli.run(main)

"""The main job on the embedded default: nothing → an evaluated video predictor.

Stages, each skipped when its output exists (so a second run resumes):
moving digits → VQ-f4 training → latent cache → denoiser training → inference
bundle → 10 → 10 evaluation (PredVDM protocol + FVD) → 10 → 30 rollout →
``report.md`` with the numbers, ``per_frame.png`` and ground truth | prediction GIFs.

The denoiser stage is done once the newest checkpoint reaches ``train.num_steps`` (a rerun
with more steps trains on); the bundle and the evaluations are redone when the step they
were made from (``bundle_step.json``, the metrics' source) changes, or the denoiser or bundle
is made anew. A done VQ or denoiser whose checkpoint was trained with other settings than the
config's is a ``ConfigError`` naming them, never reused; the evaluations and the report take
the model's settings from the checkpoints.
``demo_stages.json`` keeps each stage's time from the run that did it, and the largest peak
memory of the runs.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import ml_collections

from predvdm_jax import atomic_io, config as config_lib
from predvdm_jax.data import hdf5, latent_cache, manifest as manifest_lib, moving_digits
from predvdm_jax.evaluation import protocol as protocol_lib
from predvdm_jax.evaluation import report
from predvdm_jax.evaluation import run as run_lib
from predvdm_jax.evaluation import sweep as sweep_lib
from predvdm_jax.interop import bundle as bundle_lib
from predvdm_jax.interop.params import load_vq_params
from predvdm_jax.training import checkpoint, diffusion_trainer, vq_trainer


def demo_paths(workdir: str) -> dict[str, str]:
    data = os.path.join(workdir, "data")
    return dict(
        frames=os.path.join(data, "moving_digits"),
        latents=os.path.join(data, "latents"),
        vq=os.path.join(workdir, "vq"),
        diffusion=os.path.join(workdir, "diffusion"),
        bundle=os.path.join(workdir, "bundle"),
        eval10=os.path.join(workdir, "eval_10_to_10"),
        eval30=os.path.join(workdir, "eval_10_to_30"),
        fvd=os.path.join(workdir, "fvd_10_to_10"),
        report=os.path.join(workdir, "report.md"),
        bundle_step=os.path.join(workdir, "bundle_step.json"),  # {"step": the step bundled}
        stages=os.path.join(workdir, "demo_stages.json"),
    )


def localize(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The demo config with every path inside ``workdir``."""
    paths = demo_paths(workdir)
    config = config.copy_and_resolve_references()
    config.data.train_dir = os.path.join(paths["frames"], "train")
    config.data.test_dir = os.path.join(paths["frames"], "test")
    config.data.latent_train_dir = os.path.join(paths["latents"], "train")
    config.data.latent_test_dir = os.path.join(paths["latents"], "test")
    config.vq_params = os.path.join(paths["vq"], vq_trainer.VQ_PARAMS_FILE)
    return config


IN_WORKDIR = "the demo keeps its data in --workdir"
PREDVDM_PROTOCOL = "the demo evaluates with the predvdm protocol, 1 sample per clip"
SET_BY_DEMO = {
    "data.train_dir": IN_WORKDIR,  # localize
    "data.test_dir": IN_WORKDIR,
    "data.latent_train_dir": IN_WORKDIR,
    "data.latent_test_dir": IN_WORKDIR,
    "vq_params": "the demo trains its VQ in --workdir",
    "scale_factor": "the demo sets it to 1 / std of its VQ's latents",  # latent_scale_factor
    "eval.protocol": PREDVDM_PROTOCOL,  # _evaluate
    "eval.num_samples": PREDVDM_PROTOCOL,
    "eval.fvd": "the demo computes FVD on --fvd_clips clips only",
}
"""The config fields ``run_demo`` sets itself, whatever the config says (``scripts/demo.py``
refuses overrides of them), with why."""


VQ_TRAIN_LOG = ("log_every", "save_every", "max_to_keep", "eval_every", "eval_clips", "eval_frames")
"""The ``vq_train`` fields that do not change the trained VQ; a done VQ stage compares the
others, with ``checkpoint.VQ_FIELDS``, seed and flips, to its checkpoint's."""
DENOISER_TRAINING = (
    "seed",
    "data.batch_size",
    "data.frames_per_sample",
    "data.horizontal_flip",
    "diffusion.elbo_weight",
    "diffusion.l_eps_weight",
    "diffusion.loss_reduction",
    "optimizer",
    "train.ema_rate",
    "train.init_from",
)
"""With ``checkpoint.DENOISER_FIELDS``, the fields a done denoiser stage compares to its
checkpoint's: how the weights were trained (``train.num_steps`` is the step reached)."""


def _check_trained(
    trained: ml_collections.ConfigDict,
    config: ml_collections.ConfigDict,
    fields: tuple[str, ...],
    model: str,
    outputs: list[str],
) -> None:
    """A ``ConfigError`` naming the ``fields`` on which ``trained``, the config of the ``model``
    in ``outputs[0]``, differs from ``config``; deleting ``outputs`` redoes that model."""
    differences = checkpoint.model_differences(
        checkpoint.config_to_json(trained),
        checkpoint.config_to_json(config_lib.with_absolute_paths(config)),  # as trainers save it
        "in the checkpoint",
        fields,
        derived=None,
    )
    if differences:
        delete = ", ".join(outputs[:-1]) + " and " if len(outputs) > 1 else ""
        raise config_lib.ConfigError(
            f"{outputs[0]} holds {model} trained with other settings ({'; '.join(differences)}); "
            f"use a new --workdir, or delete {delete}{outputs[-1]} to train it again"
        )


def _with_model_of(
    config: ml_collections.ConfigDict, trained: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """``config`` (sampling, evaluation, paths) with ``trained``'s ``checkpoint.DENOISER_FIELDS``:
    what the weights were trained as."""
    model = {field: config_lib.field_value(trained, field) for field in checkpoint.DENOISER_FIELDS}
    return config_lib.with_overrides(config, model, validated=False)


def latent_scale_factor(config: ml_collections.ConfigDict, vq_dir: str) -> float:
    """``1 / std`` of the trained VQ's latents on training clips
    (``latent_cache.unit_std_scale_factor``), computed once and kept in
    ``vq_dir/latent_scale.json``: without it the small demo VQ's latents (std ≈ 0.25) leave an
    under-trained denoiser's x̂0 estimates to diverge."""
    path = os.path.join(vq_dir, "latent_scale.json")
    if not os.path.exists(path):
        vq_params = load_vq_params(config.vq_params, config)
        factor = latent_cache.unit_std_scale_factor(config, vq_params, config.data.train_dir)
        atomic_io.write_text(path, json.dumps({"scale_factor": factor}))
    with open(path) as f:
        return float(json.load(f)["scale_factor"])


def bundled_step(paths: dict[str, str]) -> int | None:
    """The checkpoint step the demo bundle was made from (None: no complete bundle)."""
    complete = os.path.exists(os.path.join(paths["bundle"], bundle_lib.CONFIG_FILE))
    if not (complete and os.path.exists(paths["bundle_step"])):
        return None
    with open(paths["bundle_step"]) as f:
        return int(json.load(f)["step"])


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _train_denoiser(
    config: ml_collections.ConfigDict, paths: dict[str, str], progress: bool
) -> None:
    """Trains (or trains on); a denoiser trained anew to the bundled step is bundled again."""
    diffusion_trainer.train(config, paths["diffusion"], show_progress=progress)
    _remove(paths["bundle_step"])


def _save_bundle(paths: dict[str, str], step: int) -> None:
    """Bundles checkpoint ``step`` and voids the evaluations of the previous bundle; the step is
    recorded once the bundle is complete."""
    _remove(paths["bundle_step"])
    for name in ("eval10", "eval30", "fvd"):
        _remove(os.path.join(paths[name], report.METRICS_FILE))
    bundle = checkpoint.load_from_checkpoint(paths["diffusion"], step=step)
    bundle_lib.save_bundle(paths["bundle"], bundle)
    atomic_io.write_text(paths["bundle_step"], json.dumps({"step": step}))


class _Stages:
    """Prints numbered stage headers and keeps each stage's wall time in the json at ``path``.

    A skipped stage keeps the time recorded when it last ran (None if never recorded).
    """

    def __init__(self, total: int, path: str):
        self.total, self.index, self.path = total, 0, path
        self.times: dict[str, float | None] = {}
        self.skipped: list[str] = []
        self.recorded = {"stage_seconds": {}, "peak_rss_gb": 0.0}
        if os.path.exists(path):
            with open(path) as f:
                self.recorded.update(json.load(f))

    def run(self, name: str, done: bool, fn) -> Any:
        self.index += 1
        status = "exists, skipped" if done else "running"
        print(f"[{self.index}/{self.total}] {name} ({status})", flush=True)
        if done:
            self.skipped.append(name)
            self.times[name] = self.recorded["stage_seconds"].get(name)
            return None
        start = time.time()
        result = fn()
        self.times[name] = self.recorded["stage_seconds"][name] = time.time() - start
        self._save()
        return result

    def peak_rss_gb(self) -> float:
        """The largest peak memory of this run and the recorded runs (kept in the json)."""
        self.recorded["peak_rss_gb"] = max(self.recorded["peak_rss_gb"], report.peak_rss_gb())
        self._save()
        return self.recorded["peak_rss_gb"]

    def _save(self) -> None:
        atomic_io.write_text(self.path, json.dumps(self.recorded, indent=2))


def _cached_metrics(out_dir: str, expected: dict[str, Any]) -> dict | None:
    """``out_dir/metrics.json`` if it exists and its protocol has the ``expected`` entries
    (the model's source, the sampler, the clip and frame counts): a rerun with other
    settings evaluates again."""
    metrics_path = os.path.join(out_dir, report.METRICS_FILE)
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path) as f:
        metrics = json.load(f)
    protocol = metrics.get("protocol", {})
    return metrics if all(protocol.get(k) == v for k, v in expected.items()) else None


def _evaluate(config, bundle, out_dir, pred_frames, num_clips, fvd, source, progress) -> dict:
    config = _with_model_of(config, bundle.config)
    config.eval.fvd = fvd
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=num_clips)
    return run_lib.evaluate_model(
        config,
        bundle.params,
        bundle.vq_params,
        out_dir,
        protocol=protocol,
        pred_frames=pred_frames,
        source=source,
        show_progress=progress,
    )


def run_demo(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    num_train: int = 500,
    num_test: int = 256,
    long_clips: int = 16,
    fvd_clips: int = 8,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) every stage; returns the report's numbers."""
    paths = demo_paths(workdir)
    config = localize(config, workdir)
    stages = _Stages(9, paths["stages"])
    start = time.time()

    written = os.path.exists(hdf5.shard_path(config.data.test_dir, 1))
    if written:  # a dataset of other settings is one error, not silently reused
        manifest_lib.check_manifest(
            paths["frames"],
            moving_digits.moving_digits_manifest(num_train=num_train, num_test=num_test),
            flag="--workdir",
        )
    stages.run(
        "moving digits dataset",
        written,
        lambda: moving_digits.write_moving_digits(
            paths["frames"], num_train, num_test, progress=progress
        ),
    )
    vq_done = os.path.exists(config.vq_params)
    if vq_done:
        vq_fields = (*checkpoint.VQ_FIELDS, "seed", "data.horizontal_flip") + tuple(
            f"vq_train.{name}" for name in config.vq_train if name not in VQ_TRAIN_LOG
        )
        outputs = [paths["vq"], paths["latents"], paths["diffusion"]]
        _check_trained(checkpoint.saved_config(paths["vq"]), config, vq_fields, "a VQ-f4", outputs)
    stages.run(
        "VQ-f4 training",
        vq_done,
        lambda: vq_trainer.train_vq(config, paths["vq"], show_progress=progress),
    )
    trained_vq = checkpoint.saved_config(paths["vq"])

    config.scale_factor = latent_scale_factor(config, paths["vq"])
    # Only training reads latents; evaluation encodes its conditioning frames itself.
    stages.run(
        "latent cache (train split)",
        os.path.exists(hdf5.shard_path(config.data.latent_train_dir, 1)),
        lambda: latent_cache.encode_split(
            config,
            load_vq_params(config.vq_params, config),
            config.data.train_dir,
            config.data.latent_train_dir,
        ),
    )
    step = checkpoint.latest_step(paths["diffusion"])
    denoiser_done = step is not None and step >= config.train.num_steps
    if denoiser_done:
        fields = checkpoint.DENOISER_FIELDS + DENOISER_TRAINING
        trained = checkpoint.saved_config(paths["diffusion"])
        _check_trained(trained, config, fields, "a denoiser", [paths["diffusion"]])
    stages.run("denoiser training", denoiser_done, lambda: _train_denoiser(config, paths, progress))
    step = checkpoint.latest_step(paths["diffusion"])
    stages.run(
        "inference bundle",
        bundled_step(paths) == step,
        lambda: _save_bundle(paths, step),
    )

    @functools.cache
    def bundle() -> bundle_lib.Bundle:
        return bundle_lib.load_bundle(paths["bundle"])

    source = f"demo bundle of step {step}"

    def evaluation(name, out_dir, pred_frames, num_clips, fvd):
        expected = {
            "source": source,
            "sampler": sweep_lib.sampler_description(config.sampling),
            "num_clips": num_clips,
            "pred_frames": pred_frames,
        }
        cached = _cached_metrics(out_dir, expected)
        metrics = stages.run(
            name,
            cached is not None,
            lambda: _evaluate(
                config, bundle(), out_dir, pred_frames, num_clips, fvd, source, progress
            ),
        )
        return cached if metrics is None else metrics

    cond, pred = config.data.cond_frames, config.eval.pred_frames
    short = evaluation(
        f"evaluation {cond} -> {pred}, {config.eval.num_clips} clips",
        paths["eval10"],
        pred,
        config.eval.num_clips,
        False,
    )
    fvd = evaluation(
        f"FVD {cond} -> {pred}, {fvd_clips} clips", paths["fvd"], pred, fvd_clips, True
    )
    long = evaluation(
        f"rollout {cond} -> 30, {long_clips} clips", paths["eval30"], 30, long_clips, False
    )
    numbers = dict(
        short=short,
        fvd=fvd,
        long=long,
        denoiser_step=step,
        stage_seconds=dict(stages.times),
        skipped=list(stages.skipped),
        total_seconds=time.time() - start,
        config=config,
        trained=dict(vq=trained_vq, denoiser=bundle().config),
    )
    stages.run("report", False, lambda: write_report(paths, numbers, stages.peak_rss_gb()))
    return numbers


def _verdict(metrics: dict, horizon: str) -> str:
    """One line: does the model beat copying the last frame, on mean SSIM and PSNR?"""
    parts = []
    for name in ("ssim", "psnr"):
        model = metrics["model"][name]["mean"]["value"]
        copy = metrics["baselines"]["copy_last_frame"][name]["mean"]["value"]
        relation = "beats" if model > copy else "does not beat"
        digits = 3 if name == "ssim" else 2
        parts.append(f"{name.upper()} {model:.{digits}f} vs {copy:.{digits}f} ({relation})")
    clips = metrics["protocol"]["num_clips"]
    return (
        f"**{horizon} on {clips} test clips, model vs copy-last-frame:** " + ", ".join(parts) + "."
    )


def write_report(paths: dict, numbers: dict, peak_rss_gb: float) -> str:
    """Writes ``report.md``: ``numbers`` of ``run_demo``, ``peak_rss_gb`` of the demo's runs; the
    training budget is the trained models' (``numbers["trained"]``)."""
    config = numbers["config"]
    lines = ["# PredVDM demo on moving digits", ""]
    cond, pred = config.data.cond_frames, config.eval.pred_frames
    lines += [_verdict(numbers["short"], f"{cond} → {pred}"), ""]
    for title, metrics, folder in (
        (f"{cond} → {pred} frames", numbers["short"], "eval10"),
        (
            f"FVD, {cond} → {pred} frames (few clips on a CPU: not comparable with published FVD, "
            f"which uses 256 clips)",
            numbers["fvd"],
            "fvd",
        ),
        (f"{cond} → 30 frames", numbers["long"], "eval30"),
    ):
        lines += [
            f"## {title}",
            "",
            f"Sampler: {metrics['protocol'].get('sampler', '?')}.",
            "",
            report.markdown_table(metrics),
        ]
        rel = os.path.relpath(
            os.path.join(paths[folder], report.PER_FRAME_FILE), os.path.dirname(paths["report"])
        )
        lines += ["", f"![per-frame metrics]({rel})", ""]
        videos = os.path.join(paths[folder], report.VIDEOS_DIR)
        if os.path.isdir(videos):
            gifs = sorted(f for f in os.listdir(videos) if f.endswith(".gif"))[:4]
            lines += [
                " ".join(
                    f"![ground truth | prediction]({os.path.relpath(os.path.join(videos, g), os.path.dirname(paths['report']))})"
                    for g in gifs
                ),
                "",
            ]
    v, c = numbers["trained"]["vq"], numbers["trained"]["denoiser"]
    lines += [
        "## Training budget",
        "",
        f"- VQ-f4: ch {v.vq.ch}, ch_mult {tuple(v.vq.ch_mult)}, codebook {v.vq.n_embed}×"
        f"{v.vq.embed_dim}; {v.vq_train.num_steps} steps of batch {v.vq_train.batch_size} frames.",
        f"- Denoiser: UNet {c.unet.model_channels} × {tuple(c.unet.channel_mult)}, mode "
        f"{c.model.mode}, {c.diffusion.parameterization}-prediction; "
        f"{numbers['denoiser_step']} steps of batch {c.data.batch_size} clips "
        f"({c.data.cond_frames} + {c.data.pred_frames} frames), EMA {c.train.ema_rate}.",
        f"- Hardware: {jax.device_count()} × {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores).",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    times = numbers["stage_seconds"]
    lines += [
        f"| {name} | {'?' if seconds is None else f'{seconds:.0f}'} |"
        for name, seconds in times.items()
    ]
    lines += [f"| total | {sum(t for t in times.values() if t is not None):.0f} |", ""]
    lines += [
        "Each stage's time is from the run that did it (? where it was not recorded).",
        f"Peak memory (RSS), the largest of the demo's runs: {peak_rss_gb:.1f} GB.",
        "",
    ]
    atomic_io.write_text(paths["report"], "\n".join(lines))
    return paths["report"]

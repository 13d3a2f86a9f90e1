"""The main job on the embedded default: nothing → an evaluated video predictor.

Stages, each skipped when its output exists (so a second run resumes):
moving digits → VQ-f4 training → latent cache → denoiser training → inference
bundle → 10 → 10 evaluation (PredVDM protocol + FVD) → 10 → 30 rollout →
``report.md`` with the numbers, ``per_frame.png`` and ground truth | prediction GIFs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections

from predvdm_jax.data import hdf5, latent_cache, loader, moving_digits
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.evaluation import protocol as protocol_lib
from predvdm_jax.evaluation import report
from predvdm_jax.interop import bundle as bundle_lib
from predvdm_jax.interop.torch_checkpoint import load_params_safetensors
from predvdm_jax.training import diffusion_trainer, vq_trainer


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
    )


def localize(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The demo config with every path inside ``workdir``."""
    paths = demo_paths(workdir)
    config = config.copy_and_resolve_references()
    config.data.train_dir = os.path.join(paths["frames"], "train")
    config.data.test_dir = os.path.join(paths["frames"], "test")
    config.data.latent_train_dir = os.path.join(paths["latents"], "train")
    config.data.latent_test_dir = os.path.join(paths["latents"], "test")
    config.vq_params = os.path.join(paths["vq"], "vq_params.safetensors")
    return config


def latent_scale_factor(config: ml_collections.ConfigDict, vq_dir: str) -> float:
    """``1 / std`` of the trained VQ's latents on training clips (LDM's ``scale_by_std``).

    Computed once and kept in ``vq_dir/latent_scale.json``: without it the small demo VQ's
    latents (std ≈ 0.25) leave the sampler's first steps with a very low signal-to-noise
    ratio, and an under-trained denoiser's x̂0 estimates diverge.
    """
    path = os.path.join(vq_dir, "latent_scale.json")
    if not os.path.exists(path):
        model = LatentDiffusion.from_config(config)
        clips = next(loader.eval_iterator(config.data.train_dir, 8, 32, 32, config.seed))["video"]
        std = model.latent_std(load_params_safetensors(config.vq_params), clips)
        with open(path, "w") as f:
            json.dump({"latent_std": std, "scale_factor": 1.0 / std}, f)
    with open(path) as f:
        return float(json.load(f)["scale_factor"])


class _Stages:
    """Prints numbered stage headers and records each stage's wall time."""

    def __init__(self, total: int):
        self.total, self.index, self.times = total, 0, {}

    def run(self, name: str, done: bool, fn) -> Any:
        self.index += 1
        status = "exists, skipped" if done else "running"
        print(f"[{self.index}/{self.total}] {name} ({status})", flush=True)
        start = time.time()
        result = None if done else fn()
        self.times[name] = time.time() - start
        return result


def _evaluate(config, bundle, out_dir, pred_frames, num_clips, fvd, progress) -> dict:
    """Evaluates unless ``out_dir/metrics.json`` exists; returns the metrics."""
    metrics_path = os.path.join(out_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            return json.load(f)
    config = config.copy_and_resolve_references()
    config.eval.fvd = fvd
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=num_clips)
    return protocol_lib.evaluate_model(
        config,
        bundle.params,
        bundle.vq_params,
        out_dir,
        protocol=protocol,
        pred_frames=pred_frames,
        source="demo bundle",
        show_progress=progress,
    )


def run_demo(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    num_train: int = 2000,
    num_test: int = 256,
    long_clips: int = 16,
    fvd_clips: int = 8,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) every stage; returns the report's numbers."""
    paths = demo_paths(workdir)
    config = localize(config, workdir)
    stages = _Stages(9)
    start = time.time()

    stages.run(
        "moving digits dataset",
        os.path.exists(hdf5.shard_path(config.data.test_dir, 1)),
        lambda: moving_digits.write_moving_digits(
            paths["frames"], None, num_train, num_test, progress=progress
        ),
    )
    stages.run(
        "VQ-f4 training",
        os.path.exists(config.vq_params),
        lambda: vq_trainer.train_vq(config, paths["vq"]),
    )

    config.scale_factor = latent_scale_factor(config, paths["vq"])
    # Only training reads latents; evaluation encodes its conditioning frames itself.
    stages.run(
        "latent cache (train split)",
        os.path.exists(hdf5.shard_path(config.data.latent_train_dir, 1)),
        lambda: latent_cache.encode_split(
            config,
            load_params_safetensors(config.vq_params),
            config.data.train_dir,
            config.data.latent_train_dir,
        ),
    )
    stages.run(
        "denoiser training",
        os.path.exists(os.path.join(paths["bundle"], "config.json")),
        lambda: diffusion_trainer.train(config, paths["diffusion"]),
    )

    stages.run(
        "inference bundle",
        os.path.exists(os.path.join(paths["bundle"], "config.json")),
        lambda: bundle_lib.save_bundle(
            paths["bundle"], bundle_lib.load_from_checkpoint(paths["diffusion"])
        ),
    )
    bundle = bundle_lib.load_bundle(paths["bundle"])
    bundle = bundle_lib.Bundle(config, bundle.params, bundle.vq_params)
    cond, pred = config.data.cond_frames, config.eval.pred_frames
    short = stages.run(
        f"evaluation {cond} -> {pred}, {config.eval.num_clips} clips",
        False,
        lambda: _evaluate(
            config, bundle, paths["eval10"], pred, config.eval.num_clips, False, progress
        ),
    )
    fvd = stages.run(
        f"FVD {cond} -> {pred}, {fvd_clips} clips",
        False,
        lambda: _evaluate(config, bundle, paths["fvd"], pred, fvd_clips, True, progress),
    )
    long = stages.run(
        f"rollout {cond} -> 30, {long_clips} clips",
        False,
        lambda: _evaluate(config, bundle, paths["eval30"], 30, long_clips, False, progress),
    )
    numbers = dict(
        short=short,
        fvd=fvd,
        long=long,
        stage_seconds=stages.times,
        total_seconds=time.time() - start,
        config=config,
    )
    stages.run("report", False, lambda: write_report(paths, numbers))
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


def write_report(paths: dict, numbers: dict) -> str:
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
            os.path.join(paths[folder], "per_frame.png"), os.path.dirname(paths["report"])
        )
        lines += ["", f"![per-frame metrics]({rel})", ""]
        videos = os.path.join(paths[folder], "videos")
        if os.path.isdir(videos):
            gifs = sorted(f for f in os.listdir(videos) if f.endswith(".gif"))[:4]
            lines += [
                " ".join(
                    f"![ground truth | prediction]({os.path.relpath(os.path.join(videos, g), os.path.dirname(paths['report']))})"
                    for g in gifs
                ),
                "",
            ]
    c = config
    lines += [
        "## Training budget",
        "",
        f"- VQ-f4: ch {c.vq.ch}, ch_mult {tuple(c.vq.ch_mult)}, codebook {c.vq.n_embed}×"
        f"{c.vq.embed_dim}; {c.vq_train.num_steps} steps of batch {c.vq_train.batch_size} frames.",
        f"- Denoiser: UNet {c.unet.model_channels} × {tuple(c.unet.channel_mult)}, mode "
        f"{c.model.mode}, {c.diffusion.parameterization}-prediction; {c.train.num_steps} steps "
        f"of batch {c.data.batch_size} clips "
        f"({c.data.cond_frames} + {c.data.pred_frames} frames), EMA {c.train.ema_rate}.",
        f"- Hardware: {jax.device_count()} × {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores).",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in numbers["stage_seconds"].items()]
    lines += [f"| total | {numbers['total_seconds']:.0f} |", ""]
    lines += [f"Peak memory (RSS) of this run: {report.peak_rss_gb():.1f} GB.", ""]
    with open(paths["report"], "w") as f:
        f.write("\n".join(lines))
    return paths["report"]

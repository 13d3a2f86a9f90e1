"""Evaluation protocols: fixed test clips, N samples per clip, metrics, baselines, FVD.

A protocol predicts the ``pred`` frames that follow the ``cond`` real frames of
every fixed test clip, ``num_samples`` times per clip, and scores the
predicted frames only (values clamped to [-1, 1], mapped to [0, 1]):

* SSIM / PSNR / LPIPS per frame, kept as ``(clips, samples, frames)`` arrays;
* ``mean``: mean and std over all clip × sample × frame values (PredVDM);
* ``best_of_N``: per clip the sample with the best mean over its frames,
  chosen per metric (max SSIM, max PSNR, min LPIPS — MCVD / ExtDM), then mean,
  std and 95% interval over clips;
* per-frame curves (metric vs horizon) for both aggregations;
* ``metric_style`` ``"mcvd"`` (spec §H.3): SSIM on the uint8 PIL 'L' grey frames
  (``metrics.mcvd_ssim``; ``"mcvd_mnist"``: of the frames rounded to 0 / 1 first), LPIPS
  (``spatial=False``) on the frames PIL-resized to 128x128 (``metrics.mcvd_lpips_frames``)
  and PSNR per video, 10·log10(1/mean frame MSE)
  (``metrics.video_psnr``): each clip × sample then has one PSNR, which ``mean`` and
  ``best_of_N`` use in place of the mean over its frames; the per-frame PSNR curves stay
  per-frame PSNRs;
* FVD on ``cond+pred`` frames (real cond frames in front of both the true and
  the predicted future, all in [0, 1] — PredVDM's [-1, 1] cond-range bug is
  not reproduced), on ``pred-only`` frames and on ``vq-cond+pred`` frames (PredVDM's
  ``fvd-condXpredY``: the fakes' cond frames are the VQ reconstructions of the real ones,
  so the first stage's error counts; needs ``reconstruct_fn``), each ``all_samples``
  (every clip × sample fake against one real per clip, MCVD's ``avg_fvd``) and
  ``trajectory_mean`` (mean over s of the FVD of sample s of every clip
  against the reals, MCVD's ``fvd_traj_mean``, the paper's number).

The same numbers are computed for two baselines in the same run:
``copy_last_frame`` (the last conditioning frame repeated) and
``vq_reconstruction`` (the true future through the first stage: the floor a
latent model cannot beat). The model enters only as ``predict_fn`` and
``reconstruct_fn``, so the protocol is testable with closed-form fakes; ``run.py`` loads
the clips, the model, LPIPS and I3D and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from predvdm_jax.diffusion import samplers
from predvdm_jax.evaluation import fvd as fvd_lib
from predvdm_jax.evaluation import metrics as metrics_lib
from predvdm_jax.evaluation.images import to_unit_range
from predvdm_jax.mesh import to_host
from predvdm_jax.models import lpips as lpips_lib

METRICS = ("ssim", "psnr", "lpips")
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "lpips": False}
MODEL = "model"
COPY_LAST = "copy_last_frame"
VQ_RECON = "vq_reconstruction"
VQ_COND = "vq-cond+pred"
FVD_VARIANTS = ("cond+pred", "pred-only", VQ_COND)
REAL_VIDEO = {"cond+pred": "cond+pred", "pred-only": "pred-only", VQ_COND: "cond+pred"}
"""The real videos of each variant (``vq-cond+pred`` compares against ``cond+pred``'s)."""
NOISE_KEYS = "fold_in(fold_in(key(eval.seed), sample), clip)"
"""How ``evaluate`` keys each prediction's noise (recorded, so a resume never mixes schemes)."""
CI95_Z = 1.959963984540054  # the normal's 97.5 % quantile, scipy.stats.norm.interval(0.95)'s
VIDEO_PSNR = "video_psnr"
PIXEL_MSE = "pixel_mse"
PIXEL_MSE_NOTE = (
    "PredVDM's pixel_mse/predN (spec F.5): per predicted video, the sum over its predicted "
    "frames, channels and pixels of the squared error in [0, 1]; mean and std over clip x "
    "sample videos; per_frame: each frame's sum, averaged"
)
_MCVD_NOTES = {
    "ssim": "MCVD: skimage structural_similarity(data_range=255, gaussian_weights=True, "
    "use_sample_covariance=False) on the uint8 PIL 'L' grey frames (ToPILImage "
    "truncation), mean over frames",
    "psnr": "MCVD: per predicted video, 10*log10(1/mse) with mse the mean over frames of "
    "each frame's MSE in [0, 1] (100 when mse < 1e-10); mean and best_of_N use that "
    "one value per video, per_frame curves are per-frame PSNRs",
    "lpips": "MCVD: LPIPS v0.1 AlexNet, spatial=False, on the uint8 RGB frames (ToPILImage "
    "truncation, grey repeated) resized to 128x128 with PIL bilinear (torchvision Resize), "
    "mapped to [-1, 1]",
}
METRIC_STYLE_NOTES = {
    "predvdm": {
        "ssim": "Gaussian 11x11 window (sigma 1.5), valid region, mean over channels (PredVDM)",
        "psnr": "per frame, data range 1, 100 for identical frames; averaged over frames",
        "lpips": "LPIPS v0.1 AlexNet, spatial=True, native resolution, inputs in [-1, 1] (PredVDM)",
    },
    "mcvd": _MCVD_NOTES,
    "mcvd_mnist": {
        **_MCVD_NOTES,
        "ssim": "MCVD on (Stochastic) Moving MNIST: as mcvd, of the frames rounded to 0 / 1 "
        "(torch.round) first",
    },
}
FVD_DISABLED = "disabled (eval.fvd=False)"
GRAY_AS_GRAY = "1 channel: the VQ's RGB decode averaged to gray (eval.gray_as_rgb=False)"
GRAY_AS_RGB = (
    "3 channels, as PredVDM: the VQ's RGB decode against the frames repeated to RGB "
    "(eval.gray_as_rgb=True)"
)

PredictFn = Callable[[jax.Array, jax.Array], jax.Array]
ReconstructFn = Callable[[jax.Array], jax.Array]
FeatureFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What is computed: clips, samples per clip, and whether best-of-N is reported."""

    name: str
    num_samples: int
    best_of_n: bool
    num_clips: int = 256
    metric_style: str = "predvdm"

    @property
    def aggregations(self) -> tuple[str, ...]:
        return ("mean", f"best_of_{self.num_samples}") if self.best_of_n else ("mean",)


PRESETS = {
    "predvdm": Protocol("predvdm", num_samples=1, best_of_n=False),
    "mcvd": Protocol("mcvd", num_samples=10, best_of_n=True, metric_style="mcvd"),
    "extdm": Protocol("extdm", num_samples=100, best_of_n=True),
}


def resolve_protocol(
    name: str,
    num_clips: int | None = None,
    num_samples: int | None = None,
    metric_style: str | None = None,
) -> Protocol:
    """The preset ``name`` with optional clip / sample counts and metric style replacing its
    defaults."""
    if name not in PRESETS:
        raise ValueError(f"unknown evaluation protocol {name!r}; use one of {sorted(PRESETS)}.")
    protocol = PRESETS[name]
    if num_clips is not None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be >= 1, got {num_clips}.")
        protocol = dataclasses.replace(protocol, num_clips=int(num_clips))
    if num_samples is not None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        protocol = dataclasses.replace(protocol, num_samples=int(num_samples))
    if metric_style is not None:
        protocol = dataclasses.replace(protocol, metric_style=_checked_style(metric_style))
    return protocol


def _checked_style(metric_style: str) -> str:
    """``metric_style``, or a ``ValueError`` naming ``metrics.METRIC_STYLES``."""
    if metric_style not in metrics_lib.METRIC_STYLES:
        raise ValueError(
            f"unknown metric style {metric_style!r}; use one of {metrics_lib.METRIC_STYLES}."
        )
    return metric_style


def protocol_from_config(
    config: Any,
    overrides: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    num_clips: int | None = None,
    num_samples: int | None = None,
) -> Protocol:
    """The protocol of ``config.eval``, ``name`` / ``num_clips`` / ``num_samples`` (flags)
    replacing its ``protocol`` / ``num_clips`` / sample count. ``eval.num_samples`` replaces the
    preset's count when above 1 (its default, 1, means the preset's) or when ``overrides`` (the
    ``--config.*`` flags) set it. Likewise ``eval.metric_style`` replaces the preset's style
    (``mcvd``: ``eval.mcvd_style``, the data's MCVD style; the others "predvdm") when not
    "predvdm" or when ``overrides`` set it."""
    e = config.eval
    overrides = overrides or {}
    if num_samples is None and ("eval.num_samples" in overrides or e.num_samples > 1):
        num_samples = e.num_samples
    style = getattr(e, "metric_style", "predvdm")
    metric_style = style if "eval.metric_style" in overrides or style != "predvdm" else None
    name = name or e.protocol
    if metric_style is None and name == "mcvd":
        metric_style = getattr(e, "mcvd_style", "mcvd")
    return resolve_protocol(
        name,
        num_clips=num_clips or e.num_clips,
        num_samples=num_samples,
        metric_style=metric_style,
    )


# --- aggregation (pure, on host arrays) ------------------------------------------------


def aggregate_metric(
    values: Any, higher_is_better: bool, best_of_n: bool = True, clip_values: Any = None
) -> dict:
    """Summary of one metric's per-frame values ``(clips, samples, frames)``.

    Returns ``mean`` ({value, std} over all values), ``per_frame`` (curves) and,
    when ``best_of_n``, ``best_of_N`` ({value, std, ci95 (None for one clip)} over clips of the
    best sample's frame mean) plus ``best_sample`` (the chosen sample per clip).
    ``clip_values`` ``(clips, samples)`` (MCVD's video-level PSNR) replaces each clip ×
    sample's frame mean in ``mean`` and ``best_of_N``; the per-frame curves stay ``values``'.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 3 or 0 in values.shape:
        raise ValueError(
            f"per-frame values must be a non-empty (clips, samples, frames) array, "
            f"got shape {values.shape}."
        )
    clips, samples, _ = values.shape
    if clip_values is None:
        clip_means = values.mean(axis=2)
        mean = {
            "value": float(values.mean()),
            "std": float(values.std()),
            "count": int(values.size),
            "over": "all clip x sample x frame values",
        }
    else:
        clip_means = np.asarray(clip_values, np.float64)
        if clip_means.shape != (clips, samples):
            raise ValueError(
                f"clip_values must be (clips, samples) = {(clips, samples)}, "
                f"got shape {clip_means.shape}."
            )
        mean = {
            "value": float(clip_means.mean()),
            "std": float(clip_means.std()),
            "count": int(clip_means.size),
            "over": "all clip x sample values (one per predicted video)",
        }
    summary = {"mean": mean, "per_frame": {"mean": values.mean(axis=(0, 1)).tolist()}}
    if best_of_n:
        best = (np.argmax if higher_is_better else np.argmin)(clip_means, axis=1)
        best_clip_means = clip_means[np.arange(clips), best]
        std = float(best_clip_means.std())
        key = f"best_of_{samples}"
        summary[key] = {
            "value": float(best_clip_means.mean()),
            "std": std,
            # MCVD's conf95: the normal interval's half-width with scipy's sem (std with n − 1)
            "ci95": CI95_Z * float(best_clip_means.std(ddof=1)) / math.sqrt(clips)
            if clips > 1
            else None,
            "count": int(clips),
            "over": "clips (best sample by its mean over frames)"
            if clip_values is None
            else "clips (best sample by its video-level value)",
        }
        summary["per_frame"][key] = values[np.arange(clips), best].mean(axis=0).tolist()
        summary["best_sample"] = best.tolist()
    return summary


def pixel_mse_summary(values: Any) -> dict:
    """PredVDM's pixel MSE from per-frame sums of squared errors ``(clips, samples, frames)``:
    each video's sum over its frames, then mean and std over videos (``PIXEL_MSE_NOTE``)."""
    values = np.asarray(values, np.float64)
    per_video = values.sum(axis=2)
    return {
        "mean": {
            "value": float(per_video.mean()),
            "std": float(per_video.std()),
            "count": int(per_video.size),
            "over": "all clip x sample videos (each the sum over its predicted frames)",
        },
        "per_frame": {"mean": values.mean(axis=(0, 1)).tolist()},
        "definition": PIXEL_MSE_NOTE,
    }


def fvd_from_features(real: Any, fake: Any) -> dict:
    """FVD of fakes ``(clips, samples, D)`` against reals ``(clips, D)``.

    ``all_samples``: every fake in one set (MCVD ``avg_fvd``); ``trajectory_mean``
    / ``trajectory_std``: over s of the FVD of ``fake[:, s]`` (MCVD ``fvd_traj_mean``).
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if (
        real.ndim != 2
        or fake.ndim != 3
        or fake.shape[0] != real.shape[0]
        or fake.shape[2] != real.shape[1]
    ):
        raise ValueError(
            f"FVD features must be reals (clips, D) and fakes (clips, samples, D); "
            f"got {real.shape} and {fake.shape}."
        )
    per_trajectory = [fvd_lib.frechet_distance(real, fake[:, s]) for s in range(fake.shape[1])]
    return {
        "all_samples": fvd_lib.frechet_distance(real, fake.reshape(-1, fake.shape[2])),
        "trajectory_mean": float(np.mean(per_trajectory)),
        "trajectory_std": float(np.std(per_trajectory)),
        "real_videos": int(real.shape[0]),
        "fake_videos": int(fake.shape[0] * fake.shape[1]),
    }


# --- the evaluation loop ---------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="metric_style")
def _frame_metrics(
    real: jax.Array, fake: jax.Array, lpips_params: Any, metric_style: str = "predvdm"
) -> dict:
    """Per-frame ``(B, T)`` values (``pixel_mse``: the frame's summed squared error); with an
    MCVD ``metric_style`` SSIM and LPIPS are MCVD's and ``video_psnr`` ``(B,)`` is added."""
    real01, fake01 = to_unit_range(real), to_unit_range(fake)
    values = {
        "psnr": metrics_lib.psnr(real01, fake01),
        PIXEL_MSE: jnp.sum(jnp.square(real01 - fake01), axis=(2, 3, 4)),
    }
    if is_mcvd_style(metric_style):
        binary = metric_style == "mcvd_mnist"
        values["ssim"] = metrics_lib.mcvd_ssim(real01, fake01, binary=binary)
        values[VIDEO_PSNR] = metrics_lib.video_psnr(real01, fake01)
        if lpips_params is not None:
            values["lpips"] = lpips_lib.lpips_video(
                lpips_params,
                metrics_lib.mcvd_lpips_frames(real01),
                metrics_lib.mcvd_lpips_frames(fake01),
                spatial=False,
            )
    else:
        values["ssim"] = metrics_lib.ssim(real01, fake01)
        if lpips_params is not None:
            values["lpips"] = lpips_lib.lpips_video(lpips_params, real01, fake01)
    return values


def is_mcvd_style(metric_style: str) -> bool:
    """Whether ``metric_style`` is one of MCVD's (``mcvd``, ``mcvd_mnist``)."""
    return metric_style in metrics_lib.MCVD_STYLES


def lpips_frame_size(metric_style: str, height: int, width: int) -> tuple[int, int]:
    """The frame size LPIPS sees: native, or MCVD's 128x128."""
    if is_mcvd_style(metric_style):
        return (metrics_lib.MCVD_LPIPS_SIZE, metrics_lib.MCVD_LPIPS_SIZE)
    return (height, width)


@dataclasses.dataclass
class EvaluationResult:
    """Raw outputs of ``evaluate``: per-frame values, FVD features, kept videos.

    ``per_frame[system][metric]`` is ``(clips, samples, frames)``;
    ``features[variant]`` holds ``real`` ``(clips, D)`` and ``fake[system]``
    ``(clips, samples, D)``; ``videos`` holds ``cond``, ``real`` and ``fake[model]``
    ([-1, 1]; sample 0) of the first kept clips; ``predict_seconds[model]`` is the time
    spent in that model's ``predict_fn`` calls (its first call's compilation included);
    ``throughput[model]`` is a ``Throughput`` of the calls after its first;
    ``per_clip[system]["psnr"]`` (metric style "mcvd" only) is ``(clips, samples)``, one
    video-level PSNR per predicted video.
    """

    per_frame: dict
    features: dict
    videos: dict
    lpips_note: str | None
    fvd_notes: dict
    seconds: dict
    predict_seconds: dict = dataclasses.field(default_factory=dict)
    throughput: dict = dataclasses.field(default_factory=dict)
    per_clip: dict = dataclasses.field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [name for name in self.per_frame if name not in (COPY_LAST, VQ_RECON)]

    def model_videos(self, model: str = MODEL) -> dict:
        """The kept ``cond``, ``real`` and ``fake`` videos of one model."""
        videos = {k: v for k, v in self.videos.items() if k != "fake"}
        if model in self.videos.get("fake", {}):
            videos["fake"] = self.videos["fake"][model]
        return videos


@dataclasses.dataclass
class Throughput:
    """A model's ``predict_fn`` calls after the first of each run (whose time includes
    compiling the program; every later call has the same shapes and reuses it): how many
    there were of ``calls`` in all, the predicted frames of the test clips they returned
    (``pred_frames`` x real clips of the batch, padding left out) and the seconds they took.
    A resumed evaluation continues the counts (``state``) and leaves out its own first call."""

    calls: int = 0
    timed_calls: int = 0
    frames: int = 0
    seconds: float = 0.0
    compiled: bool = dataclasses.field(default=False, compare=False)

    def add(self, frames: int, seconds: float) -> None:
        """One call: the first of a run is counted only; later ones are timed."""
        if self.compiled:
            self.timed_calls += 1
            self.frames += frames
            self.seconds += seconds
        self.compiled = True
        self.calls += 1

    def state(self) -> dict:
        """The counts, for ``Throughput(**state)`` in a resumed run."""
        return {
            "calls": self.calls,
            "timed_calls": self.timed_calls,
            "frames": self.frames,
            "seconds": self.seconds,
        }

    def summary(self, device: str | None = None) -> dict:
        """``predicted_frames_per_second`` (None when there was no call after the first) and
        how it was measured, for ``metrics.json``."""
        entry: dict = {"predicted_frames_per_second": None}
        untimed = self.calls - self.timed_calls
        if self.timed_calls and self.seconds > 0:
            entry["predicted_frames_per_second"] = self.frames / self.seconds
            calls = (
                f"predict calls 2..{self.calls} of {self.calls} (one per batch and sample; "
                f"the first, which compiles, left out)"
                if untimed == 1
                else f"{self.timed_calls} of {self.calls} predict calls (one per batch and "
                f"sample; the first of each of the {untimed} runs of this resumed evaluation, "
                f"which compile, left out)"
            )
            entry["measured"] = (
                f"{calls}: {self.frames} predicted frames "
                f"(pred frames x clips x samples, padding clips left out) in "
                f"{self.seconds:.3f} s of prediction alone (no metrics, FVD or data loading)"
            )
        else:
            entry["measured"] = (
                f"not measured: {self.calls} predict call(s), and the first one's time "
                f"includes compilation; evaluate more clips than eval.batch_size, or more "
                f"samples, for a figure without it"
            )
        if device:
            entry["device"] = device
        return entry


class _Accumulator:
    """Collects per-frame metrics and FVD features batch by batch for several systems.

    Made at the first batch (its frame size decides LPIPS); ``num_clips`` decides which
    FVD variants are collected, the clips actually scored which are reported. Each batch's
    values are one record (``end_batch``), which a resumed evaluation adds back
    (``add_record``) instead of recomputing.
    """

    def __init__(
        self,
        lpips_params,
        feature_fn,
        fvd_unavailable: str | None,
        *,
        frame_size: tuple[int, int],
        num_clips: int,
        cond_frames: int,
        pred_frames: int,
        vq_unavailable: str | None,
        metric_style: str = "predvdm",
    ):
        self.metric_style = metric_style
        check_lpips_is_alexnet(lpips_params)
        self.lpips_note = lpips_unavailable_reason(
            lpips_params, *lpips_frame_size(metric_style, *frame_size)
        )
        self.lpips_params = None if self.lpips_note else lpips_params
        self.feature_fn = feature_fn
        if feature_fn is None:
            self.fvd_unavailable = fvd_unavailable or "no feature extractor (I3D) given"
        else:
            self.fvd_unavailable = None
        self.cond_frames, self.pred_frames = cond_frames, pred_frames
        self.vq_unavailable = vq_unavailable
        fvd_notes = fvd_skip_reasons(
            num_clips, cond_frames, pred_frames, self.fvd_unavailable, vq_unavailable
        )
        self.variants = [name for name, skip in fvd_notes.items() if skip is None]
        self.batches: list[dict] = []
        self.current = _empty_record()
        self.samples: dict = {}  # this batch's, per system: add_fake_sample's values

    def add_real(self, cond01: np.ndarray, future01: np.ndarray) -> None:
        features = {}
        for name in self.variants:
            video = REAL_VIDEO[name]
            if video not in features:
                features[video] = self.feature_fn(self._fvd_video(video, cond01, future01))
            self.current["real_features"][name] = features[video]

    def add_fake_sample(
        self,
        system: str,
        real: jax.Array,
        fake: jax.Array,
        cond01: np.ndarray | None,
        valid: np.ndarray,
        vq_cond01: np.ndarray | None = None,
    ) -> dict:
        """The next sample of ``system`` in this batch, ``(B, pred, H, W, C)`` in [-1, 1];
        ``vq_cond01``: the VQ reconstructions of the cond frames, in front of the fakes of
        ``vq-cond+pred``. Returns its values (host arrays of the real clips), which
        ``add_sample_record`` takes back."""
        values: dict = {"per_frame": {}, "clip_values": {}, "fake_features": {}}
        frame_metrics = _frame_metrics(real, fake, self.lpips_params, self.metric_style)
        for metric, value in frame_metrics.items():
            target = values["clip_values" if metric == VIDEO_PSNR else "per_frame"]
            target[metric] = to_host(value)[valid]
        if self.variants:
            fake01 = np.asarray(to_host(to_unit_range(fake))[valid], np.float32)
            for name in self.variants:
                front = vq_cond01 if name == VQ_COND else cond01
                video = self._fvd_video(name, front, fake01)
                values["fake_features"][name] = self.feature_fn(video)
        self.add_sample_record(system, values)
        return values

    def add_sample_record(self, system: str, values: Mapping[str, Any]) -> None:
        """One sample's values (``add_fake_sample``'s), computed now or by an earlier run."""
        self.samples.setdefault(system, []).append(values)

    def end_batch(self) -> dict:
        """The batch's values (``per_frame`` / ``clip_values`` / ``real_features`` /
        ``fake_features``, host arrays, samples stacked on axis 1), kept; the next ``add_*``
        start a new batch."""
        record = self.current
        for system, samples in self.samples.items():
            for part in ("per_frame", "clip_values"):
                for metric in samples[0][part]:
                    stacked = np.stack([sample[part][metric] for sample in samples], axis=1)
                    record[part].setdefault(system, {})[metric] = stacked
            for name in samples[0]["fake_features"]:
                stacked = np.stack([sample["fake_features"][name] for sample in samples], axis=1)
                record["fake_features"].setdefault(name, {})[system] = stacked
        self.current, self.samples = _empty_record(), {}
        self.batches.append(record)
        return record

    def add_record(self, record: Mapping[str, Any]) -> None:
        """An ``end_batch`` record of an earlier run, as though the batch were scored now."""
        self.batches.append({name: record.get(name, {}) for name in _empty_record()})

    @staticmethod
    def _fvd_video(variant: str, cond01: np.ndarray, future01: np.ndarray) -> np.ndarray:
        return future01 if variant == "pred-only" else np.concatenate([cond01, future01], axis=1)

    def _concatenated(self, part: str, *keys: str) -> np.ndarray:
        chunks = []
        for batch in self.batches:
            value = batch[part]
            for key in keys:
                value = value[key]
            chunks.append(value)
        return np.concatenate(chunks)

    def per_frame(self) -> dict:
        return {
            system: {
                metric: self._concatenated("per_frame", system, metric) for metric in by_metric
            }
            for system, by_metric in self.batches[0]["per_frame"].items()
        }

    def features(self) -> dict:
        return {
            name: {
                "real": self._concatenated("real_features", name),
                "fake": {
                    system: self._concatenated("fake_features", name, system)
                    for system in self.batches[0]["fake_features"][name]
                },
            }
            for name in self.variants
            if name in self.batches[0]["real_features"]
        }

    def result(
        self,
        videos: dict,
        seconds: dict,
        predict_seconds: dict | None = None,
        throughput: dict | None = None,
    ) -> EvaluationResult:
        per_frame = self.per_frame()
        clips = next(iter(per_frame.values()))["ssim"].shape[0]
        fvd_notes = fvd_skip_reasons(
            clips, self.cond_frames, self.pred_frames, self.fvd_unavailable, self.vq_unavailable
        )
        features = self.features() if clips >= fvd_lib.MIN_FVD_VIDEOS else {}
        return EvaluationResult(
            per_frame,
            features,
            videos,
            self.lpips_note,
            fvd_notes,
            seconds,
            predict_seconds or {},
            throughput or {},
            {
                system: {"psnr": self._concatenated("clip_values", system, VIDEO_PSNR)}
                for system in self.batches[0]["clip_values"]
            },
        )


def _empty_record() -> dict:
    """One batch's values: ``per_frame[system][metric]`` ``(B, samples, frames)``,
    ``clip_values[system][video_psnr]`` ``(B, samples)``, ``real_features[variant]``
    ``(B, D)`` and ``fake_features[variant][system]`` ``(B, samples, D)``."""
    return {"per_frame": {}, "clip_values": {}, "real_features": {}, "fake_features": {}}


def check_lpips_is_alexnet(lpips_params: Any) -> None:
    """A ValueError for LPIPS-VGG16 params (taming's VQ loss): PredVDM and MCVD report
    LPIPS-AlexNet, and a VGG16 score would pass for one. None (no LPIPS) passes."""
    if lpips_params is not None and lpips_lib.trunk_of(lpips_params) == lpips_lib.VGG16:
        raise ValueError(
            "the evaluation's LPIPS weights (eval.lpips_params) are LPIPS-VGG16, but PredVDM and "
            "MCVD report LPIPS-AlexNet; convert AlexNet weights with scripts/convert_lpips.py "
            "--alexnet=<alexnet.pth> and set eval.lpips_params to that file"
        )


def load_evaluation_lpips_params(path: str | os.PathLike | None) -> Any:
    """``lpips.load_lpips_params(path)`` for scoring: None when unset, and VGG16 weights refused
    (``check_lpips_is_alexnet``) before any sampling."""
    lpips_params = lpips_lib.load_lpips_params(path)
    check_lpips_is_alexnet(lpips_params)
    return lpips_params


def lpips_unavailable_reason(lpips_params: Any, height: int, width: int) -> str | None:
    """Why LPIPS cannot be computed (None when it can)."""
    if lpips_params is None:
        return (
            "unavailable: no LPIPS weights; convert them with scripts/convert_lpips.py and set "
            "eval.lpips_params"
        )
    if min(height, width) < lpips_lib.MIN_INPUT_SIZE:
        return (
            f"unavailable: frames of {height}x{width} are below LPIPS-AlexNet's "
            f"{lpips_lib.MIN_INPUT_SIZE}x{lpips_lib.MIN_INPUT_SIZE} minimum"
        )
    return None


def fvd_frames(variant: str, cond_frames: int, pred_frames: int) -> int:
    """Frames in each video of an FVD variant."""
    return pred_frames if variant == "pred-only" else cond_frames + pred_frames


def fvd_skip_reasons(
    num_clips: int,
    cond_frames: int,
    pred_frames: int,
    unavailable: str | None,
    vq_unavailable: str | None = None,
) -> dict:
    """Per FVD variant: None when it is computed, else why it is skipped (``vq_unavailable``:
    why the cond frames cannot be VQ-reconstructed for ``vq-cond+pred``, None when they can)."""
    reasons = {}
    for name in FVD_VARIANTS:
        frames = fvd_frames(name, cond_frames, pred_frames)
        if unavailable is not None:
            reasons[name] = f"skipped: {unavailable}"
        elif num_clips < fvd_lib.MIN_FVD_VIDEOS:
            reasons[name] = (
                f"skipped: {num_clips} clip(s); FVD needs at least {fvd_lib.MIN_FVD_VIDEOS} "
                f"(256 for numbers comparable with papers)"
            )
        elif name != "pred-only" and cond_frames == 0:
            reasons[name] = "skipped: no conditioning frames (the same as pred-only)"
        elif name == VQ_COND and vq_unavailable is not None:
            reasons[name] = f"skipped: {vq_unavailable}"
        elif frames < fvd_lib.MIN_FVD_FRAMES:
            reasons[name] = f"skipped: {frames} frames; I3D needs at least {fvd_lib.MIN_FVD_FRAMES}"
        else:
            reasons[name] = None
    return reasons


def _check_prediction(frames: Any, expected: tuple, what: str) -> None:
    if tuple(frames.shape) != tuple(expected):
        raise ValueError(
            f"{what} returned frames of shape {tuple(frames.shape)}, expected {tuple(expected)} "
            f"(batch, pred_frames, H, W, C); check its pred_frames and channels."
        )
    if not bool(to_host(jnp.all(jnp.isfinite(frames)))):
        raise ValueError(
            f"{what} returned NaN or Inf frames: the weights are not finite or the sampler "
            f"diverged; check the run's loss curve, or the sampler settings (config.sampling)."
        )


@dataclasses.dataclass(frozen=True)
class Resume:
    """What an earlier, stopped run of the same evaluation finished (``progress.Progress``):
    the records of its first ``len(batches)`` batches (``on_batch``'s) and, of the batch after
    them, the records of its finished model samples ``{(system, sample): record}``
    (``on_sample``'s)."""

    batches: Sequence[Mapping[str, Any]] = ()
    samples: Mapping[tuple[str, int], Mapping[str, Any]] = dataclasses.field(default_factory=dict)


class _Timings:
    """Seconds spent reconstructing and per model predicting, and each model's
    ``Throughput``; carried by every record so that a resumed run continues them."""

    def __init__(self, names: Iterable[str]):
        self.seconds = {"reconstruct": 0.0}
        self.predict_seconds = {name: 0.0 for name in names}
        self.throughput = {name: Throughput() for name in names}

    def state(self) -> dict:
        return {
            "seconds": dict(self.seconds),
            "predict_seconds": dict(self.predict_seconds),
            "throughput": {name: t.state() for name, t in self.throughput.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.seconds = dict(state["seconds"])
        self.predict_seconds = dict(state["predict_seconds"])
        self.throughput = {
            name: Throughput(**state["throughput"][name]) for name in self.throughput
        }


def evaluate(
    batches: Iterable[Mapping[str, Any]],
    predict_fn: PredictFn | Mapping[str, PredictFn],
    reconstruct_fn: ReconstructFn | None,
    protocol: Protocol,
    *,
    cond_frames: int,
    pred_frames: int,
    key: jax.Array,
    lpips_params: Any = None,
    feature_fn: FeatureFn | None = None,
    fvd_unavailable: str | None = None,
    keep_videos: int = 0,
    on_prediction: Callable[[int], Any] | None = None,
    on_predictions: Callable[[str, int, int, jax.Array, jax.Array, np.ndarray], Any] | None = None,
    resume: Resume = Resume(),
    on_batch: Callable[[int, dict], Any] | None = None,
    on_sample: Callable[[int, str, int, dict], Any] | None = None,
) -> EvaluationResult:
    """Runs ``protocol`` over ``batches`` of test clips.

    ``batches`` yield ``video`` ``(B, T >= cond + pred, H, W, C)`` in [-1, 1] and
    optionally ``mask`` (1 for real clips, 0 for padding). ``predict_fn(cond, keys)``
    returns ``(B, pred_frames, H, W, C)`` in [-1, 1] from one key per clip: sample ``s`` of
    the ``i``-th real clip read (padding not counted) has ``fold_in(fold_in(key, s), i)``, so
    the numbers do not depend on the batch size or device count. A mapping
    ``{name: predict_fn}`` scores several models (e.g. samplers) on the same clips and keys,
    with the real clips' features and the baselines computed once; a single function is
    ``model``; no model (``{}``) scores the baselines alone, the VQ reconstructions then being
    the kept ``fake`` videos (under ``vq_reconstruction``).
    ``reconstruct_fn(video)`` (same shape in and out) gives the VQ baseline and the fakes'
    cond frames of FVD ``vq-cond+pred``; None skips both. ``feature_fn`` maps [0, 1] videos
    ``(N, T, H, W, C)`` to ``(N, D)`` features (I3D logits); None skips FVD with the reason
    ``fvd_unavailable``.
    ``on_prediction(1)`` is called after every ``predict_fn`` call (progress bars);
    ``on_predictions(name, b, s, video, frames, valid)`` after each one, with the batch's
    clips, the sample's frames and the mask of real (not padding) clips
    (``predictions.PredictionWriter``). ``on_sample(b, name, s, record)`` then gives that
    sample's record (its values, kept frames, the timings so far) and ``on_batch(b, record)``
    each finished batch's (``progress.Progress``). ``resume`` (``Resume``), what an earlier run
    of the same evaluation finished, replaces scoring those batches and samples (the clips are
    still read), so a resumed evaluation gives an uninterrupted one's numbers.
    """
    if protocol.num_samples < 1:
        raise ValueError(f"protocol.num_samples must be >= 1, got {protocol.num_samples}.")
    predict_fns = {MODEL: predict_fn} if callable(predict_fn) else dict(predict_fn)
    clashing = set(predict_fns) & {COPY_LAST, VQ_RECON}
    if clashing or not (predict_fns or reconstruct_fn):
        raise ValueError(
            f"predict_fn needs models, none named like a baseline (or none at all, with a "
            f"reconstruct_fn: the baselines alone); got {sorted(predict_fns)}."
        )
    accumulator = None
    kept_fakes = list(predict_fns) or [VQ_RECON]
    videos: dict = {"cond": [], "real": [], "fake": {name: [] for name in kept_fakes}}
    kept = 0
    timings = _Timings(predict_fns)
    first_clip = 0
    for batch_index, batch in enumerate(batches):
        video = batch["video"]
        if video.ndim != 5 or video.shape[1] < cond_frames + pred_frames:
            raise ValueError(
                f"evaluation clips must be (B, T, H, W, C) with T >= cond + pred = "
                f"{cond_frames + pred_frames}; got {tuple(video.shape)}."
            )
        batch_size, _, height, width, channels = video.shape
        mask = batch.get("mask")
        valid = np.ones(batch_size, bool) if mask is None else to_host(mask) > 0.5
        clips = jnp.asarray(first_clip + np.maximum(np.cumsum(valid) - 1, 0))  # padding: any
        first_clip += int(valid.sum())
        if accumulator is None:
            accumulator = _Accumulator(
                lpips_params,
                feature_fn,
                fvd_unavailable,
                frame_size=(height, width),
                num_clips=protocol.num_clips,
                cond_frames=cond_frames,
                pred_frames=pred_frames,
                vq_unavailable=None if reconstruct_fn is not None else "no VQ (reconstruct_fn)",
                metric_style=protocol.metric_style,
            )
        if batch_index < len(resume.batches):
            record = resume.batches[batch_index]
            accumulator.add_record(record["values"])
            kept += _add_videos(videos, record["videos"])
            timings.restore(record["timings"])
            continue
        finished = resume.samples if batch_index == len(resume.batches) else {}
        take = np.flatnonzero(valid)[: max(keep_videos - kept, 0)]
        cond = video[:, :cond_frames]
        future = video[:, cond_frames : cond_frames + pred_frames]
        cond01 = vq_cond01 = None
        if accumulator.variants:
            cond01 = np.asarray(to_host(to_unit_range(cond))[valid], np.float32)
            accumulator.add_real(
                cond01, np.asarray(to_host(to_unit_range(future))[valid], np.float32)
            )
        if VQ_COND in accumulator.variants:
            start = time.perf_counter()
            vq_cond = jax.block_until_ready(reconstruct_fn(cond))
            timings.seconds["reconstruct"] += time.perf_counter() - start
            _check_prediction(
                vq_cond, (batch_size, cond_frames, height, width, channels), "reconstruct_fn"
            )
            vq_cond01 = np.asarray(to_host(to_unit_range(vq_cond))[valid], np.float32)
        expected = (batch_size, pred_frames, height, width, channels)

        first_samples = {}
        for name, predict in predict_fns.items():
            for sample in range(protocol.num_samples):
                record = finished.get((name, sample))
                if record is not None:
                    accumulator.add_sample_record(name, record["values"])
                    timings.restore(record["timings"])
                    if record["kept"] is not None:
                        first_samples[name] = record["kept"]
                    continue
                keys = samplers.clip_keys(jax.random.fold_in(key, sample), clips)
                start = time.perf_counter()
                frames = jax.block_until_ready(predict(cond, keys))
                took = time.perf_counter() - start
                timings.predict_seconds[name] += took
                timings.throughput[name].add(pred_frames * int(valid.sum()), took)
                _check_prediction(frames, expected, f"predict_fn of {name}")
                values = accumulator.add_fake_sample(name, future, frames, cond01, valid, vq_cond01)
                kept_frames = None
                if sample == 0 and len(take):
                    kept_frames = first_samples[name] = to_host(frames)[take]
                if on_prediction is not None:
                    on_prediction(1)
                if on_predictions is not None:
                    on_predictions(name, batch_index, sample, video, frames, valid)
                if on_sample is not None:
                    record = {"values": values, "kept": kept_frames, "timings": timings.state()}
                    on_sample(batch_index, name, sample, record)

        copy_last = jnp.repeat(video[:, cond_frames - 1 : cond_frames], pred_frames, axis=1)
        accumulator.add_fake_sample(COPY_LAST, future, copy_last, cond01, valid, vq_cond01)
        if reconstruct_fn is not None:
            start = time.perf_counter()
            reconstruction = jax.block_until_ready(reconstruct_fn(future))
            timings.seconds["reconstruct"] += time.perf_counter() - start
            _check_prediction(reconstruction, expected, "reconstruct_fn")
            accumulator.add_fake_sample(VQ_RECON, future, reconstruction, cond01, valid, vq_cond01)
            if not predict_fns:
                first_samples[VQ_RECON] = to_host(reconstruction)[take]

        batch_videos = {}
        if len(take):
            batch_videos = {
                "cond": to_host(cond)[take],
                "real": to_host(future)[take],
                "fake": first_samples,
            }
            kept += _add_videos(videos, batch_videos)
        values = accumulator.end_batch()
        if on_batch is not None:
            record = {"values": values, "videos": batch_videos, "timings": timings.state()}
            on_batch(batch_index, record)

    if accumulator is None:
        raise ValueError(
            "the evaluation batches were empty; check the test split and eval.num_clips."
        )
    if kept:
        videos = {
            "cond": np.concatenate(videos["cond"]),
            "real": np.concatenate(videos["real"]),
            "fake": {name: np.concatenate(chunks) for name, chunks in videos["fake"].items()},
        }
    else:
        videos = {}
    return accumulator.result(videos, timings.seconds, timings.predict_seconds, timings.throughput)


def _add_videos(videos: dict, batch_videos: Mapping[str, Any]) -> int:
    """Appends one batch's kept ``cond`` / ``real`` / ``fake[name]`` clips (none: ``{}``);
    returns how many clips that is."""
    if not batch_videos:
        return 0
    videos["cond"].append(batch_videos["cond"])
    videos["real"].append(batch_videos["real"])
    for name, frames in batch_videos["fake"].items():
        videos["fake"][name].append(frames)
    return len(batch_videos["real"])


def summarize(
    result: EvaluationResult,
    protocol: Protocol,
    *,
    cond_frames: int,
    pred_frames: int,
    extra_protocol: Mapping[str, Any] | None = None,
    model: str = MODEL,
    device: str | None = None,
) -> dict:
    """The JSON-ready metrics dict: every number next to the protocol that produced it.

    ``model`` picks which of ``result.models`` is reported as the model; the other
    models of a sweep are left out, the baselines kept; a result without models (the
    baselines alone) has no ``model`` entry. ``throughput`` (when the model
    predicted) gives its predicted frames per second without compilation
    (``Throughput.summary``), ``device`` naming what it ran on.
    """
    clips = int(next(iter(result.per_frame.values()))["ssim"].shape[0])
    description = {
        "name": protocol.name,
        "num_clips": clips,
        "num_samples": protocol.num_samples,
        "aggregations": list(protocol.aggregations),
        "cond_frames": cond_frames,
        "pred_frames": pred_frames,
        "metric_frames": "predicted frames only: clip frames "
        f"{cond_frames + 1}..{cond_frames + pred_frames}",
        "value_range": "frames clamped to [-1, 1], mapped to [0, 1]; no resize for SSIM/PSNR"
        + ("" if is_mcvd_style(protocol.metric_style) else "/LPIPS"),
        "metric_style": protocol.metric_style,
        "ssim": METRIC_STYLE_NOTES[protocol.metric_style]["ssim"],
        "psnr": METRIC_STYLE_NOTES[protocol.metric_style]["psnr"],
        "lpips": METRIC_STYLE_NOTES[protocol.metric_style]["lpips"],
        "best_of_n": "per clip and per metric the sample with the best mean over frames (MCVD / "
        "ExtDM)"
        + (
            "; MCVD's PSNR: the best video-level PSNR, 10 log10(1 / mean frame MSE)"
            if is_mcvd_style(protocol.metric_style)
            else ""
        ),
        "fvd": {
            "cond+pred": "real cond frames + true / predicted future, all in [0, 1]",
            "pred-only": "predicted frames only, in [0, 1]",
            VQ_COND: "as cond+pred, but the fakes' cond frames are VQ reconstructions of the "
            "real ones (PredVDM's fvd-condXpredY)",
            "all_samples": "every clip x sample fake vs one real per clip (MCVD avg_fvd)",
            "trajectory_mean": "mean over samples s of FVD(sample s of every clip, reals) "
            "(MCVD fvd_traj_mean, the MCVD paper's number)",
        },
    }
    description.update(extra_protocol or {})
    systems = {}
    for system, by_metric in result.per_frame.items():
        if system != model and system in result.models:
            continue
        entry = {}
        best_of_n = protocol.best_of_n and system == model
        clip_values = result.per_clip.get(system, {})
        for metric in METRICS:
            if metric in by_metric:
                summary = aggregate_metric(
                    by_metric[metric], HIGHER_IS_BETTER[metric], best_of_n, clip_values.get(metric)
                )
                summary.pop("best_sample", None)
                entry[metric] = summary
            else:
                entry[metric] = result.lpips_note or "unavailable"
        if PIXEL_MSE in by_metric:
            entry[PIXEL_MSE] = pixel_mse_summary(by_metric[PIXEL_MSE])
        fvd_entry = {}
        for variant in FVD_VARIANTS:
            note = result.fvd_notes.get(variant)
            if note is None and variant in result.features:
                features = result.features[variant]
                fvd_entry[variant] = fvd_from_features(features["real"], features["fake"][system])
                fvd_entry[variant]["frames"] = fvd_frames(variant, cond_frames, pred_frames)
            else:
                fvd_entry[variant] = note or "skipped"
        entry["fvd"] = fvd_entry
        entry["num_samples"] = int(by_metric["ssim"].shape[1])
        systems[system] = entry
    seconds = dict(result.seconds)
    if model in result.predict_seconds:
        seconds = {"predict": result.predict_seconds[model], **seconds}
    metrics = {
        "protocol": description,
        **({"model": systems.pop(model)} if model in systems else {}),
        "baselines": systems,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
    }
    if model in result.throughput:
        metrics["throughput"] = result.throughput[model].summary(device)
    return metrics


def evaluate_video_sets(
    pairs: Iterable[Mapping[str, Any]],
    *,
    cond_frames: int = 0,
    lpips_params: Any = None,
    feature_fn: FeatureFn | None = None,
    fvd_unavailable: str | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    metric_style: str = "predvdm",
) -> dict:
    """Scores paired videos: batches ``{'real', 'fake'}`` of ``(B, T, H, W, C)`` in [-1, 1].

    Frames after the first ``cond_frames`` of each fake are compared with the same
    frames of its real video (SSIM / PSNR / LPIPS, one sample per video). FVD:
    ``pred-only`` on those frames and, when ``cond_frames > 0``, ``cond+pred`` on
    the real cond frames followed by them (``vq-cond+pred`` is skipped: no VQ).
    ``metric_style`` as ``Protocol.metric_style``. Returns a ``summarize`` dict.
    """
    _checked_style(metric_style)
    if cond_frames < 0:
        raise ValueError(f"cond_frames must be >= 0, got {cond_frames}.")
    accumulator = None
    frames = None
    for pair in progress(pairs) if progress is not None else pairs:
        real, fake = jnp.asarray(pair["real"]), jnp.asarray(pair["fake"])
        if real.shape != fake.shape or real.ndim != 5:
            raise ValueError(
                f"real and fake videos must have the same shape (B, T, H, W, C); got "
                f"{tuple(real.shape)} and {tuple(fake.shape)}."
            )
        if real.shape[1] <= cond_frames:
            raise ValueError(
                f"videos of {real.shape[1]} frames leave nothing to score after "
                f"cond_frames={cond_frames}; lower cond_frames."
            )
        if accumulator is None:
            frames = real.shape[1]
            accumulator = _Accumulator(
                lpips_params,
                feature_fn,
                fvd_unavailable,
                frame_size=real.shape[2:4],
                num_clips=fvd_lib.MIN_FVD_VIDEOS,  # the clip count is known at the end
                cond_frames=cond_frames,
                pred_frames=frames - cond_frames,
                vq_unavailable="scoring video sets has no VQ to reconstruct the cond frames",
                metric_style=metric_style,
            )
        elif real.shape[1] != frames:
            raise ValueError(
                f"all videos must have {frames} frames; got a batch of {real.shape[1]}."
            )
        cond01 = np.asarray(to_unit_range(real[:, :cond_frames]), np.float32)
        if accumulator.variants:
            accumulator.add_real(
                cond01, np.asarray(to_unit_range(real[:, cond_frames:]), np.float32)
            )
        accumulator.add_fake_sample(
            MODEL,
            real[:, cond_frames:],
            fake[:, cond_frames:],
            cond01,
            np.ones(real.shape[0], bool),
        )
        accumulator.end_batch()
    if accumulator is None:
        raise ValueError("no videos to score; check --real_dir and --fake_dir.")
    result = accumulator.result({}, {})
    protocol = Protocol(
        "video_sets",
        num_samples=1,
        best_of_n=False,
        num_clips=int(result.per_frame[MODEL]["ssim"].shape[0]),
        metric_style=metric_style,
    )
    return summarize(result, protocol, cond_frames=cond_frames, pred_frames=frames - cond_frames)

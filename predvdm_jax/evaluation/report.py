"""Evaluation outputs: metrics JSON, per-frame plots, sample videos, Markdown tables.

Videos are taken in [-1, 1] (the in-memory convention) and written as uint8;
grayscale stays 1 channel (GIF with a gray palette, PNG mode L).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import resource
import shutil
import sys
import tempfile
from typing import Any, Mapping

import numpy as np

from predvdm_jax import atomic_io, folders
from predvdm_jax.data import hdf5, video_files
from predvdm_jax.evaluation.images import SEPARATOR_PIXELS, paired_grid, to_uint8
from predvdm_jax.evaluation.protocol import FVD_VARIANTS

METRIC_LABELS = {"ssim": "SSIM ↑", "psnr": "PSNR (dB) ↑", "lpips": "LPIPS ↓"}
SYSTEM_LABELS = {
    "model": "model",
    "copy_last_frame": "copy last frame",
    "vq_reconstruction": "VQ reconstruction",
}


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics_json(path: str, metrics: Mapping[str, Any]) -> str:
    """Writes ``metrics`` as indented JSON (numpy values converted, NaN/inf as null)."""
    text = json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_io.write_text(path, text + "\n")
    return path


def _model_row(metrics: Mapping[str, Any]) -> dict:
    """``{"model": entry}``, or nothing for a VQ-only evaluation (baselines only)."""
    return {"model": metrics["model"]} if "model" in metrics else {}


def per_frame_curves(metrics: Mapping[str, Any]) -> dict:
    """``{metric: {label: values per frame}}`` for the model (each aggregation) and the baselines."""
    systems = {**_model_row(metrics), **metrics.get("baselines", {})}
    curves: dict = {}
    for metric in METRIC_LABELS:
        for system, entry in systems.items():
            summary = entry.get(metric)
            if not isinstance(summary, Mapping):
                continue
            for aggregation, values in summary["per_frame"].items():
                label = SYSTEM_LABELS.get(system, system)
                if system == "model":
                    label = f"{label} ({aggregation.replace('_', ' ')})"
                curves.setdefault(metric, {})[label] = list(values)
    return curves


def plot_per_frame(
    path: str,
    curves: Mapping[str, Mapping[str, Any]],
    first_frame: int = 1,
    title: str | None = None,
) -> str:
    """One panel per metric (SSIM / PSNR / LPIPS) of value vs frame index, one line per system.

    ``curves`` as from ``per_frame_curves``; ``first_frame`` is the index of the
    first predicted frame in the clip (cond_frames + 1), so the x axis is the horizon.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [metric for metric in METRIC_LABELS if curves.get(metric)]
    panels += [metric for metric in curves if metric not in METRIC_LABELS and curves[metric]]
    if not panels:
        raise ValueError("no per-frame curves to plot; pass {metric: {label: values}}.")
    figure = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for index, metric in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for label, values in curves[metric].items():
            frames = np.arange(first_frame, first_frame + len(values))
            axes.plot(frames, values, marker="." if len(values) <= 40 else None, label=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("frame index")
        axes.set_ylabel(METRIC_LABELS.get(metric, metric))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    atomic_io.write_file(path, lambda temporary: figure.savefig(temporary, dpi=100))
    return path


def _side_by_side(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """``(T, H, W, C)`` pairs → ``(T, H, 2W + sep, C)`` with a white separator."""
    separator = np.full(real.shape[:2] + (SEPARATOR_PIXELS,) + real.shape[3:], 255, np.uint8)
    return np.concatenate([real, separator, fake], axis=2)


def _squeeze_gray(frames: np.ndarray) -> np.ndarray:
    return frames[..., 0] if frames.shape[-1] == 1 else frames


def mp4_writer_available() -> bool:
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def _mp4_frames(frames: np.ndarray) -> list[np.ndarray]:
    """RGB frames padded with white to an even height and width: H.264 in yuv420p, the
    pixel format players expect, halves the colour resolution and refuses odd sizes."""
    rgb = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames
    pad = ((0, 0), (0, rgb.shape[1] % 2), (0, rgb.shape[2] % 2), (0, 0))
    return list(np.pad(rgb, pad, constant_values=255))


def _write_mp4(imageio_v2: Any, path: str, frames: list[np.ndarray], fps: int) -> None:
    """H.264 ``frames`` to ``path`` through imageio-ffmpeg."""
    with video_files.without_jax_fork_warning():
        imageio_v2.mimwrite(path, frames, format="FFMPEG", fps=fps, macro_block_size=1)


def write_videos(
    directory: str,
    real: Any,
    fake: Any,
    cond: Any = None,
    *,
    fps: int = 10,
    max_videos: int = 8,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> dict:
    """Writes side-by-side ``ground truth | prediction`` videos and a frame grid.

    ``real`` and ``fake`` are ``(B, T, H, W, C)`` (C = 1 or 3) future frames,
    ``cond`` optional ``(B, Tc, H, W, C)`` conditioning frames shown in front of
    both. Per video ``video_NNNN.gif`` (and ``.mp4``, H.264, when imageio-ffmpeg is
    installed; an odd height or width gets one white row or column); ``grid.png`` has two rows per video (ground truth, prediction).
    Every file is written into a staging folder first and moved into place once all are
    written, so a failure part-way (a full disk) leaves an earlier run's outputs as they were.
    Returns ``{'gif': [...], 'mp4': [...], 'grid': path, 'notes': [...]}``.
    """
    real, fake = to_uint8(real, value_range), to_uint8(fake, value_range)
    if real.ndim != 5 or real.shape != fake.shape or real.shape[-1] not in (1, 3):
        raise ValueError(
            f"write_videos needs real and fake of the same shape (B, T, H, W, C) with C "
            f"1 or 3; got {real.shape} and {fake.shape}."
        )
    if cond is not None:
        cond = to_uint8(cond, value_range)
        if cond.ndim != 5 or cond.shape[0] != real.shape[0] or cond.shape[2:] != real.shape[2:]:
            raise ValueError(
                f"cond must be (B, Tc, H, W, C) matching the videos {real.shape}; got {cond.shape}."
            )
        real = np.concatenate([cond, real], axis=1)
        fake = np.concatenate([cond, fake], axis=1)
    import imageio.v2 as imageio_v2
    import imageio.v3 as iio

    check_output_dir(directory)
    os.makedirs(directory, exist_ok=True)
    written: dict = {"gif": [], "mp4": [], "notes": []}
    count = min(max_videos, real.shape[0])
    with_mp4 = mp4_writer_available()
    if not with_mp4:
        written["notes"].append(
            "MP4 skipped: imageio-ffmpeg is not installed (pip install imageio-ffmpeg)"
        )
    staging = tempfile.mkdtemp(prefix=".tmp-videos-", dir=directory)
    staged = lambda name: os.path.join(staging, name)
    try:
        for index in range(count):
            frames = _side_by_side(real[index], fake[index])
            gray = _squeeze_gray(frames)
            name = f"video_{index:04d}.gif"
            atomic_io.write_file(
                staged(name),
                lambda temporary: iio.imwrite(temporary, gray, duration=1000.0 / fps, loop=0),
            )
            written["gif"].append(os.path.join(directory, name))
            if with_mp4:
                name = f"video_{index:04d}.mp4"
                rgb = _mp4_frames(frames)
                atomic_io.write_file(
                    staged(name), lambda temporary: _write_mp4(imageio_v2, temporary, rgb, fps)
                )
                written["mp4"].append(os.path.join(directory, name))
        written["grid"] = os.path.join(directory, "grid.png")
        grid = _squeeze_gray(paired_grid(real[:count], fake[:count]))
        atomic_io.write_file(staged("grid.png"), lambda temporary: iio.imwrite(temporary, grid))
        for path in written["gif"] + written["mp4"] + [written["grid"]]:
            os.replace(staged(os.path.basename(path)), path)
        atomic_io.sync(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale_videos(directory, set(written["gif"]) | set(written["mp4"]))
    return written


_VIDEO_NAME = re.compile(r"video_\d{4,}\.(gif|mp4)")  # the names write_videos gives its videos


def _remove_stale_videos(directory: str, kept: set[str]) -> None:
    """Deletes ``video_NNNN.gif`` / ``.mp4`` files that an earlier, longer run left in
    ``directory`` and this run did not rewrite (only files of that naming pattern), so the
    folder holds this run's videos alone."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _VIDEO_NAME.fullmatch(name) and path not in kept and os.path.isfile(path):
            os.remove(path)


def clear_videos(directory: str) -> None:
    """Removes what ``write_videos`` writes (videos and ``grid.png``) from ``directory``, and the
    folder when nothing else is left in it."""
    if not os.path.isdir(directory):
        return
    _remove_stale_videos(directory, set())
    grid = os.path.join(directory, "grid.png")
    if os.path.isfile(grid):
        os.remove(grid)
    if not os.listdir(directory):
        os.rmdir(directory)


METRICS_FILE, TABLE_FILE, PER_FRAME_FILE = "metrics.json", "metrics.md", "per_frame.png"
EVALUATION_FILES = (METRICS_FILE, TABLE_FILE, PER_FRAME_FILE)
"""The files ``write_evaluation`` writes beside ``VIDEOS_DIR``."""
VIDEOS_DIR = "videos"


def clear_evaluation(out_dir: str) -> None:
    """Removes what ``write_evaluation`` wrote in ``out_dir`` (by name; nothing else)."""
    for name in EVALUATION_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    clear_videos(os.path.join(out_dir, VIDEOS_DIR))


def check_output_dir(
    path: str | os.PathLike, flag: str = "--out", example: str = "eval/<name>"
) -> None:
    """A ``ValueError`` unless ``path`` can be an output folder (new or existing): it is no
    file, lies under no file, and is no bundle, training workdir or data split (reports would
    mix with the model's or the data's files; the error suggests ``example``). Scripts call it
    before any work, so a bad ``--out`` fails at once rather than after the predictions."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{flag} is empty; pass an output folder")
    existing = atomic_io.file_in_the_way(path)
    if existing == os.path.abspath(path):
        raise ValueError(
            f"{flag} {path!r} is a file; pass a folder for the outputs (a new one, or an "
            "earlier output folder to overwrite)"
        )
    if existing is not None:
        raise ValueError(
            f"{flag} {path!r} lies under {existing!r}, which is a file, not a folder; pass "
            "another output folder"
        )
    problem = folders.model_folder(path)
    if not problem and hdf5.shard_paths(path):
        problem = "is a data split (it holds shard files)"
    if problem:
        raise ValueError(
            f"{flag} {path!r} {problem}; pass a folder of its own for the outputs (e.g. {example})"
        )


def protocol_line(protocol: Mapping[str, Any], what: str) -> str:
    """The line above a table saying which numbers it holds."""
    return (
        f"Protocol `{protocol.get('name')}`: {protocol.get('num_clips')} clips × "
        f"{protocol.get('num_samples')} samples, {protocol.get('cond_frames')} → "
        f"{protocol.get('pred_frames')} frames; {what}."
    )


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_head(header: list[str]) -> list[str]:
    return [table_row(header), "|" + "---|" * len(header)]


def _format(summary: Any, aggregation: str, digits: int) -> str:
    if not isinstance(summary, Mapping) or aggregation not in summary:
        return "n/a"
    entry = summary[aggregation]
    return f"{entry['value']:.{digits}f} ± {entry['std']:.{digits}f}"


def unavailable_notes(entry: Mapping[str, Any]) -> list[str]:
    """Markdown list items saying why a system's LPIPS or FVD values are missing (``n/a``)."""
    notes = [f"- LPIPS: {entry['lpips']}"] if isinstance(entry.get("lpips"), str) else []
    return notes + [
        f"- FVD {variant}: {note}"
        for variant, note in entry.get("fvd", {}).items()
        if isinstance(note, str)
    ]


def markdown_table(metrics: Mapping[str, Any]) -> str:
    """A Markdown table: one row per system and aggregation; SSIM, PSNR, LPIPS, FVD columns.

    Unavailable values are ``n/a``; the protocol line above the table says what
    the numbers are (clips, samples, frames).
    """
    protocol = metrics.get("protocol", {})
    systems = {**_model_row(metrics), **metrics.get("baselines", {})}
    fvd_columns = []
    for variant in FVD_VARIANTS:
        for kind in ("all_samples", "trajectory_mean"):
            if any(
                isinstance(entry.get("fvd", {}).get(variant), Mapping) for entry in systems.values()
            ):
                if kind == "trajectory_mean" and protocol.get("num_samples", 1) == 1:
                    continue
                fvd_columns.append((variant, kind))
    header = ["system", "aggregation", "SSIM", "PSNR", "LPIPS"]
    header += [f"FVD {variant} ({kind.replace('_', ' ')})" for variant, kind in fvd_columns]
    lines = []
    if protocol:
        lines += [protocol_line(protocol, "SSIM/PSNR/LPIPS on predicted frames; mean ± std"), ""]
    lines += table_head(header)
    for system, entry in systems.items():
        aggregations = (
            [key for key in entry.get("ssim", {}) if key == "mean" or key.startswith("best_of_")]
            if isinstance(entry.get("ssim"), Mapping)
            else ["mean"]
        )
        for aggregation in aggregations:
            row = [
                SYSTEM_LABELS.get(system, system),
                aggregation.replace("_", " "),
                _format(entry.get("ssim"), aggregation, 4),
                _format(entry.get("psnr"), aggregation, 2),
                _format(entry.get("lpips"), aggregation, 4),
            ]
            for variant, kind in fvd_columns:
                value = entry.get("fvd", {}).get(variant)
                row.append(
                    f"{value[kind]:.1f}"
                    if isinstance(value, Mapping) and aggregation == "mean"
                    else "n/a"
                    if aggregation == "mean"
                    else ""
                )
            lines.append(table_row(row))
    model = metrics.get("model") or next(iter(systems.values()), {})  # VQ-only: a baseline's
    notes = unavailable_notes(model)
    speed = throughput_note(metrics.get("throughput"))
    if speed:
        notes.append(f"- Prediction speed: {speed}")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def frames_per_second(throughput: Any) -> str:
    """``metrics['throughput']``'s predicted frames per second as table text (``n/a``: none)."""
    value = (
        throughput.get("predicted_frames_per_second") if isinstance(throughput, Mapping) else None
    )
    return "n/a" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def throughput_note(throughput: Any) -> str | None:
    """One line on the prediction speed of ``metrics['throughput']`` (None without one)."""
    if not isinstance(throughput, Mapping):
        return None
    device = f"; {throughput['device']}" if throughput.get("device") else ""
    if throughput.get("predicted_frames_per_second") is None:
        return f"{throughput.get('measured', 'not measured')}{device}"
    return (
        f"{frames_per_second(throughput)} predicted frames/s, compilation excluded "
        f"({throughput.get('measured', '')}{device})"
    )


def write_evaluation(
    out_dir: str,
    metrics: Mapping[str, Any],
    videos: Mapping[str, Any] | None = None,
    first_frame: int = 1,
) -> dict:
    """All outputs of one evaluation: ``metrics.json``, ``metrics.md``, ``per_frame.png``, ``videos/``.

    ``videos`` holds ``real`` and ``fake`` (and optionally ``cond``) in [-1, 1].
    Notes about skipped outputs (e.g. MP4) are added to ``metrics.json``.
    """
    check_output_dir(out_dir, "output folder")
    os.makedirs(out_dir, exist_ok=True)
    metrics = dict(metrics)
    paths = {
        "metrics": os.path.join(out_dir, METRICS_FILE),
        "table": os.path.join(out_dir, TABLE_FILE),
    }
    curves = per_frame_curves(metrics)
    if curves:
        paths["per_frame"] = plot_per_frame(
            os.path.join(out_dir, PER_FRAME_FILE),
            curves,
            first_frame,
            title=f"protocol {metrics.get('protocol', {}).get('name', '')}",
        )
    if videos and "real" in videos and len(videos["real"]):
        written = write_videos(
            os.path.join(out_dir, VIDEOS_DIR),
            videos["real"],
            videos["fake"],
            videos.get("cond"),
            max_videos=len(videos["real"]),  # the caller kept as many as it was asked to
        )
        paths["videos"] = os.path.join(out_dir, VIDEOS_DIR)
        if written["notes"]:
            metrics["notes"] = list(metrics.get("notes", [])) + written["notes"]
    else:  # an earlier run's, none this time
        clear_videos(os.path.join(out_dir, VIDEOS_DIR))
    atomic_io.write_text(paths["table"], markdown_table(metrics))
    write_metrics_json(paths["metrics"], metrics)
    return paths

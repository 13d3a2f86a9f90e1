"""Sampler sweeps: one model scored under several ``config.sampling`` settings in one run.

A sweep is written ``"steps=10;steps=100;sampler=dpm_solver_pp,steps=20"``: entries
separated by ``;``, each a comma-separated list of ``config.sampling`` fields; fields an
entry does not name keep the config's values. ``run.evaluate_samplers`` predicts
the same clips with the same keys under every entry and computes the real clips' FVD
features and the baselines once; ``write_sweep`` puts the entries side by side.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import ml_collections

from predvdm_jax import atomic_io
from predvdm_jax import config as config_lib
from predvdm_jax.diffusion import samplers
from predvdm_jax.evaluation import predictions, report
from predvdm_jax.evaluation.protocol import FVD_VARIANTS

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def _parse_value(text: str, default: Any, where: str) -> Any:
    """``text`` as the type of the field's current value."""
    try:
        if isinstance(default, bool):
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError
            return text.lower() in TRUE_WORDS
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise config_lib.ConfigError(
            f"{where}: {text!r} is not of type {type(default).__name__}"
        ) from None
    return text


def parse_sweep(spec: str, config: ml_collections.ConfigDict) -> dict:
    """``{label: sampling}`` for every entry of ``spec``, each validated with ``config``.

    Raises ``ConfigError`` naming the entry for an unknown field, a value of the wrong
    type, an impossible setting (e.g. ``order=4``) or two entries that give the same
    sampler (e.g. DPM-Solver++ entries differing only in ``eta``, which it ignores).
    """
    entries = [entry.strip() for entry in spec.split(";") if entry.strip()]
    if not entries:
        raise config_lib.ConfigError(
            "the sweep is empty; write entries like 'steps=10;sampler=dpm_solver_pp,steps=20'."
        )
    samplings: dict = {}
    fields = config.sampling
    for entry in entries:
        overrides = {}
        for item in entry.split(","):
            name, equals, text = (part.strip() for part in item.partition("="))
            if not equals or name not in fields:
                raise config_lib.ConfigError(
                    f"sweep entry {entry!r}: {item.strip()!r} is not field=value with a field "
                    f"of config.sampling ({', '.join(sorted(fields))})"
                )
            if f"sampling.{name}" in overrides:
                raise config_lib.ConfigError(
                    f"sweep entry {entry!r} sets {name} twice; give each field once."
                )
            overrides[f"sampling.{name}"] = _parse_value(
                text, fields[name], f"sweep entry {entry!r}, {name}"
            )
        try:
            sampling = config_lib.with_overrides(config, overrides).sampling
        except config_lib.ConfigError as error:
            raise config_lib.ConfigError(f"sweep entry {entry!r}: {error}") from None
        label = sampler_label(sampling)
        if label in samplings:
            raise config_lib.ConfigError(
                f"sweep entry {entry!r} gives the same sampler ({label}) as an earlier entry; "
                f"drop one of them."
            )
        samplings[label] = sampling
    return samplings


def _settings(sampling: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """``(label part, description part)`` of every setting the sampler uses; an empty label
    part leaves a default out of the label."""
    if sampling.sampler == "ddpm":
        parts = [("ddpm", "ddpm, every timestep")]
    else:
        parts = [
            (f"{sampling.sampler}_{sampling.steps}", f"{sampling.sampler}, {sampling.steps} steps")
        ]
    if sampling.sampler == "ddim":
        parts.append((f"eta{_number(sampling.eta)}", f"eta {sampling.eta}"))
    elif sampling.sampler == "dpm_solver_pp":
        parts.append((f"order{sampling.order}", f"order {sampling.order}"))
        uniform = sampling.skip_type == "time_uniform"
        parts.append(("" if uniform else sampling.skip_type, sampling.skip_type))
        lowers = sampling.order > 1 and sampling.steps < samplers.LOWER_ORDER_FINAL_BELOW
        if lowers and not sampling.lower_order_final:  # else the setting changes nothing
            parts.append(("no_lower_order_final", "no lower-order final steps"))
    quantile, clip = sampling.dynamic_threshold, sampling.clip_x0
    if quantile:
        parts.append(
            (
                f"thresh{_number(quantile)}" + (f"_clip{_number(clip)}" if clip else ""),
                f"x0 thresholded at quantile {quantile:g} of |x0| into ±{clip or 1:g}",
            )
        )
    elif clip:
        parts.append((f"clip{_number(clip)}", f"x0 clipped to ±{clip:g}"))
    if sampling.reencode:
        parts.append(("reencode", "re-encoded conditioning"))
    return parts


def _number(value: float) -> str:
    """``value`` in a label: short (``1``, ``0.995``), yet distinct for distinct settings."""
    return f"{value:.12g}"


def sampler_label(sampling: ml_collections.ConfigDict) -> str:
    """A folder-safe name of the sampler, from the settings it uses (``ddim_100_eta1``)."""
    return "_".join(label for label, _ in _settings(sampling) if label)


def sampler_description(sampling: ml_collections.ConfigDict) -> str:
    """One line naming the sampler and the settings it uses."""
    return ", ".join(text for _, text in _settings(sampling))


def _mean(entry: Any, digits: int) -> str:
    if isinstance(entry, Mapping) and "mean" in entry:
        return f"{entry['mean']['value']:.{digits}f}"
    return "n/a"


def _fvd(entry: Any) -> str:
    return f"{entry['trajectory_mean']:.1f}" if isinstance(entry, Mapping) else "n/a"


def sweep_table(all_metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per sampler, then the baselines; means over predicted frames, and
    notes on what is ``n/a``.

    FVD is the trajectory mean (MCVD's paper number; with one sample per clip, the FVD of
    all predictions), a column per variant computed for some system. ``predict s`` is the
    time spent predicting, the compilation of each sampler's program included; ``frames/s``
    the predicted frames per second without it (``protocol.Throughput``; ``n/a`` when there
    was one predict call).
    """
    first = next(iter(all_metrics.values()))
    systems = [metrics["model"] for metrics in all_metrics.values()]
    systems += list(first.get("baselines", {}).values())
    variants = [
        variant
        for variant in FVD_VARIANTS
        if any(isinstance(entry.get("fvd", {}).get(variant), Mapping) for entry in systems)
    ]
    what = "mean over predicted frames" + ("; FVD trajectory mean" if variants else "")
    lines = [
        report.protocol_line(first["protocol"], what),
        "",
        *report.table_head(
            [
                "system",
                "SSIM",
                "PSNR",
                "LPIPS",
                *(f"FVD {variant}" for variant in variants),
                "predict s",
                "frames/s",
            ]
        ),
    ]

    def row(name: str, entry: Mapping[str, Any], seconds: str, speed: str) -> str:
        fvd = entry.get("fvd", {})
        cells = [
            name,
            _mean(entry.get("ssim"), 4),
            _mean(entry.get("psnr"), 2),
            _mean(entry.get("lpips"), 4),
            *(_fvd(fvd.get(variant)) for variant in variants),
            seconds,
            speed,
        ]
        return report.table_row(cells)

    notes = report.unavailable_notes(first["model"])
    for metrics in all_metrics.values():
        seconds = metrics.get("seconds", {}).get("predict")
        speed = report.frames_per_second(metrics.get("throughput"))
        sampler = metrics["protocol"]["sampler"]
        lines.append(
            row(sampler, metrics["model"], "n/a" if seconds is None else f"{seconds:.1f}", speed)
        )
        why = report.throughput_note(metrics.get("throughput"))
        if speed == "n/a" and why:
            notes.append(f"- frames/s of {sampler}: {why}")
    for name, entry in first.get("baselines", {}).items():
        lines.append(row(report.SYSTEM_LABELS.get(name, name), entry, "", ""))
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


SWEEP_TABLE_FILE, SWEEP_METRICS_FILE = "sweep.md", "sweep.json"


def written_sweep_labels(out_dir: str) -> list[str]:
    """The entries of the sweep whose ``sweep.json`` is in ``out_dir`` (each has a folder of
    that name), or [] when there is none or it cannot be read."""
    try:
        with open(os.path.join(out_dir, SWEEP_METRICS_FILE), encoding="utf-8") as f:
            labels = list(json.load(f))
    except (OSError, ValueError, TypeError):
        return []
    return [label for label in labels if isinstance(label, str) and _is_folder_name(label)]


def _is_folder_name(label: str) -> bool:
    return label not in ("", ".", "..") and os.path.basename(label) == label


def write_reports(
    out_dir: str,
    all_metrics: Mapping[str, Mapping[str, Any]],
    videos: Mapping[str, Any],
    *,
    single: bool,
    first_frame: int,
) -> None:
    """Every report of an evaluation: one ``report.write_evaluation`` in ``out_dir`` when
    ``single`` (its one label's), else one per label in ``out_dir/<label>/`` and the sweep
    table (``write_sweep``); then what an earlier evaluation there left is removed
    (``remove_earlier_reports``)."""
    earlier_labels = written_sweep_labels(out_dir)
    for label, metrics in all_metrics.items():
        report.write_evaluation(
            out_dir if single else os.path.join(out_dir, label),
            metrics,
            videos.get(label),
            first_frame=first_frame,
        )
    if not single:
        write_sweep(out_dir, all_metrics)
    remove_earlier_reports(out_dir, earlier_labels, [] if single else list(all_metrics))


def remove_earlier_reports(out_dir: str, earlier_labels: Sequence[str], labels: Sequence[str]):
    """After an evaluation wrote ``out_dir``, removes what an earlier one there wrote and this
    one did not rewrite, so the folder holds one run's numbers: after a sweep (``labels``, its
    entries), an earlier single evaluation's reports and the folders of ``earlier_labels`` (the
    earlier sweep's, read before writing) not in ``labels``, saved predictions included; after
    a single evaluation (``labels`` empty), the earlier sweep's files and folders."""
    if labels:
        report.clear_evaluation(out_dir)
    else:
        for name in (SWEEP_TABLE_FILE, SWEEP_METRICS_FILE):
            path = os.path.join(out_dir, name)
            if os.path.isfile(path):
                os.remove(path)
    for label in set(earlier_labels) - set(labels):
        folder = os.path.join(out_dir, label)
        if os.path.isfile(os.path.join(folder, report.METRICS_FILE)):  # a sweep entry's report
            report.clear_evaluation(folder)
            predictions.clear(folder)
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)


def write_sweep(out_dir: str, all_metrics: Mapping[str, Mapping[str, Any]]) -> dict:
    """``out_dir/sweep.md`` (``sweep_table``) and ``out_dir/sweep.json`` (every entry's metrics)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "table": os.path.join(out_dir, SWEEP_TABLE_FILE),
        "metrics": os.path.join(out_dir, SWEEP_METRICS_FILE),
    }
    atomic_io.write_text(paths["table"], sweep_table(all_metrics))
    report.write_metrics_json(paths["metrics"], dict(all_metrics))
    return paths

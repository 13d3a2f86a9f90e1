"""Converters from the published benchmarks' distributions to the HDF5 video format.

``convert('kth', src, out, kth_split='mcvd')`` validates the source, writes
``out/<split>/shard_NNNN.hdf5`` (resuming an interrupted run) and returns a
``ConversionSummary``. Names: see ``CONVERTERS``; ``tfds:NAME`` for any TFDS
video dataset; ``videos`` for your own (one sub-folder per split).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Callable, Iterable

from predvdm_jax.data import manifest
from predvdm_jax.data.converters import (
    bair,
    carla,
    cityscapes,
    common,
    kth,
    smmnist,
    tfds_video,
    ucf101,
    videos,
)
from predvdm_jax.data.converters.common import (
    ConversionPlan,
    ConversionSummary,
    SourceError,
    SplitPlan,
    run_plan,
)

CONVERTERS: dict[str, Callable[..., ConversionPlan]] = {
    "kth": kth.plan,
    "smmnist": smmnist.plan,
    "bair": bair.plan,
    "cityscapes": cityscapes.plan,
    "carla": carla.plan,
    "ucf101": ucf101.plan,
    "videos": videos.plan,
}
TFDS_PREFIX = "tfds:"


def make_plan(dataset: str, src: str, **options) -> ConversionPlan:
    """Inspects the source of ``dataset`` and returns what would be written."""
    plan_function = _plan_function(dataset)
    size = options.get("image_size")
    if size is not None and size < 1:
        raise ValueError(f"image_size must be >= 1, got {size}; pass e.g. --image_size=64.")
    if dataset.startswith(TFDS_PREFIX):
        plan = plan_function(src, dataset[len(TFDS_PREFIX) :], **options)
    else:
        plan = plan_function(src, **options)
    return dataclasses.replace(plan, source=os.path.abspath(src) if src else "")


def _plan_function(dataset: str) -> Callable[..., ConversionPlan]:
    if dataset.startswith(TFDS_PREFIX):
        return tfds_video.plan
    if dataset not in CONVERTERS:
        raise ValueError(
            f"Unknown dataset {dataset!r}; choose one of {sorted(CONVERTERS)} or tfds:NAME."
        )
    return CONVERTERS[dataset]


def select_options(
    dataset: str, candidates: dict[str, Any], given: Iterable[str] = ()
) -> dict[str, Any]:
    """The entries of ``candidates`` that ``dataset``'s converter takes, None ones dropped.

    Lets a command line define every dataset's flags at once. ``given`` names
    the options the user set; one the converter does not take is a ValueError.
    """
    accepted = set(inspect.signature(_plan_function(dataset)).parameters) - {"src", "name"}
    ignored = [k for k in given if k not in accepted]
    if ignored:
        takes = ", ".join(f"--{k}" for k in candidates if k in accepted) or "none"
        raise ValueError(
            f"{dataset} does not take {', '.join(f'--{k}' for k in ignored)} (its "
            f"options: {takes}); remove {'it' if len(ignored) == 1 else 'them'}."
        )
    return {k: v for k, v in candidates.items() if k in accepted and v is not None}


def convert(
    dataset: str,
    src: str,
    out_dir: str,
    vids_per_shard: int = common.DEFAULT_VIDS_PER_SHARD,
    num_workers: int = 1,
    progress: bool = True,
    on_video: Callable[[str, int], None] | None = None,
    **options,
) -> ConversionSummary:
    """Converts ``dataset`` from ``src`` into ``out_dir``; options go to its converter."""
    manifest.check_out_dir(out_dir)  # before the source is read: that can take long
    plan = make_plan(dataset, src, **options)
    return run_plan(
        plan,
        out_dir,
        vids_per_shard=vids_per_shard,
        num_workers=num_workers,
        progress=progress,
        on_video=on_video,
    )


__all__ = [
    "CONVERTERS",
    "ConversionPlan",
    "ConversionSummary",
    "SourceError",
    "SplitPlan",
    "convert",
    "make_plan",
    "run_plan",
    "select_options",
]

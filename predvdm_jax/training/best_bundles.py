"""The ``k`` best models of a run by a validation metric, as inference bundles.

PredVDM keeps its 3 checkpoints of lowest ``val/loss_ema`` (Lightning's
``ModelCheckpoint(save_top_k=3, monitor='val/loss_ema')``) beside the last one.
Here the last checkpoints stay Orbax's (for resuming) and the best ones are
bundles of the EMA weights (``interop/bundle.py``: what sampling and evaluation
load), in ``<directory>/step_<N>`` with the metric in ``metric.json``;
``load_bundle(<directory>)`` loads the best of them. After a
resume, bundles of steps the restored run has not reached yet (written by the
run that died) are replaced as the run passes them again.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from predvdm_jax import atomic_io
from predvdm_jax.interop.bundle import (
    METRIC_FILE,
    TEMPORARY_PREFIX,
    Bundle,
    BundleSource,
    bundle_metrics,
    save_bundle,
)

_STEP_DIR = re.compile(r"^step_(\d+)$")


class BestBundles:
    """``keep(step, ema_params, value)``: bundle ``ema_params`` if ``value`` is among the ``k``
    lowest so far, dropping the bundles that fall out (all beyond the ``k`` best: ``k`` may
    be lowered on resume). Call it on every process. Each bundle's source is the run (the
    folder holding ``directory``) at its step."""

    def __init__(self, directory: str, k: int, metric: str, config: Any, vq_params: Any):
        if k < 1:
            raise ValueError(f"keep the best k >= 1 bundles, got k={k}")
        self.directory, self.k, self.metric = directory, k, metric
        self.config, self.vq_params = config, vq_params

    def kept(self) -> dict[int, float]:
        """``{step: metric value}`` of the bundles on disk."""
        return {
            int(match.group(1)): value
            for name, value in bundle_metrics(self.directory).items()
            if (match := _STEP_DIR.match(name))
        }

    def keep(
        self, step: int, ema_params: Any, value: float, ema_updates: int | None = None
    ) -> bool:
        """Whether the bundle of ``step`` was kept (``ema_updates``: the EMA's update count,
        which its source records). Process 0's directory decides."""
        on_disk = self.kept()
        earlier = [(s, v) for s, v in on_disk.items() if s < step]
        new = [(step, value)] if math.isfinite(value) else []
        # The k best of the earlier bundles and this one; the rest go, so a k lowered on
        # resume drops the worst bundles, never the best.
        best = set(sorted(earlier + new, key=lambda item: (item[1], item[0]))[: self.k])
        enters = bool(new) and new[0] in best
        if jax.process_count() > 1:
            enters = bool(multihost_utils.broadcast_one_to_all(np.asarray(enters)))
        if enters:
            params = multihost_utils.process_allgather(ema_params, tiled=True)
        if jax.process_index() != 0:
            return enters
        drop = {s for s in on_disk if s >= step} | self._unfinished(on_disk)
        drop |= {s for s, v in earlier if (s, v) not in best}
        if enters:
            path = self._path(step)
            run = os.path.dirname(os.path.abspath(self.directory))
            source = BundleSource("run", run, "EMA", step, ema_updates)
            save_bundle(path, Bundle(self.config, params, self.vq_params, source))
            metric = {"metric": self.metric, "value": value, "step": step}
            atomic_io.write_text(os.path.join(path, METRIC_FILE), json.dumps(metric))
        for old in drop - ({step} if enters else set()):
            shutil.rmtree(self._path(old), ignore_errors=True)
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else []:
            if name.startswith(TEMPORARY_PREFIX):  # left by a write a kill cut short
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return enters

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, f"step_{step:08d}")

    def _unfinished(self, kept: dict[int, float]) -> set[int]:
        """Steps whose bundle has no metric file (a run died between the two writes)."""
        if not os.path.isdir(self.directory):
            return set()
        steps = {int(m.group(1)) for m in map(_STEP_DIR.match, os.listdir(self.directory)) if m}
        return steps - set(kept)

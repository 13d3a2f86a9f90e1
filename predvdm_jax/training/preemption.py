"""Noticing a preemption (SIGTERM) at a step every process agrees on.

TPU VMs, GKE and SLURM send SIGTERM before they evict a job. The training
loop asks ``PreemptionWatch.reached(step)`` after every step; when it says
yes, the loop saves a checkpoint of that step and stops, so a rerun of the
same command resumes without losing work.

In a multi-process run the processes must save at the same step (the save is
collective). JAX's preemption service, started by ``jax.distributed.initialize``,
catches SIGTERM on any process and agrees on a step to stop at
(``multihost_utils.reached_preemption_sync_point``). A single process has no
such service, so the watch installs its own SIGTERM handler, which only sets a
flag, and restores the previous handler on ``close``.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatch:
    """``reached(step)``: stop and save after this step. Call it after every step."""

    def __init__(self) -> None:
        self.notice: str | None = None  # what stopped the run, once something did
        self._previous_handler = None
        self._mode = "off"
        if jax.process_count() > 1:
            try:
                multihost_utils.reached_preemption_sync_point(0)
                self._mode = "service"
            except RuntimeError as err:
                logging.warning("no checkpoint on preemption: %s", err)
        elif threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)
            self._mode = "handler"
        else:
            logging.warning("no checkpoint on SIGTERM: the loop does not run in the main thread")

    def _on_signal(self, signum, frame) -> None:
        del frame
        self.notice = signal.Signals(signum).name

    def reached(self, step: int) -> bool:
        if self._mode == "service" and multihost_utils.reached_preemption_sync_point(step):
            self.notice = "a preemption notice (SIGTERM to one of the processes)"
        return self.notice is not None

    def close(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

"""Noticing a preemption (SIGTERM) or a Ctrl-C (SIGINT) at a step every process agrees on.

TPU VMs, GKE and SLURM send SIGTERM before they evict a job. The training
loop asks ``PreemptionWatch.reached(step)`` after every step; when it says
yes, the loop saves a checkpoint of that step and stops, so a rerun of the
same command resumes without losing work. A first Ctrl-C does the same (and
says so on stderr); a second one raises ``KeyboardInterrupt`` as usual, which
stops at once without saving.

In a multi-process run the processes must save at the same step (the save is
collective). JAX's preemption service, started by ``jax.distributed.initialize``,
catches SIGTERM on any process and agrees on a step to stop at
(``multihost_utils.reached_preemption_sync_point``); a Ctrl-C sends its process a
SIGTERM, so it takes the same path. A single process has no such service, so the
watch's own SIGTERM handler only sets a flag. The watch restores the previous
handlers on ``close``.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGTERM_EXIT, SIGINT_EXIT = 143, 130  # what the shell reports for a process each signal killed
CTRL_C_LINE = (
    "Ctrl-C: saving a checkpoint after the running step, then stopping "
    "(Ctrl-C again stops at once without saving)\n"
)


class PreemptionWatch:
    """``reached(step)``: stop and save after this step. Call it after every step."""

    def __init__(self) -> None:
        self.notice: str | None = None  # what stopped the run, once something did
        self.exit_code = SIGTERM_EXIT  # the status to exit with: SIGINT_EXIT after a Ctrl-C
        self._previous_handlers: dict[signal.Signals, object] = {}
        self._mode = "off"
        in_main_thread = threading.current_thread() is threading.main_thread()
        if jax.process_count() > 1:
            try:
                multihost_utils.reached_preemption_sync_point(0)
                self._mode = "service"
            except RuntimeError as err:
                logging.warning("no checkpoint on preemption: %s", err)
        elif in_main_thread:
            self._previous_handlers[signal.SIGTERM] = signal.signal(
                signal.SIGTERM, self._on_sigterm
            )
            self._mode = "handler"
        else:
            logging.warning("no checkpoint on SIGTERM: the loop does not run in the main thread")
        # Only where Ctrl-C would raise KeyboardInterrupt (not where it is ignored or handled).
        if (
            self._mode != "off"
            and in_main_thread
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_sigterm(self, signum, frame) -> None:
        del frame
        self.notice = signal.Signals(signum).name

    def _on_ctrl_c(self, signum, frame) -> None:
        del signum, frame
        signal.signal(signal.SIGINT, self._previous_handlers.pop(signal.SIGINT))
        # Unbuffered (the handler may interrupt a print), below the progress bar and the ^C echo.
        os.write(2, ("\n" + CTRL_C_LINE).encode())
        self.exit_code = SIGINT_EXIT
        if self._mode == "service":
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's service picks the step for everyone
        else:
            self.notice = "Ctrl-C (SIGINT)"

    def reached(self, step: int) -> bool:
        if self._mode == "service" and multihost_utils.reached_preemption_sync_point(step):
            self.notice = (
                "Ctrl-C (SIGINT)"
                if self.exit_code == SIGINT_EXIT
                else "a preemption notice (SIGTERM or Ctrl-C to one of the processes)"
            )
        return self.notice is not None

    def close(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

"""How a training script ends when its run fails: one ``error:`` line, or exit status 143
after a preemption (``scripts/train.py``, ``train_vq.py``, ``demo.py``)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from predvdm_jax.training.loop import NonFiniteLossError, TrainingPreempted


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad input (``FileNotFoundError``; ``ValueError``, which covers ``ConfigError``,
    ``DatasetError`` and a mesh that does not fit the devices) and a NaN/Inf loss exit with one
    ``error:`` line (status 1); a preemption prints ``preempted:`` and exits with
    ``TrainingPreempted.exit_code``, so the same command resumes."""
    try:
        yield
    except (FileNotFoundError, ValueError, NonFiniteLossError) as err:
        sys.exit(f"error: {err}")
    except TrainingPreempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)

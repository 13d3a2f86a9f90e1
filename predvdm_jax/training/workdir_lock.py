"""A training run's exclusive hold on its workdir, so two runs never write into one.

``hold(workdir)`` takes a non-blocking ``fcntl.flock`` on ``<workdir>/.lock`` (it records the
holder's pid and host) for the whole run; a second run on the same workdir raises
``WorkdirBusyError`` before it writes anything there. The kernel drops the lock when the
holder's process ends, however it ends (SIGKILL included), so a killed run never blocks its
resume; a run that ends normally removes the file (and the workdir, if the run created it and
left it empty). The lock's file descriptor is not inherited by spawned processes (grain's
readers, ffmpeg).

Multi-host: the workdir is one folder every host sees (Orbax writes it from every process),
so process 0 alone locks it and broadcasts whether it got the lock; every process then fails
together. On a filesystem without ``flock`` (some NFS) the run logs a warning and trains
unlocked. A process nests holds on one workdir (a trainer holds it around ``train_loop``,
which holds it too).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from typing import Iterator

from absl import logging

from predvdm_jax import folders

LOCK_FILE = folders.WORKDIR_LOCK_FILE
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}
_held: dict[str, int] = {}  # the workdirs this process holds (real path: nesting depth)


class WorkdirBusyError(OSError):
    """Another run holds the workdir (its one-line message names it and the fix)."""


def _busy_message(workdir: str, holder: str) -> str:
    who = f" ({holder})" if holder else ""
    return (
        f"--workdir {workdir} is in use: another run{who} is training there; wait for it to "
        f"finish or stop it (a killed run's lock goes with it), or pass another --workdir."
    )


def _missing_folders(workdir: str) -> list[str]:
    """The folders ``os.makedirs(workdir)`` would create, deepest first."""
    missing, folder = [], os.path.abspath(workdir)
    while not os.path.exists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _lock(workdir: str, path: str) -> int | None:
    """The descriptor of ``path`` locked by this process; None where ``flock`` fails for want
    of support (logged). Another holder: ``WorkdirBusyError``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in _BUSY:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                raise WorkdirBusyError(_busy_message(workdir, holder)) from None
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            logging.warning(
                "cannot lock %s (%s): training unlocked; make sure no other run uses this workdir",
                path,
                error.strerror or error,
            )
            return None
        try:  # a run that ended may have removed the file between its open and the lock
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _share_outcome(failed: BaseException | None, workdir: str) -> None:
    """Multi-host: the other processes raise too when process 0 could not take the lock."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return
    code = 0 if failed is None else 1 if isinstance(failed, WorkdirBusyError) else 2
    code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
    if jax.process_index() == 0:
        return
    if code == 1:
        raise WorkdirBusyError(_busy_message(workdir, "seen by process 0"))
    if code == 2:
        raise OSError(f"process 0 could not lock --workdir {workdir} (see its error)")


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds ``workdir`` for the block: creates it, locks ``<workdir>/.lock`` (process 0),
    and undoes both afterwards; ``WorkdirBusyError`` when another run holds it."""
    import jax

    key = os.path.realpath(workdir)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    path, fd, created, failed = os.path.join(workdir, LOCK_FILE), None, [], None
    if jax.process_index() == 0:
        created = _missing_folders(workdir)
        try:
            os.makedirs(workdir, exist_ok=True)
            fd = _lock(workdir, path)
        except BaseException as error:
            _remove_empty(created)
            failed = error
    _share_outcome(failed, workdir)
    if failed is not None:
        raise failed
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still locked: see _lock's check of the file
            os.close(fd)
        _remove_empty(created)


def _remove_empty(created: list[str]) -> None:
    """Removes the folders ``created`` (deepest first) by this run, where they are empty."""
    for folder in created:
        try:
            os.rmdir(folder)
        except OSError:
            return

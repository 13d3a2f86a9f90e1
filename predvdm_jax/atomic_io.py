"""Writing a file so that a failure never leaves it half-written.

The data goes to a temporary file beside the target (``.tmp-<random><name>``, so it keeps
the name's suffix), which is renamed over the target only once it is complete; a failure
removes the temporary file and leaves any earlier version of the target untouched. The
data reaches the disk before the rename, and the rename before the call returns
(``replace_durably``), so a machine that loses power or is preempted right after keeps
either the old file or the whole new one, never an empty one under the new name. The
file gets the permissions ``open`` would give it (``0o666`` less the umask), not
``tempfile``'s owner-only ones, so a shared workdir's outputs stay readable by others.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import tempfile
from typing import Callable


@functools.cache
def _umask() -> int:
    """The process umask, read without changing it where Linux allows (threads may be writing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_default_permissions(path: str) -> None:
    """Gives a file ``0o666`` and a folder ``0o777``, less the umask (what ``open`` and
    ``os.makedirs`` would), for paths made by ``tempfile`` (owner-only)."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


_UNSYNCABLE_FOLDER = {errno.EINVAL, errno.ENOTSUP, errno.ENOSYS, errno.EACCES, errno.EPERM}
"""What ``fsync`` of a folder raises on filesystems that do not offer it (some network and
FUSE mounts): there the rename is as durable as that filesystem makes it."""


def sync(path: str) -> None:
    """Waits until the file or folder ``path`` is on the disk (``fsync``)."""
    folder = os.path.isdir(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        if not (folder and error.errno in _UNSYNCABLE_FOLDER):
            raise


def replace_durably(temporary: str, path: str) -> None:
    """``os.replace(temporary, path)`` once ``temporary``'s data is on the disk, then the
    folder's entry too: without the two syncs a crash can leave ``path`` empty (the rename
    written before the data) or the old file back (the rename not written at all)."""
    sync(temporary)
    os.replace(temporary, path)
    sync(os.path.dirname(os.path.abspath(path)))


_EXCHANGE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV}
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(first: str, second: str) -> bool:
    """Swaps the two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so
    a kill leaves each name holding one whole version, never neither. False, with nothing
    changed, where the system or filesystem cannot (the caller then renames in two steps)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), first, None, second)


def write_file(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(temporary_path)`` writes the whole file; it then replaces ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(path)
    )
    os.close(handle)
    try:
        write(temporary)
        set_default_permissions(temporary)
        replace_durably(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``data`` as the file ``path`` (see :func:`write_file`)."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as f:
            f.write(data)

    write_file(path, write)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) as the file ``path`` (see :func:`write_file`)."""
    write_bytes(path, text.encode("utf-8"))


def file_in_the_way(path: str | os.PathLike) -> str | None:
    """The existing file, ``path`` itself or a folder above it, that keeps ``path`` from being
    (or becoming) a folder; None when there is none. Output checks call it before any work,
    so a bad output path fails at once, not with ``os.makedirs``'s bare error at the end."""
    folder = os.path.abspath(os.fspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return None if os.path.isdir(folder) else folder


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """``path`` is ``folder`` or below it (symlinks resolved): output checks use it to keep a
    write out of a folder it must not touch (its source, a run's checkpoints)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder

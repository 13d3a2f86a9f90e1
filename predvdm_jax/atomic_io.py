"""Writing a file so that a failure never leaves it half-written.

The data goes to a temporary file beside the target (``.tmp-<random><name>``, so it keeps
the name's suffix), which is renamed over the target only once it is complete; a failure
removes the temporary file and leaves any earlier version of the target untouched.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable


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
        os.replace(temporary, path)
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

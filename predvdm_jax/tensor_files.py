"""Reading ``.safetensors`` files with one clear error for a truncated or corrupt file.

Shared by the checkpoint converters (``interop``) and the models that load their own
weights (``models/lpips.py``, ``models/i3d.py``), which do not import ``interop``.
"""

from __future__ import annotations

import os

import numpy as np


def read_safetensors(
    path: str | os.PathLike, remedy: str = "re-create it"
) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file's tensors as numpy arrays; a file that is not a complete
    safetensors file raises ``ValueError`` naming it and ``remedy``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(os.fspath(path)))
    except SafetensorError as err:
        raise ValueError(
            f"{os.fspath(path)} is not a complete safetensors file ({err}); {remedy}."
        ) from err

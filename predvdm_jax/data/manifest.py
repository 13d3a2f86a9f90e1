"""A dataset folder's ``conversion.json``: the settings its shards were written with.

Every writer of a frame dataset (the converters, ``moving_digits``) records its settings before
the first shard and refuses a folder that holds shards of other settings, so an interrupted
conversion resumes and a re-run with other settings never mixes two datasets.
``as_json`` gives a record the form it reads back in (also for the latent cache's
``cache_info.json``), so a record made now compares equal to one loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any

from predvdm_jax import atomic_io, folders
from predvdm_jax.data import hdf5

MANIFEST_NAME = "conversion.json"


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file: tuples (and other iterables) become lists,
    keys strings; comparable with ``json.load``'s result."""
    return json.loads(json.dumps(value, default=list))


def check_out_dir(out_dir: str) -> None:
    """Raises ``DatasetError`` when ``out_dir`` is a file or lies under one (``os.makedirs``
    would fail with a bare ``File exists`` / ``Not a directory``), is a model's folder
    (``folders.model_folder``) or a data split (the dataset's root holds splits)."""
    folder = atomic_io.file_in_the_way(out_dir)
    if folder is not None:
        where = (
            "is a file" if folder == os.path.abspath(out_dir) else f"is under the file {folder!r}"
        )
        raise hdf5.DatasetError(
            f"--out {out_dir!r} {where}; give --out a folder (a new one, or one this "
            f"command wrote before)."
        )
    problem = folders.model_folder(out_dir)
    if not problem and hdf5.shard_paths(out_dir):
        problem = "is a data split (it holds shard files), not a dataset's folder of splits"
    if problem:
        raise hdf5.DatasetError(
            f"--out {out_dir!r} {problem}; give the dataset a folder of its own (e.g. data/<name>)."
        )


def check_manifest(out_dir: str, manifest: dict, flag: str = "--out") -> None:
    """Refuses an ``out_dir`` holding a conversion of other settings (its ``conversion.json``
    differs) or shards without a ``conversion.json`` (another dataset: every writer records
    its manifest before its first shard), else records ``manifest`` there. ``flag`` is the
    command-line flag whose folder holds ``out_dir``, named in the errors' fix."""
    check_out_dir(out_dir)
    manifest = as_json(manifest)
    path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError) as err:
            raise hdf5.DatasetError(
                f"{path} is unreadable ({err}); delete {out_dir} to start over, or use a new "
                f"{flag} folder."
            ) from None
        if previous != manifest:
            raise hdf5.DatasetError(
                f"{out_dir} holds a conversion made with other settings "
                f"({', '.join(_changed_keys(previous, manifest))} differ); use a new {flag} "
                f"folder or delete {out_dir} to start over."
            )
        return
    splits = hdf5.split_dirs(out_dir)
    if splits:
        stray = hdf5.shard_paths(os.path.join(out_dir, splits[0]))[0]
        raise hdf5.DatasetError(
            f"{out_dir} already holds shards ({stray}) from an unknown conversion; "
            f"use a new {flag} folder or delete them."
        )
    os.makedirs(out_dir, exist_ok=True)
    atomic_io.write_text(path, json.dumps(manifest, indent=1, sort_keys=True))


def _changed_keys(previous, manifest) -> list[str]:
    """The keys whose values differ, ``options.<name>`` for options (a dict in both)."""
    if not isinstance(previous, dict):
        return ["everything"]
    changed = []
    for k in sorted(set(previous) | set(manifest)):
        old, new = previous.get(k), manifest.get(k)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [
                f"{k}.{name}"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            ]
        else:
            changed.append(k)
    return changed

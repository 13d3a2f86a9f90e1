"""An evaluation's finished work on disk, so that a preempted run resumes where it stopped.

``OUT/progress/`` holds ``run.json`` (what is evaluated: the fingerprint ``run.py`` makes of
the model, clips, protocol and samplers); per finished test batch ``b``, ``batch_<b>.npz``,
``protocol.evaluate``'s record of that batch (per-frame metrics, FVD features, kept videos,
running timings); and, of the batch in progress, one ``batch_<b>.sample_<s>.<system>.npz``
per finished model sample, so that a batch of many samples (ExtDM's 100) is not redone
whole. Each file is written whole (``atomic_io``), after the predictions it covers, if
saved, are on disk. Rerunning the same command finds them, reloads that work and predicts
only the rest; sample ``s`` of clip ``i`` always uses the key ``fold_in(fold_in(key, s),
i)``, so the resumed numbers equal an uninterrupted run's. The folder is removed once the
reports are written; another evaluation into the same ``OUT`` is refused rather than mixed
in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from typing import Any, Mapping

import jax
import numpy as np

from predvdm_jax import atomic_io
from predvdm_jax.evaluation.protocol import Resume

PROGRESS_DIR = "progress"
RUN_FILE = "run.json"
WRITTEN_BY = "predvdm_jax scripts/evaluate.py (resumable progress)"
_BATCH_NAME = re.compile(r"batch_(\d{5,})\.npz")
_SAMPLE_NAME = re.compile(r"batch_(\d{5,})\.sample_(\d{5,})\.([0-9a-f]{16})\.npz")
_INDEX = "index"
_SHOWN_DIFFERENCES = 3  # in the refusal of another evaluation's progress
_ABSENT = object()


def batch_file(folder: str, batch: int) -> str:
    return os.path.join(folder, f"batch_{batch:05d}.npz")


def sample_file(folder: str, batch: int, system: str, sample: int) -> str:
    """The file of one finished model sample (the system's name hashed: any label fits)."""
    tag = hashlib.sha256(system.encode()).hexdigest()[:16]
    return os.path.join(folder, f"batch_{batch:05d}.sample_{sample:05d}.{tag}.npz")


def _differences(saved: Any, now: Any, field: str = "") -> list[str]:
    """``field.path: <saved> (saved) vs <now> (now)`` of each (nested) fingerprint field whose
    values differ, in field order."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [
            line
            for key in sorted(set(saved) | set(now))
            for line in _differences(
                saved.get(key, _ABSENT), now.get(key, _ABSENT), f"{field}.{key}" if field else key
            )
        ]
    if saved == now:
        return []
    return [f"{field}: {_shown(saved)} (saved) vs {_shown(now)} (now)"]


def _shown(value: Any) -> str:
    """A fingerprint value in at most 40 characters (a long one, such as a weights digest or a
    path, loses its middle)."""
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 40 else f"{text[:18]}...{text[-18:]}"


class Progress:
    """``OUT/progress`` of one evaluation (module docstring); process 0 alone writes."""

    def __init__(self, out_dir: str, fingerprint: Mapping[str, Any]):
        self.folder = os.path.join(out_dir, PROGRESS_DIR)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as run.json will read back
        self.writes = jax.process_index() == 0

    def load(self) -> Resume:
        """What an earlier run of this evaluation finished (nothing without
        ``OUT/progress``); a ``ValueError`` when the folder is another evaluation's or not
        ours. Writes ``run.json`` for this run."""
        batches, samples = [], {}
        if os.path.lexists(self.folder):
            differing = _differences(self._earlier_fingerprint(), self.fingerprint)
            if differing:
                shown = "; ".join(differing[:_SHOWN_DIFFERENCES])
                if len(differing) > _SHOWN_DIFFERENCES:
                    shown += f"; and {len(differing) - _SHOWN_DIFFERENCES} more"
                raise ValueError(
                    f"{self.folder} holds the partial results of another evaluation, which "
                    f"differs in {shown}: rerun the command that made it to resume it, "
                    f"or delete {self.folder} to start over"
                )
            while os.path.exists(batch_file(self.folder, len(batches))):
                batches.append(_read_record(batch_file(self.folder, len(batches))))
            for name in sorted(os.listdir(self.folder)):
                match = _SAMPLE_NAME.fullmatch(name)
                if match and int(match.group(1)) == len(batches):
                    record = _read_record(os.path.join(self.folder, name))
                    samples[(record["system"], int(record["sample"]))] = record
        if self.writes:
            finished = len(batches)
            # A stopped later run's files, and the sample files of finished batches (left by a
            # stop between a batch's file and their removal).
            self._remove(
                lambda batch, sample: batch > finished or (sample is not None and batch < finished)
            )
            run = {"written_by": WRITTEN_BY, "fingerprint": self.fingerprint}
            atomic_io.write_text(os.path.join(self.folder, RUN_FILE), json.dumps(run, indent=2))
        return Resume(tuple(batches), samples)

    def add(self, batch: int, record: Mapping[str, Any]) -> None:
        """Batch ``batch``'s record (``protocol.evaluate``'s ``on_batch``); its samples' files
        are then removed."""
        if self.writes:
            atomic_io.write_file(batch_file(self.folder, batch), lambda path: _write(path, record))
            self._remove(lambda b, sample: b == batch and sample is not None)

    def add_sample(self, batch: int, system: str, sample: int, record: Mapping[str, Any]) -> None:
        """One finished model sample's record (``protocol.evaluate``'s ``on_sample``)."""
        if self.writes:
            record = {**record, "system": system, "sample": sample}
            path = sample_file(self.folder, batch, system, sample)
            atomic_io.write_file(path, lambda temporary: _write(temporary, record))

    def clear(self) -> None:
        """Removes ``OUT/progress`` (its ``run.json`` and record files, by name; a file of the
        user's there keeps the folder)."""
        if not (self.writes and os.path.isdir(self.folder)):
            return
        self._remove(lambda batch, sample: True)
        os.remove(os.path.join(self.folder, RUN_FILE))
        if not os.listdir(self.folder):
            os.rmdir(self.folder)

    def _earlier_fingerprint(self) -> dict:
        run_file = os.path.join(self.folder, RUN_FILE)
        try:
            with open(run_file, encoding="utf-8") as f:
                run = json.load(f)
            if run.get("written_by") != WRITTEN_BY:
                raise ValueError
            return run["fingerprint"]
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            raise ValueError(
                f"{self.folder} exists but is not an interrupted evaluation's progress (no "
                f"readable {RUN_FILE} of ours); move it away or pass another --out"
            ) from None

    def _remove(self, which) -> None:
        """Removes the record files for which ``which(batch, sample)`` (``sample`` None for a
        batch's own file) is true."""
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else ():
            batch_match, sample_match = _BATCH_NAME.fullmatch(name), _SAMPLE_NAME.fullmatch(name)
            if batch_match and which(int(batch_match.group(1)), None):
                os.remove(os.path.join(self.folder, name))
            elif sample_match and which(int(sample_match.group(1)), int(sample_match.group(2))):
                os.remove(os.path.join(self.folder, name))


def _write(path: str, record: Mapping[str, Any]) -> None:
    """A nested dict of arrays and JSON values as one ``.npz``: arrays ``a<i>``, and an index
    (JSON) of the dict with each array replaced by its name."""
    arrays: dict[str, np.ndarray] = {}

    def index(value):
        if isinstance(value, Mapping):
            return {str(k): index(v) for k, v in value.items()}
        if isinstance(value, (np.ndarray, jax.Array)):
            name = f"a{len(arrays)}"
            arrays[name] = np.asarray(value)
            return {"__array__": name}
        return value

    tree = json.dumps(index(record))
    with open(path, "wb") as f:
        np.savez(f, **arrays, **{_INDEX: np.array(tree)})


def _read_record(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        tree = json.loads(str(arrays.pop(_INDEX)[()]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} cannot be read ({error}); delete it (and the batch files after it) to "
            f"redo those batches"
        ) from None

    def restore(value):
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return arrays[value["__array__"]]
            return {k: restore(v) for k, v in value.items()}
        return value

    return restore(tree)

"""An evaluation's predicted clips on disk (``evaluate.py --save_predictions``), for re-scoring.

``OUT/predictions/`` holds HDF5 splits in the dataset layout (``data/hdf5.py``,
``docs/data.md``), one shard per evaluation batch, video ``k`` of every split being
evaluation clip ``k``:

* ``real/``: the clips the model was scored against (``cond + pred`` frames each), the
  test split's windows (``data/loader.eval_windows``), not its whole videos;
* ``sample_<s>/``: sample ``s`` of every clip: the real conditioning frames, then the
  ``pred`` predicted frames (the model's [-1, 1] output clamped and rounded to uint8);
* ``clips.json``: what the splits hold, and per clip its test video and start frame.

``sample_<s>`` pairs with ``real`` video by video, as ``run.score_folders`` pairs folders,
so ``evaluate.py --real_dir=OUT/predictions/real --fake_dir=OUT/predictions/sample_0
--cond_frames=<cond>`` re-scores sample 0. The files are written to
``OUT/predictions.partial/`` and moved into place once the evaluation has finished, so an
earlier run's ``predictions/`` stays until then. A run stopped part-way leaves the shards
of its finished batches and samples there, and resuming it (``progress.py``) writes only the
rest.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from predvdm_jax import atomic_io
from predvdm_jax.data.hdf5 import ShardWriter, shard_path
from predvdm_jax.evaluation import progress, report
from predvdm_jax.evaluation.images import to_uint8
from predvdm_jax.mesh import to_host

PREDICTIONS_DIR = "predictions"
PARTIAL_DIR = "predictions.partial"
INDEX_FILE = "clips.json"
REAL_SPLIT = "real"
WRITTEN_BY = "predvdm_jax scripts/evaluate.py --save_predictions"
_SPLIT_NAME = re.compile(r"real|sample_\d+")
_SHARD_NAME = re.compile(r"shard_(\d{4,})\.hdf5(\.tmp)?")


def _batch_shard(split_dir: str, batch: int) -> str:
    """Batch ``batch``'s shard: numbered from 1, as every split's (``hdf5.write_split``)."""
    return shard_path(split_dir, batch + 1)


SCORING_FIELDS = {"metric_style": "predvdm", "fvd_resize": "bilinear"}
"""The ``eval`` fields that change scores of folders, with their defaults."""


def rescore_command(out: str, cond_frames: int, scoring: Mapping[str, str]) -> str:
    """The ``evaluate.py`` command that scores sample 0 of ``out``'s saved predictions as the
    evaluation did: ``scoring`` holds the values of ``SCORING_FIELDS`` it used (the protocol's
    metric style, which a preset may set), passed on where they are not the defaults."""
    folder = os.path.join(out, PREDICTIONS_DIR)
    flags = [
        f"--config.eval.{name}={scoring[name]}"
        for name, default in SCORING_FIELDS.items()
        if scoring[name] != default
    ]
    return " ".join(
        [
            f"scripts/evaluate.py --real_dir={folder}/{REAL_SPLIT}",
            f"--fake_dir={folder}/{sample_split(0)} --cond_frames={cond_frames}",
            *flags,
        ]
    )


def sample_split(sample: int) -> str:
    return f"sample_{sample}"


def summary(num_samples: int) -> dict:
    """What ``metrics.json`` says of the saved predictions (paths relative to its folder)."""
    return {
        "folder": PREDICTIONS_DIR,
        "splits": [REAL_SPLIT] + [sample_split(s) for s in range(num_samples)],
        "index": f"{PREDICTIONS_DIR}/{INDEX_FILE}",
        "layout": f"HDF5 splits (docs/data.md); video k of {REAL_SPLIT}/ (the clips scored "
        f"against) and of each sample_<s>/ (the real cond frames, then sample s's predicted "
        f"frames, uint8) is clip k",
    }


def is_ours(folder: str) -> bool:
    """Whether ``folder`` holds the ``clips.json`` that ``PredictionWriter`` writes."""
    try:
        with open(os.path.join(folder, INDEX_FILE), encoding="utf-8") as f:
            return json.load(f).get("written_by") == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        return False


def check_can_write(out_dir: str) -> None:
    """A ``ValueError`` when ``out_dir/predictions`` exists but is not an earlier run's
    predictions (which a new run replaces): it is the user's, and is left alone."""
    folder = os.path.join(out_dir, PREDICTIONS_DIR)
    if os.path.lexists(folder) and not (os.path.isdir(folder) and is_ours(folder)):
        raise ValueError(
            f"{folder} exists and was not written by --save_predictions (no {INDEX_FILE} of "
            f"it); move it away or pass another --out"
        )


def clear(out_dir: str) -> None:
    """Removes an earlier run's ``out_dir/predictions`` (one with ``PredictionWriter``'s
    ``clips.json``), by name: ``clips.json`` and the shards of ``real/`` and ``sample_<s>/``;
    any other file, and the folders holding one, stay. A folder without that ``clips.json``
    is not touched."""
    _clear(os.path.join(out_dir, PREDICTIONS_DIR))


def _clear(folder: str) -> None:
    if not (os.path.isdir(folder) and is_ours(folder)):
        return
    for name in os.listdir(folder):
        split = os.path.join(folder, name)
        if _SPLIT_NAME.fullmatch(name) and os.path.isdir(split) and not os.path.islink(split):
            for shard in os.listdir(split):
                path = os.path.join(split, shard)
                if _SHARD_NAME.fullmatch(shard) and os.path.isfile(path):
                    os.remove(path)
            if not os.listdir(split):
                os.rmdir(split)
    os.remove(os.path.join(folder, INDEX_FILE))
    if not os.listdir(folder):
        os.rmdir(folder)


class PredictionWriter:
    """Writes every prediction of one model, batch by batch (``add``), as the splits of
    ``OUT/predictions`` (module docstring), each batch one shard per split; ``finish`` puts
    them in place. ``done_batches`` and ``done_samples``: the batches, and the samples of the
    next one, that a resumed evaluation does not predict again, whose shards the interrupted
    run left in ``OUT/predictions.partial``.

    Every process gathers the batches (``to_host``); process 0 alone writes.
    """

    def __init__(
        self,
        out_dir: str,
        *,
        num_samples: int,
        cond_frames: int,
        pred_frames: int,
        windows: Sequence[tuple[int, int]],
        description: Mapping[str, Any],
        scoring: Mapping[str, str],
        done_batches: int = 0,
        done_samples: Sequence[int] = (),
    ):
        self.out_dir = out_dir
        self.cond_frames, self.pred_frames = cond_frames, pred_frames
        self.partial = os.path.join(out_dir, PARTIAL_DIR)
        self.writes = jax.process_index() == 0
        self.done_batches = done_batches
        self.real_written: set[int] = set()
        self.names = [REAL_SPLIT] + [sample_split(s) for s in range(num_samples)]
        if not self.writes:
            return
        report.check_output_dir(out_dir, "output folder")
        check_can_write(out_dir)
        index = {
            "written_by": WRITTEN_BY,
            **description,
            "cond_frames": cond_frames,
            "pred_frames": pred_frames,
            "num_clips": len(windows),
            "num_samples": num_samples,
            "splits": {
                REAL_SPLIT: "the evaluation clips: cond + pred real frames",
                "sample_<s>": "the real cond frames, then sample s's pred predicted frames",
            },
            "frames": "uint8 0..255; [-1, 1] predictions clamped and rounded, as in "
            "metrics.json's videos; grayscale without a channel axis",
            "pairing": "video k of every split is clip k below (one shard per evaluation "
            "batch, in order)",
            "rescore": f"{rescore_command('<out>', cond_frames, scoring)} --out=<another folder>",
            "clips": [
                {"clip": k, "test_video": int(video), "start_frame": int(start)}
                for k, (video, start) in enumerate(windows)
            ],
        }
        if done_batches or done_samples:
            self._keep_finished_batches(index, done_samples)
            return
        _clear(self.partial)  # what an interrupted run left
        if os.path.lexists(self.partial):
            raise ValueError(
                f"{self.partial} exists and is not an interrupted --save_predictions run's; "
                f"move it away or pass another --out"
            )
        os.makedirs(self.partial)
        atomic_io.write_text(os.path.join(self.partial, INDEX_FILE), json.dumps(index, indent=2))

    def _keep_finished_batches(self, index: Mapping[str, Any], done_samples: Sequence[int]) -> None:
        """For a resumed run: keeps the shards that the interrupted run (same ``index``)
        wrote of its ``self.done_batches`` finished batches and, of the next one, of its
        ``done_samples`` (with that batch's real clips); removes the others."""
        try:
            with open(os.path.join(self.partial, INDEX_FILE), encoding="utf-8") as f:
                same = json.load(f) == json.loads(json.dumps(index))
        except (OSError, ValueError):
            same = False
        keep = {name: set(range(self.done_batches)) for name in self.names}
        if done_samples:
            keep[REAL_SPLIT].add(self.done_batches)
        for sample in done_samples:
            keep[sample_split(sample)].add(self.done_batches)
        missing = [
            name
            for name, shards in keep.items()
            for shard in shards
            if not os.path.isfile(_batch_shard(os.path.join(self.partial, name), shard))
        ]
        if not same or missing:
            raise ValueError(
                f"{self.partial} lacks the predictions to resume from (another run's, or "
                f"removed); delete {os.path.join(self.out_dir, progress.PROGRESS_DIR)} to start "
                f"the evaluation over"
            )
        for name in self.names:
            split = os.path.join(self.partial, name)
            for shard in os.listdir(split) if os.path.isdir(split) else ():
                number = _SHARD_NAME.fullmatch(shard)
                if number and (number.group(2) or int(number.group(1)) - 1 not in keep[name]):
                    os.remove(os.path.join(split, shard))

    def add(self, batch: int, sample: int, video: Any, frames: Any, valid: np.ndarray) -> None:
        """Sample ``sample`` of batch ``batch``: ``video`` ``(B, T >= cond + pred, H, W, C)``
        (the batch's clips) and ``frames`` ``(B, pred, H, W, C)``, both in [-1, 1]; the clips
        where ``valid`` is False (padding) are left out. The batch's real clips are written
        with its first sample of this run."""
        length = self.cond_frames + self.pred_frames
        real = to_uint8(to_host(video)[:, :length][valid])
        fake = to_uint8(to_host(frames)[valid])
        if not self.writes:
            return
        videos = {sample_split(sample): np.concatenate([real[:, : self.cond_frames], fake], axis=1)}
        if batch not in self.real_written:
            videos[REAL_SPLIT] = real
            self.real_written.add(batch)
        for name, clips in videos.items():
            with ShardWriter(_batch_shard(os.path.join(self.partial, name), batch)) as writer:
                for clip in clips:
                    writer.add_video(_frames(clip))

    def finish(self) -> str:
        """Moves the shards to ``OUT/predictions`` (an earlier run's ``clear``-ed first);
        returns that folder."""
        final = os.path.join(self.out_dir, PREDICTIONS_DIR)
        if not self.writes:
            return final
        check_can_write(self.out_dir)
        clear(self.out_dir)
        os.makedirs(final, exist_ok=True)
        # The splits first, the index last: a folder with clips.json is complete.
        names = sorted(os.listdir(self.partial), key=lambda name: name == INDEX_FILE)
        for name in names:
            os.replace(os.path.join(self.partial, name), os.path.join(final, name))
        os.rmdir(self.partial)
        return final


def _frames(clip: np.ndarray) -> np.ndarray:
    """``(T, H, W, C)`` → the dataset's frames: ``(T, H, W)`` for gray, ``(T, H, W, 3)``."""
    return clip[..., 0] if clip.shape[-1] == 1 else clip

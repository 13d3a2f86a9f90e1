"""Orbax checkpoints of (train state, data iterator state, config).

Items per step directory: ``state`` (the train state pytree, each process
writing its own shards), ``data`` (JSON: the data iterator state of every
process, gathered to process 0 as ``{"process_count": P, "states": {"0": ...,
"1": ...}}``) and ``config`` (JSON). Saves are asynchronous. Orbax writes a
step into a temporary directory and renames it when every item is complete,
so a save killed half-way leaves only a temporary directory that
``latest_step`` never lists: the newest listed step is the latest good one.
The directory is made by the first save, never by reading.

For inference, ``load_train_state`` restores a run's checkpoint onto the current devices,
``load_from_checkpoint`` takes its weights as a bundle, ``export_bundle`` writes them as one,
``export_latent_diffusion_checkpoint`` writes them in PredVDM's layout (both refuse paths where
they could replace the run's checkpoints or another file: ``check_bundle_export_path``,
``check_export_path``), and ``load_model`` loads a bundle or a run with config
overrides (scripts/evaluate.py and scripts/sample.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from typing import Any, Callable, Container, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from predvdm_jax import atomic_io, config as config_lib, mesh as mesh_lib
from predvdm_jax.data import hdf5
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax import folders
from predvdm_jax.folders import CHECKPOINT_DIR
from predvdm_jax.interop import predvdm_ckpt, torch_checkpoint
from predvdm_jax.interop.bundle import (
    Bundle,
    BundleSource,
    read_bundle,
    resolve_bundle_path,
    save_bundle,
)
from predvdm_jax.interop.params import load_vq_params
from predvdm_jax.seeds import prng_key
from predvdm_jax.tensor_files import check_finite
from predvdm_jax.training import optim, train_state

DENOISER_FIELDS = (
    "unet",
    "vq",
    "model.mode",
    "model.attn_heads_tc",
    "model.attn_heads_ct",
    "model.attn_dim_head",
    "data.cond_frames",
    "data.pred_frames",
    "data.channels",
    "data.image_size",
    "scale_factor",
    "diffusion.timesteps",
    "diffusion.beta_schedule",
    "diffusion.linear_start",
    "diffusion.linear_end",
    "diffusion.parameterization",
)
"""Config fields (a section: all its fields) that decide the denoiser's parameters or what
they mean: the latents' scale, the noise schedule and what the network predicts."""
VQ_FIELDS = ("vq", "data.image_size", "data.channels")
"""Config fields of a VQ run's parameters; its discriminator is ``vq_trainer.DERIVED_FIELDS``."""


def _gradient_clipping(config: Mapping[str, Any]) -> str:
    return "on" if config["optimizer"]["grad_clip"] > 0 else "off"


DENOISER_DERIVED = {"gradient clipping (optimizer.grad_clip > 0)": _gradient_clipping}
"""Values that decide the structure of a denoiser run's optimizer state (``optim.make_optimizer``
chains a clipping stage only when ``optimizer.grad_clip`` > 0; the other optimizer fields change
values, not the state's structure)."""

TRAINERS = {"denoiser": "a denoiser run (scripts/train.py)", "vq": "a VQ run (scripts/train_vq.py)"}


class CheckpointReadError(ValueError):
    """A checkpoint step on disk could not be read (damaged or incomplete files)."""


class CheckpointWriteError(OSError):
    """A checkpoint step could not be written (its background save failed: a full disk, a
    folder gone or not writable)."""


_START_FROM = {
    "denoiser": "--config.train.init_from={bundle}",
    "vq": f"--config.vq_train.init_from={{bundle}}/{folders.VQ_FILE}",
}
"""How each trainer (``TRAINERS``) starts from the weights of a bundle."""


def check_workdir(workdir: str, trainer: str = "denoiser") -> None:
    """Raises ``ValueError`` when ``workdir`` cannot be a run's folder: an existing file (or a
    folder above it is one), an inference bundle or a folder in one (``folders.bundle_folder``),
    or a dataset's folder (it holds shards, or splits of shards), which the run's files would
    join."""
    path = atomic_io.file_in_the_way(workdir)
    if path is not None:
        where = "" if path == os.path.abspath(workdir) else f" ({path} is a file)"
        raise ValueError(
            f"--workdir {workdir} is not a folder{where}; pass a new folder, or the workdir of "
            f"the run to resume."
        )
    fix = "pass a new folder for the run"
    problem = folders.bundle_folder(workdir)
    if problem is not None and folders.is_bundle(workdir):
        start_from = _START_FROM[trainer].format(bundle=workdir)
        fix += f" (to start from the bundle's weights: {start_from})"
    elif problem is None:
        problem = _dataset_folder(workdir)
    if problem is not None:
        raise ValueError(f"--workdir {workdir} {problem}; {fix}.")


def _dataset_folder(path: str) -> str | None:
    """Why ``path`` is a dataset's folder, as words completing "``path`` ...", or None."""
    if not os.path.isdir(path):
        return None
    if hdf5.shard_paths(path):
        return "holds a dataset's shards (it is a split folder)"
    splits = hdf5.split_dirs(path)
    if splits:
        return f"holds a dataset (its splits {', '.join(splits)})"
    return None


def _first_line(err: BaseException) -> str:
    """The first line of the innermost cause of ``err`` (Orbax wraps TensorStore's reason)."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines() or [type(err).__name__]
    line = lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


class _OrbaxTeardownNoise(logging.Filter):
    """Drops asyncio's 'exception was never retrieved' records of a failed Orbax read."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            "exception was never retrieved" in record.getMessage()
            and _is_teardown_noise(record.exc_info[1] if record.exc_info else None)
        )


def _is_teardown_noise(err: BaseException | None, obj: Any = None) -> bool:
    if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
        return True
    if "Encountered error while reading array index" in str(err):
        return True
    return "_read_array_index_and_device_put" in repr(obj)


_QUIET = False


def _quiet_orbax_teardown() -> None:
    """When one array of a restore fails, Orbax closes its event loop with the other reads still
    in flight: each then reports 'Event loop is closed' or its own read error as an unraisable
    exception (hundreds of tracebacks, after the restore has already raised). This drops
    exactly those reports, once per process; every other one goes to the previous hook."""
    global _QUIET
    if _QUIET:
        return
    _QUIET = True
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_teardown_noise(unraisable.exc_value, unraisable.object):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_OrbaxTeardownNoise())


def _gather_json(value: Any) -> dict[str, Any]:
    """Every process's JSON-serialisable ``value``, keyed by process index."""
    count = jax.process_count()
    if count == 1:
        return {"0": value}
    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size], np.int32))
    lengths = np.asarray(lengths).reshape(count)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(count, -1)
    return {str(i): json.loads(gathered[i, : lengths[i]].tobytes().decode()) for i in range(count)}


def config_to_json(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of an ``ml_collections.ConfigDict`` (or a plain dict)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=str))


class Checkpointer:
    """Async Orbax checkpointing of the train state with data and config.

    Call ``save`` on every process at the same steps (it is collective in
    multi-process runs).
    """

    def __init__(
        self,
        directory: str | epath.PathLike,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
    ):
        # Orbax's background save needs an absolute path (a relative one fails only at the end).
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=False,  # the first save makes it: reading a wrong path leaves no trace
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config")
        )
        self._writing: int | None = None  # the step of the save that may still fail
        self._failed: CheckpointWriteError | None = None  # that save's failure, once raised

    def latest_step(self) -> int | None:
        """Newest finished step (unfinished saves are never listed)."""
        self._manager.reload()
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any = None, config: Any = None) -> None:
        """Starts an async save of ``step``; ``data_state`` is this process's iterator state.
        A ``CheckpointWriteError`` when the previous save failed."""
        self.wait_until_finished()  # as Orbax would: a failure is then the previous save's
        data = {"process_count": jax.process_count(), "states": _gather_json(data_state)}
        self._writing = int(step)
        with self._write_errors_named():
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data),
                    config=ocp.args.JsonSave(config_to_json(config) if config is not None else {}),
                ),
                force=True,
            )

    def check_for_errors(self) -> None:
        """A ``CheckpointWriteError`` when a finished background save failed (without waiting
        for one in progress): a run learns of a full disk at once, not at its next save."""
        with self._write_errors_named():
            self._manager.check_for_errors()

    @contextlib.contextmanager
    def _write_errors_named(self):
        """Orbax's error of a failed background save, as a ``CheckpointWriteError`` naming the
        step, the folder, the last good checkpoint and the fix."""
        try:
            yield
        except Exception as err:
            if self._writing is None and self._failed is not None:
                raise self._failed from err  # Orbax reports a failed save on every later call
            if self._writing is None:
                raise
            failed, self._writing = self._writing, None
            try:
                kept = self.latest_step()
            except Exception:  # the folder itself may be what failed
                kept = None
            last = f"step {kept} is the last good checkpoint" if kept is not None else "none was"
            self._failed = CheckpointWriteError(
                f"checkpoint step {failed} could not be written in {self.directory} "
                f"({type(err).__name__}: {err}); {last}: free disk space or fix the folder, then "
                f"run the same command to resume"
            )
            raise self._failed from err

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
        """(state on ``abstract_state``'s shardings, this process's data state) of ``step``.

        ``abstract_state`` holds ``jax.ShapeDtypeStruct`` leaves with the
        *current* mesh's shardings, so a checkpoint saved on any device count
        restores onto this one.
        """
        self._check_step(step)
        _quiet_orbax_teardown()
        try:
            restored = self._manager.restore(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:  # noqa: BLE001 - Orbax raises bare Exceptions for bad reads
            raise self._restore_error(step, err) from None
        data = restored.data
        saved_count, states = int(data["process_count"]), data["states"]
        if saved_count == jax.process_count():
            return restored.state, states[str(jax.process_index())]
        # The loaders' states count global batches, so equal ones restore on any process count.
        if all(state == states["0"] for state in states.values()):
            return restored.state, states["0"]
        raise ValueError(
            f"checkpoint step {step} in {self.directory} holds differing data iterator states "
            f"of {saved_count} processes but this run has {jax.process_count()}; resume with "
            f"{saved_count} processes or start a new workdir"
        )

    def _restore_error(self, step: int, err: Exception) -> ValueError:
        """One line for a failed restore of ``step``: parameters of other shapes, a train state
        of another structure, or files that cannot be read."""
        text = str(err)
        mismatch = re.search(
            r"Requested shape: \(.*?\) is not compatible with the stored shape: \(.*?\)",
            text,
        )
        if mismatch is not None:
            return ValueError(
                f"checkpoint step {step} in {self.directory} does not fit this model's parameter "
                f"shapes ({mismatch.group(0)}). Was it written with another config? "
                f"Resume with the run's own config, or start a new workdir."
            )
        if "tree structures do not match" in text:
            paths = re.findall(r"^(\S[^\n]*):\n\s+- Source:", text, re.MULTILINE)
            where = f" (first at {paths[0]})" if paths else ""
            return ValueError(
                f"checkpoint step {step} in {self.directory} holds a train state of another "
                f"structure than this run's{where}: it was written with another config or by "
                f"another trainer. Resume with the run's original config, or pass a new "
                f"--workdir to start over."
            )
        return self._read_error(step, err)

    def _check_step(self, step: int) -> None:
        """``FileNotFoundError`` listing the finished steps when ``step`` is not one."""
        if not (self.directory / str(step)).is_dir():
            steps = ", ".join(str(s) for s in self.all_steps()) or "none"
            raise FileNotFoundError(
                f"no checkpoint step {step} in {self.directory} (finished steps: {steps})"
            )

    def _read_error(self, step: int, err: Exception, item: str = "") -> CheckpointReadError:
        reason = f"{item}: {_first_line(err)}" if item else _first_line(err)
        return CheckpointReadError(
            f"could not read checkpoint step {step} in {self.directory} ({reason}); "
            f"its files are damaged or incomplete: delete {self.directory / str(step)} to resume "
            f"training from the step before it, or pass --step=<an earlier step> to evaluate or "
            f"export one ({', '.join(str(s) for s in self.all_steps()) or 'none'} on disk)."
        )

    def all_steps(self) -> list[int]:
        """Every finished step on disk, oldest first."""
        try:
            return sorted(self._manager.all_steps())
        except Exception:  # noqa: BLE001 - only for an error message
            return []

    def restore_latest(self, abstract_state: Any) -> tuple[Any, Any, int] | None:
        """(state, data state, step) of the newest finished checkpoint, or None."""
        step = self.latest_step()
        if step is None:
            return None
        state, data_state = self.restore(step, abstract_state)
        return state, data_state, step

    def restore_config(self, step: int) -> dict[str, Any]:
        """The config saved with ``step`` (a JSON dict); unreadable files are a
        ``CheckpointReadError`` naming the step and the fix."""
        self._check_step(step)
        try:
            restored = self._manager.restore(
                int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
            config = restored.config
        except Exception as err:  # noqa: BLE001 - anything from JSON to OSError
            raise self._read_error(
                step, err, os.fspath(self.directory / str(step) / "config")
            ) from None
        if not isinstance(config, dict):
            raise self._read_error(
                step, ValueError(f"not a dict but {type(config).__name__}"), "its config"
            )
        return config

    def saved_trainer(self, step: int) -> str | None:
        """Which trainer wrote ``step``: "denoiser" or "vq" by its parameters' names in the
        state's tree metadata (no array is read), or None when that does not tell."""
        try:
            tree = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
            top = set(tree["params"])
        except Exception:  # noqa: BLE001 - unreadable metadata only means "cannot tell"
            return None
        if "diffusion_model" in top:
            return "denoiser"
        if {"encoder", "decoder", "quantize"} <= top:
            return "vq"
        return None

    def wait_until_finished(self) -> None:
        with self._write_errors_named():
            self._manager.wait_until_finished()
        self._writing = None

    def close(self) -> None:
        """Waits for the last save and closes Orbax's manager; a failed save that was already
        raised is not raised again (the run stopped on it)."""
        raised_before = self._failed is not None
        try:
            self.wait_until_finished()
        except CheckpointWriteError:
            if not raised_before:
                raise
        finally:
            if self._failed is None:
                self._manager.close()
            else:
                with contextlib.suppress(Exception):  # its own wait reports the failure again
                    self._manager.close()


def _reader(workdir: str) -> Checkpointer | None:
    """A synchronous ``Checkpointer`` of the run in ``workdir``, or None when it has none."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    return Checkpointer(directory, async_save=False) if os.path.isdir(directory) else None


def latest_step(workdir: str) -> int | None:
    """The newest finished checkpoint step of the training run in ``workdir`` (None: none)."""
    checkpointer = _reader(workdir)
    if checkpointer is None:
        return None
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def _differences(
    saved: Any, current: Any, name: str, where: str, ignored: Container[str] = ()
) -> list[str]:
    """``"<field> <saved value> <where>, <current value> now"`` for every leaf that differs,
    but the fields named in ``ignored``."""
    if name in ignored:
        return []
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return [
            difference
            for key in saved
            for difference in _differences(
                saved[key], current[key], f"{name}.{key}", where, ignored
            )
        ]
    return [] if saved == current else [f"{name} {saved!r} {where}, {current!r} now"]


def model_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    where: str,
    fields: Sequence[str] = DENOISER_FIELDS,
    derived: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = DENOISER_DERIVED,
) -> list[str]:
    """Every value of ``fields`` (dotted names) and of ``derived`` (functions of a config's JSON
    dict) on which two configs' JSON dicts differ, each ``"<field> <saved> <where>, <current>
    now"``: weights saved with ``saved`` would not fit ``current``, or would mean another
    model."""
    differences = _field_differences(saved, current, fields, where)
    for name, value_of in (derived or {}).items():
        differences += _differences(value_of(saved), value_of(current), name, where)
    return differences


def _field_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    fields: Sequence[str],
    where: str,
    ignored: Container[str] = (),
) -> list[str]:
    """``_differences`` of two configs' JSON dicts over ``fields`` (dotted; a section: all of
    its fields but ``ignored``)."""
    differences = []
    for field in fields:
        saved_value = config_lib.field_value(saved, field)
        current_value = config_lib.field_value(current, field)
        differences += _differences(saved_value, current_value, field, where, ignored)
    return differences


def saved_config(workdir: str) -> ml_collections.ConfigDict:
    """The config saved with the newest finished checkpoint of the run in ``workdir``; a
    ``FileNotFoundError`` when it has none, a ``ConfigError`` when it does not load."""
    checkpointer = _reader(workdir)
    try:
        step = None if checkpointer is None else checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"{workdir} has no finished checkpoint; delete {workdir} to train it again"
            )
        return _saved_config(checkpointer, step, f"delete {workdir} to train it again")
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _saved_config(checkpointer: Checkpointer, step: int, fix: str) -> ml_collections.ConfigDict:
    """The config saved with ``step``; one that does not load (an unknown field, ...) is a
    ``ConfigError`` naming the step, what is wrong and ``fix``."""
    try:
        return config_lib.config_from_dict(checkpointer.restore_config(step))
    except config_lib.ConfigError as err:
        raise config_lib.ConfigError(
            f"the config saved with checkpoint step {step} in {checkpointer.directory} does not "
            f"load ({err}); {fix}"
        ) from None


def _check_trainer(checkpointer: Checkpointer, step: int, workdir: str, trainer: str, fix: str):
    """Raises ``ValueError`` when ``step`` was written by another trainer than ``trainer``."""
    saved = checkpointer.saved_trainer(step)
    if saved is not None and saved != trainer:
        holds = {"vq": "a VQ", "denoiser": "a denoiser"}
        raise ValueError(
            f"{workdir} is the workdir of {TRAINERS[saved]}: its checkpoint (step {step}) holds "
            f"{holds[saved]}, not {holds[trainer]}; {fix}"
        )


def check_saved_config(
    workdir: str,
    config: Any,
    fields: Sequence[str] = DENOISER_FIELDS,
    derived: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = DENOISER_DERIVED,
    trainer: str = "denoiser",
) -> None:
    """Raises ``ConfigError`` naming every field of ``fields`` (dotted names) on which the config
    saved with the newest checkpoint in ``workdir`` differs from ``config``: resuming would fail
    on the parameters' shapes or the optimizer state's structure, or train another model.
    ``derived`` maps names to functions of a config's JSON dict (values decided by several
    fields), compared the same way. A saved config that does not load (an unknown field, ...)
    is a ``ConfigError`` too; a checkpoint of another ``trainer`` ("denoiser" or "vq") is a
    ``ValueError``."""
    checkpointer = _reader(workdir)
    if checkpointer is None:
        return
    try:
        step = checkpointer.latest_step()
        if step is None:
            return
        _check_trainer(
            checkpointer,
            step,
            workdir,
            trainer,
            f"pass a new --workdir to train {TRAINERS[trainer]}.",
        )
        saved = config_to_json(
            _saved_config(checkpointer, step, "pass a new --workdir to start over.")
        )
    finally:
        checkpointer.close()
    current = config_to_json(config)
    differences = model_differences(saved, current, "in the checkpoint", fields, derived)
    if differences:
        raise config_lib.ConfigError(
            f"{workdir} holds a checkpoint (step {step}) of another model: "
            f"{'; '.join(differences)}. Resume with the run's original config, or pass a new "
            f"--workdir to start over."
        )
    changed = _field_differences(saved, current, sorted(set(saved) | set(current)), "then")
    if changed:  # allowed (the schedule, the data, ...), but said: a resume is no fresh start
        logging.warning(
            "resuming %s from step %d with settings changed since it was saved: %s",
            workdir,
            step,
            "; ".join(changed),
        )


def load_train_state(
    workdir: str, step: int | None = None, vq_params: str | None = None
) -> tuple[Any, Any, int]:
    """(config, train state, step) of a training run's checkpoint (the newest finished one by
    default), restored onto the current devices, whatever the device count of the run.
    ``vq_params`` replaces the VQ file the run recorded (moved since training); the config's
    VQ file must exist, checked before the restore."""
    if folders.is_bundle(workdir):
        raise ValueError(
            f"{workdir} is an inference bundle (scripts/export.py), not a training workdir: "
            f"sample.py and evaluate.py take it as --bundle={workdir}"
        )
    none_finished = FileNotFoundError(
        f"no finished checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}; train first "
        f"(scripts/train.py --workdir={workdir}), or give evaluate.py / sample.py an exported "
        f"--bundle."
    )
    checkpointer = _reader(workdir)
    if checkpointer is None:
        raise none_finished
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise none_finished
        _check_trainer(
            checkpointer,
            step,
            workdir,
            "denoiser",
            f"pass the workdir of a scripts/train.py run, or a --bundle (its VQ params are "
            f"{os.path.join(workdir, 'vq_params.safetensors')}: set config.vq_params to them).",
        )
        config = _saved_config(
            checkpointer, step, "train a new run (scripts/train.py --workdir=<new folder>)."
        )
        if vq_params:
            config = config_lib.with_overrides(config, {"vq_params": vq_params})
        elif not os.path.isfile(config.vq_params):
            raise FileNotFoundError(
                f"the VQ params {config.vq_params!r} that the run {workdir} recorded are not "
                "there; pass where the file is now: --config.vq_params=<file> (sample.py, "
                "evaluate.py) or --vq_params=<file> (export.py)"
            )
        model = LatentDiffusion.from_config(config)
        optimizer, _ = optim.make_optimizer(config)
        abstract, _ = train_state.abstract_train_state(
            model.init_denoiser, optimizer, prng_key(config.seed), mesh_lib.make_mesh()
        )
        state, _ = checkpointer.restore(step, abstract)
    finally:
        checkpointer.close()
    return config, state, step


def load_from_checkpoint(
    workdir: str, use_ema: bool = True, step: int | None = None, vq_params: str | None = None
) -> Bundle:
    """Denoiser params (EMA by default), VQ params and config of a training run's checkpoint,
    with its source (the workdir, step and weights); ``vq_params`` as in ``load_train_state``.
    Weights holding NaN or Inf are a ``ValueError`` (``load_vq_params`` checks the VQ's)."""
    config, state, step = load_train_state(workdir, step, vq_params)
    params = _host_tree(state.ema_params if use_ema else state.params)
    weights = "EMA" if use_ema else "raw"
    check_finite(
        params,
        f"checkpoint {workdir} step {step} ({weights} weights): the denoiser weights",
        "load another step of the run (--step)",
    )
    source = BundleSource(
        "run",
        os.path.abspath(workdir),
        weights,
        step,
        int(mesh_lib.to_host(state.ema_updates)) if use_ema else None,
    )
    return Bundle(config, params, load_vq_params(config.vq_params, config), source)


def _host_tree(tree: Any) -> Any:
    """``tree``'s arrays as host numpy arrays; collective in a multi-process run (every process
    calls it), whose restored arrays span the devices of every process."""
    return jax.tree.map(mesh_lib.to_host, tree)


def check_bundle_export_path(path: str, workdir: str) -> None:
    """A ``ValueError`` if a bundle of the run ``workdir`` may not be written to ``path``:
    inside the workdir, where a bundle could replace the run's checkpoints."""
    if atomic_io.is_inside(path, workdir):
        raise ValueError(
            f"--out {path} is inside --workdir {workdir}, where a bundle could replace the "
            f"run's checkpoints; pick a folder outside the workdir"
        )


def _export_path_problem(path: str, workdir: str) -> str | None:
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    checkpoints = os.path.join(os.path.realpath(workdir), CHECKPOINT_DIR)
    if atomic_io.is_inside(real, checkpoints):
        return f"is inside the run's checkpoint folder {checkpoints}"
    if os.path.isdir(real):
        return "is a folder"
    if not os.path.exists(real):
        return None
    if folders.is_bundle(folder):
        return f"exists inside the bundle folder {folder}, whose file it would replace"
    if not predvdm_ckpt.is_latent_diffusion_export(real):
        return (
            f"exists and is not an earlier export of this project (it records no "
            f"{predvdm_ckpt.EXPORT_MARKER}), so it is not replaced"
        )
    return None


def check_export_path(path: str, workdir: str) -> None:
    """A ``ValueError`` if the PredVDM checkpoint of the run ``workdir`` may not be written to
    ``path``, which could destroy something: only a new path, or an earlier export
    (``predvdm_ckpt.is_latent_diffusion_export``, outside any bundle folder and the run's
    checkpoints), may be written; never another file, such as the original's ``last.ckpt``."""
    problem = _export_path_problem(path, workdir)
    if problem:
        raise ValueError(
            f"--predvdm_ckpt {path} {problem}; nothing was written. "
            f"Pass a new file path (e.g. exports/<run>.ckpt)."
        )


def export_bundle(
    workdir: str,
    path: str,
    use_ema: bool = True,
    step: int | None = None,
    vq_params: str | None = None,
) -> Bundle:
    """Writes a run's checkpoint (the newest finished one by default) as an inference bundle
    at ``path`` (``check_bundle_export_path`` first) and returns it; ``vq_params`` as in
    ``load_from_checkpoint``. In a multi-process run every process calls it (the restore is
    collective) and process 0 writes."""
    check_bundle_export_path(path, workdir)
    exported = load_from_checkpoint(workdir, use_ema=use_ema, step=step, vq_params=vq_params)
    if jax.process_index() == 0:
        save_bundle(path, exported)
    return exported


def export_latent_diffusion_checkpoint(
    workdir: str, path: str, step: int | None = None, vq_params: str | None = None
) -> tuple[int, ml_collections.ConfigDict]:
    """Writes a run's checkpoint (the newest finished one by default) as a PredVDM
    ``LatentDiffusion`` checkpoint (``predvdm_ckpt.write_latent_diffusion_checkpoint``), after
    ``check_export_path``; ``vq_params`` as in ``load_train_state``. Returns the step written
    and the run's config (the original's yaml must give its ``scale_factor`` and
    parameterization). In a multi-process run every process calls it (the restore is
    collective) and process 0 writes."""
    check_export_path(path, workdir)
    if torch_checkpoint.state_dict_format(path) == "torch":
        torch_checkpoint.import_torch()  # before the restore, so a missing PyTorch fails fast
    config, state, step = load_train_state(workdir, step, vq_params)
    state = _host_tree(state)
    if jax.process_index() == 0:
        predvdm_ckpt.write_latent_diffusion_checkpoint(path, config, state, step)
    return step, config


class ModelSource(str):
    """``load_model``'s description of what it loaded (a string, as reports record it), with
    the checkpoint ``step`` and ``weights`` ("EMA" or "raw"): a workdir's, or those a bundle
    records (``BundleSource``; None where it records none, or no step)."""

    step: int | None
    weights: str | None

    def __new__(cls, text: str, step: int | None = None, weights: str | None = None):
        source = super().__new__(cls, text)
        source.step, source.weights = step, weights
        return source


def load_model(
    bundle: str | None = None,
    workdir: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    use_ema: bool = True,
    step: int | None = None,
) -> tuple[Bundle, ModelSource]:
    """(model, where it came from) of a ``bundle`` folder or a training ``workdir`` (exactly
    one), its config with ``overrides`` (``{"section.field": value}``) applied. A run's
    ``best/`` folder loads its bundle of lowest validation loss; a workdir its checkpoint
    ``step`` (the newest by default), EMA weights unless ``use_ema`` is False. A bundle holds
    the one set of weights it was exported with: ``step`` or ``use_ema=False`` with a bundle
    is a ``ValueError``."""
    if bool(bundle) == bool(workdir):
        raise ValueError(f"pass exactly one of a bundle or a workdir, got {bundle!r}, {workdir!r}")
    if bundle and (step is not None or not use_ema):
        chosen = ([f"step={step} (--step)"] if step is not None else []) + (
            [] if use_ema else ["use_ema=False (--nouse_ema)"]
        )
        raise ValueError(
            f"bundle {bundle} holds the one set of weights it was exported with; "
            f"{' and '.join(chosen)} {'applies' if len(chosen) == 1 else 'apply'} only to a "
            f"training workdir's checkpoints: drop {'it' if len(chosen) == 1 else 'them'}, or "
            f"pass the workdir instead of the bundle"
        )
    overrides = dict(overrides or {})
    if bundle:
        if "vq_params" in overrides:
            raise config_lib.ConfigError(
                f"--config.vq_params has no effect with bundle {bundle}, which holds its own VQ "
                f"({folders.VQ_FILE}); remove it, or pass the training workdir instead"
            )
        path = resolve_bundle_path(bundle)
        loaded = read_bundle(path)
        recorded = loaded.source
        if recorded is None:
            source = ModelSource(f"bundle {path}")
        else:
            source = ModelSource(f"bundle {path} of {recorded}", recorded.step, recorded.weights)
    else:
        loaded = load_from_checkpoint(workdir, use_ema, step, overrides.get("vq_params"))
        step, weights = loaded.source.step, loaded.source.weights
        source = ModelSource(f"checkpoint {workdir} step {step} ({weights} weights)", step, weights)
    # Weight fields first: an override of one may also fail validation, which would hide why.
    config = config_lib.with_overrides(loaded.config, overrides, validated=False)
    _check_weight_fields_kept(loaded.config, config, source)
    return dataclasses.replace(loaded, config=config_lib.validate(config)), source


INFERENCE_RUNTIME_FIELDS = ("unet.dropout", "vq.dropout")
"""Fields of ``DENOISER_FIELDS`` that do nothing at inference, so overriding them is harmless."""


def _check_weight_fields_kept(saved: Any, config: Any, source: str) -> None:
    """A ``ConfigError`` naming every field of ``DENOISER_FIELDS`` that ``--config.*`` overrides
    changed: the weights were trained for the saved values (another shape fails deep in Flax,
    another schedule or scale silently predicts noise)."""
    changed = _field_differences(
        config_to_json(saved),
        config_to_json(config),
        DENOISER_FIELDS,
        "saved",
        ignored=INFERENCE_RUNTIME_FIELDS,
    )
    if changed:
        raise config_lib.ConfigError(
            f"the --config overrides change what the weights of {source} mean: "
            f"{'; '.join(changed)}; the model's "
            f"shapes, frame counts, latent scale, noise schedule and parameterization come with "
            f"its weights: drop those overrides"
        )

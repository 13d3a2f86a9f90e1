"""Metric writers: TensorBoard events, a JSONL file, PNG files, the log, a progress bar.

clu 0.0.12's ``metric_writers`` package (and ``periodic_actions``, which
imports it) imports TensorFlow when it is imported, and TensorFlow is not a
dependency of this project. The writers here keep clu's ``MetricWriter``
method names (``write_scalars``, ``write_images``, ``write_hparams``, ``flush``,
``close``) and
write TensorBoard event files with the ``tensorboard`` package's own event
writer, which needs no TensorFlow. ``ProgressReporter`` measures steps/s, as clu's
``ReportProgress`` does, and draws a tqdm bar.

Only process 0 writes files or draws the bar; other processes log to absl.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from predvdm_jax import atomic_io, folders

JSONL_NAME = folders.METRICS_FILE


def _as_float(value: Any) -> float:
    return float(np.asarray(value))


def _as_image(name: str, value: Any) -> np.ndarray:
    """A uint8 ``(H, W)`` or ``(H, W, 1 | 3)`` image, or a clear error."""
    image = np.asarray(value)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.shape[2:] not in ((), (3,)):
        raise ValueError(
            f"image {name!r} must be uint8 (H, W), (H, W, 1) or (H, W, 3); got {image.dtype} "
            f"{image.shape}"
        )
    return image


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _record(path: str, number: int, line: str, last: bool) -> dict | None:
    """Line ``number`` of ``path`` as its record; None for a last line cut short (a killed
    run's), a ``ValueError`` naming the file for any other line that does not parse."""
    try:
        record = json.loads(line)
        record["step"]
        return record
    except (ValueError, TypeError, KeyError):
        if last:
            logging.warning("%s: dropped its last line, cut short: %r", path, line[:80])
            return None
        raise ValueError(
            f"{path}: line {number} is not a metrics record ({line[:80]!r}); move the file "
            f"away (the run logs afresh from the checkpoint) or delete that line"
        ) from None


class JsonlWriter:
    """One JSON object per ``write_scalars`` call: ``{"step": s, name: value, ...}``.

    With ``resume_step`` set, lines of steps after it (logged by a run that
    died before its next checkpoint) are dropped first, so the file reads as
    one uninterrupted run; so is a last line cut short by that death (a full disk, a kill).
    """

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if resume_step is not None and os.path.exists(path):
            with open(path) as f:
                lines = [line for line in f if line.strip()]
            records = [
                _record(path, n, line, last=n == len(lines)) for n, line in enumerate(lines, 1)
            ]
            kept = [
                line
                for line, record in zip(lines, records)
                if record and record["step"] <= resume_step
            ]
            atomic_io.write_text(
                path, "".join(line if line.endswith("\n") else line + "\n" for line in kept)
            )
        # Line-buffered: a killed run keeps every line it logged.
        self._file = open(path, "a", buffering=1)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step)}
        record.update({k: _as_float(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        del step, images

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class TensorBoardWriter:
    """Scalar summaries in a TensorBoard event file, without TensorFlow.

    With ``resume_step`` set it first logs a session start at the step after it, TensorBoard's
    sign to drop what earlier event files hold from that step on (a run that died after
    them)."""

    def __init__(self, logdir: str, resume_step: int | None = None):
        self._writer = EventFileWriter(logdir)
        if resume_step is not None:
            self._writer.add_event(
                event_pb2.Event(
                    wall_time=time.time(),
                    step=int(resume_step) + 1,
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
                )
            )

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = [
            summary_pb2.Summary.Value(tag=k, simple_value=_as_float(v)) for k, v in scalars.items()
        ]
        self._writer.add_event(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
        )

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        values = [
            summary_pb2.Summary.Value(
                tag=name,
                image=summary_pb2.Summary.Image(
                    height=image.shape[0],
                    width=image.shape[1],
                    colorspace=1 if image.ndim == 2 else 3,
                    encoded_image_string=_png_bytes(image),
                ),
            )
            for name, image in images.items()
        ]
        self._writer.add_event(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            )
        )

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        text = json.dumps(dict(hparams), indent=1, default=str)
        self._writer.add_event(
            event_pb2.Event(
                wall_time=time.time(),
                step=0,
                summary=summary_pb2.Summary(
                    value=[
                        summary_pb2.Summary.Value(
                            tag="hparams",
                            metadata=summary_pb2.SummaryMetadata(
                                plugin_data=summary_pb2.SummaryMetadata.PluginData(
                                    plugin_name="text"
                                )
                            ),
                            tensor=_text_tensor(text),
                        )
                    ]
                ),
            )
        )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _text_tensor(text: str):
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        string_val=[text.encode()],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
    )


_IMAGE_NAME = re.compile(r"[A-Za-z0-9_.-]+_(\d{8,})\.png")  # what write_images names its files


class ImageFileWriter:
    """Each image as ``directory/<name>_<step>.png`` (``/`` in names becomes ``_``).

    With ``resume_step`` set, images of later steps (a run that died after them) are
    deleted first, as ``JsonlWriter`` drops their lines."""

    def __init__(self, directory: str, resume_step: int | None = None):
        self.directory = directory
        if resume_step is not None and os.path.isdir(directory):
            for name in os.listdir(directory):
                match = _IMAGE_NAME.fullmatch(name)
                if match and int(match.group(1)) > resume_step:
                    os.remove(os.path.join(directory, name))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        del step, scalars

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for name, image in images.items():
            path = os.path.join(
                self.directory, f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}_{step:08d}.png"
            )
            atomic_io.write_bytes(path, _png_bytes(image))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LoggingWriter:
    """Scalars to the absl log, one line per call."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        text = ", ".join(f"{k}={_as_float(v):.6g}" for k, v in scalars.items())
        logging.info("[%d] %s", step, text)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in images.items())
        logging.info("[%d] images: %s", step, shapes)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("hparams: %s", dict(hparams))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MultiWriter:
    def __init__(self, writers: Sequence[Any]):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        scalars = {k: _as_float(v) for k, v in scalars.items()}
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        images = {k: _as_image(k, v) for k, v in images.items()}
        for w in self.writers:
            w.write_images(step, images)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_hparams(hparams)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def create_default_writer(workdir: str, *, resume_step: int | None = None) -> MultiWriter:
    """TensorBoard (``workdir/tensorboard``) + ``workdir/metrics.jsonl`` + images as
    ``workdir/images/*.png`` + log on process 0; the log only elsewhere."""
    if jax.process_index() != 0:
        return MultiWriter([LoggingWriter()])
    return MultiWriter(
        [
            LoggingWriter(),
            TensorBoardWriter(os.path.join(workdir, "tensorboard"), resume_step=resume_step),
            JsonlWriter(os.path.join(workdir, JSONL_NAME), resume_step=resume_step),
            ImageFileWriter(os.path.join(workdir, "images"), resume_step=resume_step),
        ]
    )


class ProgressReporter:
    """Steps/s over each reporting interval, plus a tqdm bar on process 0 (``show_bar``).

    Call it once per finished step; every ``every_steps`` it returns the steps/s since
    the last report or ``restart``, else None (also when no step was timed since).
    The loop restarts the clock after time that is not training: the first step's
    compilation, evaluations and previews.
    """

    def __init__(
        self, num_train_steps: int, *, every_steps: int, start_step: int = 0, show_bar: bool = True
    ):
        self._every = every_steps
        self.restart(start_step)
        self._bar = None
        if show_bar and jax.process_index() == 0:
            from tqdm import tqdm

            self._bar = tqdm(
                total=num_train_steps, initial=start_step, unit="step", dynamic_ncols=True
            )

    def restart(self, step: int) -> None:
        """Times from now, counting the steps after ``step``."""
        self._last_step, self._last_time = step, time.perf_counter()

    def __call__(self, step: int) -> float | None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
        if step % self._every or step == self._last_step:
            return None
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return rate

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

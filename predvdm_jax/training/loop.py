"""The generic training loop: mesh, state or resume, steps, logs, checkpoints.

It reads a validated config (``predvdm_jax/config.py`` holds every field's default):
``seed``, ``mesh.*``, ``data.batch_size`` (global), ``optimizer.*`` (``optim.py``) and
``train.num_steps``, ``log_every``, ``save_every``, ``max_to_keep``, ``ema_rate``,
``grad_accum_steps``, ``profile_start`` and ``profile_steps``: a profiler trace of those
steps in ``workdir/profile`` (open it with TensorBoard's profile plugin or Perfetto).

Resuming restores the state and the data iterator's state of the newest
finished checkpoint in ``workdir/checkpoints``, so the resumed run sees the
batches an uninterrupted run would and reaches the same parameters.

The run holds its workdir (``workdir_lock.hold``): a second run there raises
``WorkdirBusyError`` before writing anything.

On SIGTERM (a preemption notice) or a first Ctrl-C the loop finishes its step, saves it,
and raises ``TrainingPreempted``; rerunning the same command resumes from there.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from predvdm_jax.config import ConfigError
from predvdm_jax.mesh import batch_sharding, make_global_batch, make_mesh
from predvdm_jax.seeds import prng_key
from predvdm_jax.training import workdir_lock
from predvdm_jax.training.checkpoint import (
    CHECKPOINT_DIR,
    Checkpointer,
    check_workdir,
    latest_step,
)
from predvdm_jax.training.flops import matmul_flops, peak_bf16_flops
from predvdm_jax.training.metric_writers import ProgressReporter, create_default_writer
from predvdm_jax.training.optim import make_optimizer
from predvdm_jax.training.preemption import SIGTERM_EXIT, PreemptionWatch
from predvdm_jax.training.sharding import fsdp_split_fraction
from predvdm_jax.training.train_state import TrainState, abstract_train_state, create_train_state
from predvdm_jax.training.train_step import LossFn, make_train_step, microbatch_split_error

Hook = Callable[[int, TrainState, dict], None]
Evaluation = tuple[int, Callable[[TrainState], Mapping[str, Any]]]
"""``(every, fn)``: every ``every`` steps (never when 0) ``fn(state)`` returns scalars and
uint8 images (arrays of 2 or more dims) to log."""


class NonFiniteLossError(FloatingPointError):
    """The loss or the weights became NaN or Inf; nothing from that step on was saved."""


class TrainingPreempted(Exception):
    """SIGTERM or Ctrl-C stopped the run after a step that was then saved: rerun to resume."""

    exit_code = SIGTERM_EXIT  # what the shell reports for a process SIGTERM killed

    def __init__(self, message: str, exit_code: int = SIGTERM_EXIT):
        super().__init__(message)
        self.exit_code = exit_code  # SIGINT_EXIT (130) after a Ctrl-C


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Whether every float in ``tree`` is finite (one device-side reduction, sharded or not)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _to_global(batch: Any, mesh: Any) -> Any:
    leaves = jax.tree.leaves(batch)
    if leaves and all(isinstance(x, jax.Array) for x in leaves):
        return batch
    return make_global_batch(batch, mesh)


def _write_results(writer: Any, step: int, results: Mapping[str, Any]) -> None:
    scalars = {k: v for k, v in results.items() if np.ndim(v) == 0}
    images = {k: v for k, v in results.items() if np.ndim(v) >= 2}
    if len(scalars) + len(images) != len(results):
        raise ValueError(f"evaluation results must be scalars or images, got {dict(results)}")
    if scalars:
        writer.write_scalars(step, scalars)
    if images:
        writer.write_images(step, images)


class _Throughput:
    """``steps_per_sec``, ``examples_per_sec``, model ``tflops_per_device`` and, on devices of
    known bf16 peak, ``mfu_bf16``. The step's FLOPs are counted once, on first use."""

    def __init__(self, batch_size: int, device_count: int, device_kind: str):
        self.batch_size, self.device_count = batch_size, device_count
        self.peak = peak_bf16_flops(device_kind)
        self.flops_per_step: float | None = None

    def __call__(self, steps_per_sec: float, count_flops: Callable[[], float]) -> dict:
        if self.flops_per_step is None:
            self.flops_per_step = count_flops()
            logging.info("%.4g model TFLOP per step", self.flops_per_step / 1e12)
        per_device = self.flops_per_step * steps_per_sec / self.device_count
        values = {
            "steps_per_sec": steps_per_sec,
            "examples_per_sec": steps_per_sec * self.batch_size,
            "tflops_per_device": per_device / 1e12,
        }
        if self.peak is not None:
            values["mfu_bf16"] = per_device / self.peak
        return values


def fine_tuning_params(workdir: str, field: str, path: str, load: Callable[[str], Any]) -> Any:
    """The weights ``load(path)`` that start a new run (``train_loop``'s ``initial_params``),
    its errors naming the config ``field``; None when ``path`` is empty or ``workdir`` already
    holds a checkpoint (the run resumes from it instead)."""
    if not path or latest_step(workdir) is not None:
        return None
    try:
        params = load(path)
    except (OSError, ValueError) as error:
        raise type(error)(f"{field}: {error}") from None
    logging.info("starting from the weights in %s (%s)", path, field)
    return params


def train_loop(
    config: Any,
    workdir: str,
    init_fn: Callable[[jax.Array], Any],
    loss_fn: LossFn,
    data_iterator: Iterator[Any],
    *,
    evaluations: Sequence[Evaluation] = (),
    hooks: Sequence[Hook] = (),
    extra_init_fn: Callable[[jax.Array], Any] | None = None,
    train_step_builder: Callable[..., Callable] = make_train_step,
    initial_params: Any = None,
    show_progress: bool = True,
) -> TrainState:
    """Trains to ``config.train.num_steps`` and returns the final state.

    ``data_iterator`` yields this process's share of each global batch (numpy
    pytrees with a leading batch axis, or ready global ``jax.Array`` s) and
    has ``get_state() -> dict`` / ``set_state(dict)``. Each of ``evaluations``
    is logged at its own interval (see ``Evaluation``). Each hook is
    called as ``hook(step, state, metrics)`` after every step.

    SIGTERM or a first Ctrl-C raises ``TrainingPreempted`` after the running step is saved.
    A NaN/Inf loss raises ``NonFiniteLossError`` naming the step, after
    pending checkpoint saves finish and without saving the bad state; so do
    NaN/Inf weights at a save step.
    Losses are checked at every log and save step (not every step, so the
    host does not wait on the device each step); the error names the first
    bad step exactly.

    ``train_step_builder`` has ``make_train_step``'s signature; a trainer
    that needs its own step (a GAN updating ``state.extra``) passes one.
    ``initial_params`` (host arrays of ``init_fn``'s structure) replace the initial weights
    and EMA of a run that starts from scratch (fine-tuning); a resumed run ignores them.
    ``show_progress=False`` hides the progress bar. The logged steps/s leave out the first
    step of the process (compilation) and evaluations.
    """
    t = config.train
    num_steps, log_every, save_every = t.num_steps, t.log_every, t.save_every
    grad_accum_steps, profile_start = t.grad_accum_steps, t.profile_start
    profile_stop = profile_start + t.profile_steps
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, slices=config.mesh.slices)
    min_size = config.mesh.min_shard_size
    batch_size = config.data.batch_size
    split_error = microbatch_split_error(batch_size, grad_accum_steps, mesh.size)
    if split_error:
        raise ConfigError(split_error)

    optimizer, schedule = make_optimizer(config)
    key = prng_key(config.seed)
    abstract_state, state_sharding = abstract_train_state(
        init_fn, optimizer, key, mesh, min_size=min_size, extra_init_fn=extra_init_fn
    )

    check_workdir(workdir)
    with workdir_lock.hold(workdir):  # before the first write into the workdir
        checkpointer = Checkpointer(
            os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=t.max_to_keep
        )
        try:
            restored = checkpointer.restore_latest(abstract_state)
        except BaseException:
            checkpointer.close()  # a failed restore must not leave Orbax's threads running
            raise
        if restored is None:
            state, shardings = create_train_state(
                init_fn, optimizer, key, mesh, min_size=min_size, extra_init_fn=extra_init_fn
            )
            start_step = 0
            if initial_params is not None:
                state = state.replace(
                    params=jax.device_put(initial_params, shardings.params),
                    ema_params=jax.device_put(initial_params, shardings.ema_params),
                )
            logging.info(
                "starting %s in %s",
                "from scratch" if initial_params is None else "at step 0 with those weights",
                workdir,
            )
        else:
            state, data_state, start_step = restored
            if data_state is not None:
                data_iterator.set_state(data_state)
            logging.info("resumed from step %d in %s", start_step, workdir)
            if start_step >= num_steps:
                logging.warning(
                    "the run in %s is already at step %d (train.num_steps=%d): nothing to train; "
                    "raise train.num_steps to train on",
                    workdir,
                    start_step,
                    num_steps,
                )

        param_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
        logging.info(
            "%s parameters; mesh data=%d × fsdp=%d over %d devices in %d process(es); global "
            "batch %d in %d microbatch(es) per step",
            f"{param_count:,}",
            mesh.shape["data"],
            mesh.shape["fsdp"],
            mesh.size,
            jax.process_count(),
            batch_size,
            grad_accum_steps,
        )
        if mesh.shape["fsdp"] > 1:
            split = fsdp_split_fraction(abstract_state.params, state_sharding.params)
            log = logging.warning if split < 0.5 else logging.info
            log(
                "mesh.fsdp=%d splits %.1f%% of the parameters; the rest are replicated (below "
                "mesh.min_shard_size, or no axis divisible by %d)%s",
                mesh.shape["fsdp"],
                100 * split,
                mesh.shape["fsdp"],
                "; a smaller mesh.fsdp splits more" if split < 0.5 else "",
            )
        # Drops lines a killed run logged after start_step (all of them when starting from scratch).
        try:
            writer = create_default_writer(workdir, resume_step=start_step)
        except BaseException:
            checkpointer.close()
            raise
        if restored is None:
            writer.write_hparams(config.to_dict())
        progress = ProgressReporter(
            num_steps, every_steps=log_every, start_step=start_step, show_bar=show_progress
        )
        accumulation = {"grad_accum_steps": grad_accum_steps} if grad_accum_steps != 1 else {}
        train_step = train_step_builder(
            loss_fn,
            optimizer,
            t.ema_rate,
            mesh,
            state_sharding,
            batch_sharding(mesh),
            lr_schedule=schedule,
            **accumulation,
        )

        throughput = _Throughput(batch_size, jax.device_count(), jax.devices()[0].device_kind)
        pending_losses: list[tuple[int, jax.Array]] = []
        last_saved = start_step if restored is not None else None

        def stop(what: str):
            checkpointer.wait_until_finished()
            kept = checkpointer.latest_step()
            last = (
                f"the last good checkpoint is step {kept} in {checkpointer.directory}"
                if kept is not None
                else "no checkpoint was saved yet"
            )
            raise NonFiniteLossError(
                f"{what}; stopped without saving this state, {last} (lower the learning rate, "
                "check the optimizer settings or the data)"
            )

        def fail_if_not_finite():
            losses = jax.device_get([loss for _, loss in pending_losses])
            for (step_number, _), value in zip(pending_losses, losses):
                if not math.isfinite(float(np.asarray(value))):
                    stop(f"loss is {float(value)} at step {step_number}")
            pending_losses.clear()

        def fail_if_state_not_finite(step_number: int):
            """Before a state is saved or evaluated (a NaN state could become a best bundle)."""
            fail_if_not_finite()
            # A step's loss is computed before its update: an update that made the weights NaN
            # shows in the next step's loss, so the weights themselves are checked.
            if not bool(all_finite((state.params, state.ema_params))):
                stop(f"the weights after step {step_number} are NaN or Inf (its loss was finite)")

        def save(step_number: int):
            nonlocal last_saved
            fail_if_state_not_finite(step_number)
            checkpointer.save(step_number, state, data_iterator.get_state(), config)
            last_saved = step_number

        watch = PreemptionWatch()
        profiling = False
        try:
            for step_index in range(start_step, num_steps):
                step_number = step_index + 1
                if profile_start > 0 and step_number == profile_start:
                    jax.profiler.start_trace(os.path.join(workdir, "profile"))
                    profiling = True
                with jax.profiler.StepTraceAnnotation("train", step_num=step_number):
                    batch = _to_global(next(data_iterator), mesh)
                    state, metrics = train_step(state, batch)
                if profiling and step_number + 1 == profile_stop:
                    jax.block_until_ready(metrics)
                    jax.profiler.stop_trace()
                    profiling = False
                    logging.info(
                        "profile of steps %d-%d in %s/profile", profile_start, step_number, workdir
                    )
                if step_index == start_step:  # its time is mostly compilation: not timed
                    jax.block_until_ready(metrics)
                    progress.restart(step_number)
                pending_losses.append((step_number, metrics["loss"]))
                for hook in hooks:
                    hook(step_number, state, metrics)
                logs = step_number % log_every == 0 or step_number == num_steps
                if logs:  # the rate then times the device's steps, not their dispatch
                    jax.block_until_ready(metrics)
                rate = progress(step_number)
                if logs:
                    fail_if_not_finite()
                    checkpointer.check_for_errors()  # a failed background save stops the run now
                    scalars = dict(jax.device_get(metrics))
                    if rate is not None:
                        counted = throughput.flops_per_step is not None
                        scalars.update(
                            throughput(rate, lambda: matmul_flops(train_step, state, batch))
                        )
                        if not counted:  # counting lowers the step once: not training time either
                            progress.restart(step_number)
                    writer.write_scalars(step_number, scalars)
                due = [
                    evaluate
                    for every, evaluate in evaluations
                    if every > 0 and step_number % every == 0
                ]
                if due:
                    fail_if_state_not_finite(step_number)
                    for evaluate in due:
                        _write_results(writer, step_number, jax.device_get(evaluate(state)))
                    progress.restart(step_number)  # evaluations are not training time
                if step_number % save_every == 0:
                    save(step_number)
                if watch.reached(step_number) and step_number < num_steps:
                    if last_saved != step_number:
                        save(step_number)
                    checkpointer.wait_until_finished()
                    raise TrainingPreempted(
                        f"stopped by {watch.notice} after step {step_number} of {num_steps}; saved "
                        f"it in {checkpointer.directory}: run the same command again to resume",
                        watch.exit_code,
                    )
            fail_if_not_finite()
            if last_saved != num_steps and num_steps > start_step:
                save(num_steps)
            checkpointer.wait_until_finished()
        finally:
            if profiling:
                jax.profiler.stop_trace()
            watch.close()
            checkpointer.close()
            writer.flush()
            writer.close()
            progress.close()
        return state

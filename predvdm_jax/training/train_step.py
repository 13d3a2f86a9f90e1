"""One jitted optimizer step, generic over the model's loss.

The step is a pure function of (state, batch) compiled with the state's
shardings in and out, so the same program runs on any ``('data', 'fsdp')``
mesh and gives the same numbers up to the order of float reductions.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from predvdm_jax import xla_cpu
from predvdm_jax.mesh import BATCH_SPEC, replicated
from predvdm_jax.training.ema import ema_update
from predvdm_jax.training.optim import global_norm
from predvdm_jax.training.train_state import TrainState

# loss_fn(params, batch, rng, step) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def apply_gradients(
    state: TrainState,
    grads: Any,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    grad_norm: jax.Array | None = None,
) -> TrainState:
    """Optimizer update, step + 1, EMA update with the new count (spec D.3).

    ``grad_norm``, the gradients' global norm when the caller has it, is handed to the
    optimizer's clipping so that it is not computed twice. Exposed for trainers that
    write their own step (e.g. a GAN updating ``state.extra`` too).
    """
    norm = {} if grad_norm is None else {"grad_norm": grad_norm}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **norm)
    params = optax.apply_updates(state.params, updates)
    ema_updates = state.ema_updates + 1
    return state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, ema_updates, ema_rate),
        ema_updates=ema_updates,
    )


def microbatch_split_error(batch_size: int, count: int, devices: int) -> str | None:
    """Why a global batch does not split into ``count`` microbatches of equal shares over
    ``devices`` devices, or None when it does."""
    if batch_size % (count * devices) == 0:
        return None
    return (
        f"data.batch_size {batch_size} must be a multiple of train.grad_accum_steps {count} × "
        f"the {devices} devices of the mesh, so that every microbatch splits evenly over them; "
        f"make data.batch_size a multiple of {count * devices}"
    )


def _microbatches(batch: Any, count: int, mesh: Mesh) -> Any:
    """(B, ...) leaves → (count, B / count, ...); microbatch i holds examples i, i + count, ….

    The strided split keeps every device's rows on that device: a device holding
    a contiguous B / n rows contributes B / (n·count) of them to each microbatch.
    """

    def split(x):
        size = x.shape[0]
        error = microbatch_split_error(size, count, mesh.size)
        if error:
            raise ValueError(error)
        x = x.reshape(size // count, count, *x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, *BATCH_SPEC)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(split, batch)


def accumulated_value_and_grad(
    loss_fn: LossFn, grad_accum_steps: int, mesh: Mesh, params_sharding: Any = None
) -> Callable[[Any, Any, jax.Array, jax.Array], tuple[tuple[jax.Array, dict], Any]]:
    """``value_and_grad(loss_fn, has_aux=True)`` over ``grad_accum_steps`` sequential microbatches.

    The gradients and metrics are the means over the microbatches, so for a loss
    that is a batch mean they equal the full batch's (PredVDM's loss is); only the
    activations of one microbatch are live at a time. Microbatch i draws its
    randomness from ``fold_in(rng, i)``. ``params_sharding`` keeps the float32
    gradient sum sharded like the parameters.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        return grad_fn

    def value_and_grad(params, batch, rng, step):
        micro = _microbatches(batch, grad_accum_steps, mesh)
        first = jax.tree.map(lambda x: x[0], micro)
        (loss_shape, aux_shape), _ = jax.eval_shape(grad_fn, params, first, rng, step)
        zeros = lambda tree: jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), tree)

        def add(carry, inputs):
            index, microbatch = inputs
            loss_sum, aux_sum, grad_sum = carry
            (loss, aux), grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index), step)
            grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
            if params_sharding is not None:
                grad_sum = jax.lax.with_sharding_constraint(grad_sum, params_sharding)
            aux_sum = jax.tree.map(lambda s, a: s + a.astype(jnp.float32), aux_sum, aux)
            return (loss_sum + loss.astype(jnp.float32), aux_sum, grad_sum), None

        init = (zeros(loss_shape), zeros(aux_shape), zeros(params))
        (loss_sum, aux_sum, grad_sum), _ = jax.lax.scan(
            add, init, (jnp.arange(grad_accum_steps), micro)
        )
        mean = lambda tree, like: jax.tree.map(
            lambda s, a: (s / grad_accum_steps).astype(a.dtype), tree, like
        )
        return (mean(loss_sum, loss_shape), mean(aux_sum, aux_shape)), mean(grad_sum, params)

    return value_and_grad


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    ema_rate: float,
    mesh: Mesh,
    state_sharding: Any,
    batch_sharding: Any,
    *,
    lr_schedule: Callable[[Any], jax.Array] | None = None,
    donate: bool = True,
    grad_accum_steps: int = 1,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch) -> (new_state, metrics)``, jitted, state donated.

    The per-step key is ``fold_in(state.rng, state.step)``. Metrics are the
    loss, ``grad_norm`` (global L2 norm before clipping), ``lr`` (when
    ``lr_schedule`` is given) and the loss function's own metrics; all are
    replicated scalars. ``batch_sharding`` may be one sharding for all leaves
    or a pytree matching the batch. ``grad_accum_steps`` > 1 computes the
    gradient of the global batch in that many sequential microbatches
    (:func:`accumulated_value_and_grad`): one optimizer step, less activation memory.
    """
    if grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps must be >= 1, got {grad_accum_steps}")
    params_sharding = getattr(state_sharding, "params", None)
    value_and_grad = accumulated_value_and_grad(loss_fn, grad_accum_steps, mesh, params_sharding)

    def step(state: TrainState, batch: Any):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = value_and_grad(state.params, batch, rng, state.step)
        metrics = dict(aux)
        metrics["loss"] = loss
        metrics["grad_norm"] = global_norm(grads)
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        new_state = apply_gradients(state, grads, optimizer, ema_rate, metrics["grad_norm"])
        return new_state, metrics

    return jit_train_step(step, mesh, state_sharding, batch_sharding, donate)


def jit_train_step(
    step: Callable, mesh: Mesh, state_sharding: Any, batch_sharding: Any, donate: bool = True
) -> Callable:
    """``step(state, batch) -> (state, metrics)`` compiled for the mesh: the state keeps its
    sharding (donated unless ``donate`` is False), the metrics come back replicated. Every
    trainer's step builder (the denoiser's and the VQGAN's) ends here."""
    return xla_cpu.jit(
        step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )

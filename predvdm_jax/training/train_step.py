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

from predvdm_jax.training.ema import ema_update
from predvdm_jax.training.optim import global_norm
from predvdm_jax.training.train_state import TrainState

# loss_fn(params, batch, rng, step) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def apply_gradients(
    state: TrainState, grads: Any, optimizer: optax.GradientTransformation, ema_rate: float
) -> TrainState:
    """Optimizer update, step + 1, EMA update with the new count (spec D.3).

    Exposed for trainers that write their own step (e.g. a GAN updating
    ``state.extra`` too).
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_updates = state.ema_updates + 1
    return state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, ema_updates, ema_rate),
        ema_updates=ema_updates,
    )


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
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """``step(state, batch) -> (new_state, metrics)``, jitted, state donated.

    The per-step key is ``fold_in(state.rng, state.step)``. Metrics are the
    loss, ``grad_norm`` (global L2 norm before clipping), ``lr`` (when
    ``lr_schedule`` is given) and the loss function's own metrics; all are
    replicated scalars. ``batch_sharding`` may be one sharding for all leaves
    or a pytree matching the batch.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def step(state: TrainState, batch: Any):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, rng, state.step
        )
        metrics = dict(aux)
        metrics["loss"] = loss
        metrics["grad_norm"] = global_norm(grads)
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        new_state = apply_gradients(state, grads, optimizer, ema_rate)
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,) if donate else (),
    )

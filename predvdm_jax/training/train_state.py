"""The train state pytree and its sharded initialisation.

The state is created by one jitted function whose ``out_shardings`` are the
mesh shardings, so every device computes only its own shards; the full
parameters never exist on a single device.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from predvdm_jax import xla_cpu
from predvdm_jax.training import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    ``step`` counts finished optimizer steps; ``ema_updates`` counts EMA
    updates (LitEma's ``num_updates``); ``rng`` is the run's base key, folded
    with the step inside each step. ``extra`` holds model-specific state that
    the generic step passes through untouched (e.g. a GAN discriminator's
    params and optimizer state, updated by that model's own step).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    ema_updates: jax.Array
    rng: jax.Array
    extra: Any = None


def _init_state(
    init_fn: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    extra_init_fn: Callable[[jax.Array], Any] | None,
) -> TrainState:
    params = sharding_lib.unbox(init_fn(jax.random.fold_in(key, 0)))
    extra = (
        None
        if extra_init_fn is None
        else sharding_lib.unbox(extra_init_fn(jax.random.fold_in(key, 1)))
    )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        ema_updates=jnp.zeros((), jnp.int32),
        rng=jax.random.fold_in(key, 2),
        extra=extra,
    )


def abstract_train_state(
    init_fn: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    mesh: Mesh,
    *,
    rules: sharding_lib.LogicalRules = sharding_lib.DEFAULT_LOGICAL_RULES,
    min_size: int = sharding_lib.DEFAULT_MIN_SIZE,
    extra_init_fn: Callable[[jax.Array], Any] | None = None,
) -> tuple[TrainState, TrainState]:
    """(state of ``jax.ShapeDtypeStruct`` carrying shardings, state of NamedSharding).

    Nothing is computed: this is what a checkpoint restore targets.
    ``init_fn(key) -> params`` may return params boxed by
    ``nn.with_logical_partitioning``; the state holds them unboxed.
    """
    key = jnp.asarray(key)
    params_sharding = sharding_lib.param_shardings(
        jax.eval_shape(init_fn, key), mesh, rules, min_size
    )
    abstract = jax.eval_shape(lambda k: _init_state(init_fn, optimizer, k, extra_init_fn), key)
    shardings = sharding_lib.state_shardings(
        abstract, mesh, rules, params_sharding=params_sharding, min_size=min_size
    )
    with_sharding = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return with_sharding, shardings


def create_train_state(
    init_fn: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    mesh: Mesh,
    *,
    rules: sharding_lib.LogicalRules = sharding_lib.DEFAULT_LOGICAL_RULES,
    min_size: int = sharding_lib.DEFAULT_MIN_SIZE,
    extra_init_fn: Callable[[jax.Array], Any] | None = None,
) -> tuple[TrainState, TrainState]:
    """(initial state, its shardings), initialised directly into its shards.

    ``key`` is a raw ``uint32[2]`` key (``jax.random.PRNGKey``); params use
    ``fold_in(key, 0)``, ``extra`` uses ``fold_in(key, 1)`` and the training
    randomness ``fold_in(key, 2)``.
    """
    key = jnp.asarray(key)
    _, shardings = abstract_train_state(
        init_fn, optimizer, key, mesh, rules=rules, min_size=min_size, extra_init_fn=extra_init_fn
    )
    host_key = np.asarray(key)
    init = xla_cpu.jit(
        lambda: _init_state(init_fn, optimizer, jnp.asarray(host_key), extra_init_fn),
        run_once=True,
        out_shardings=shardings,
    )
    return init(), shardings

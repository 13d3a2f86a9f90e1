"""Exponential moving average of the parameters with LitEma's warm-up (spec D.3).

``num_updates`` counts optimizer steps and is 1 at the first update, so the
first decay is (1+1)/(10+1) = 0.182: early EMA weights track the parameters
closely instead of staying near the random initialisation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay(num_updates: Any, rate: float) -> jax.Array:
    """``min(rate, (1 + n) / (10 + n))``."""
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(jnp.float32(rate), (1.0 + n) / (10.0 + n))


def ema_update(ema_params: Any, params: Any, num_updates: Any, rate: float) -> Any:
    """``ema - (1 - decay) * (ema - params)`` leaf by leaf, as LitEma does."""
    one_minus_decay = 1.0 - ema_decay(num_updates, rate)

    def one(ema, param):
        step = (one_minus_decay * (ema - param)).astype(ema.dtype)
        return ema - step

    return jax.tree.map(one, ema_params, params)

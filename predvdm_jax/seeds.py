"""PRNG keys of the config's seeds, which lie in [0, 2**63) (``config.SEED_LIMIT``).

``jax.random.PRNGKey`` without 64-bit integers keeps only a seed's low 32 bits, so seeds 0 and
2**32 would train, validate and sample alike.
"""

import jax

_LOW_BITS = 2**32


def prng_key(seed: int) -> jax.Array:
    """``jax.random.PRNGKey(seed)`` below 2**32, where it is exact; from 2**32 on, the key of
    the low 32 bits with the high ones folded in."""
    key = jax.random.PRNGKey(seed % _LOW_BITS)
    return key if seed < _LOW_BITS else jax.random.fold_in(key, seed // _LOW_BITS)

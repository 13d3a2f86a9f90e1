import jax
import numpy as np

from predvdm_jax.seeds import prng_key


def test_a_seed_below_2_32_gives_prng_key_and_every_63_bit_seed_its_own_key():
    for seed in (0, 7, 2**32 - 1):
        np.testing.assert_array_equal(prng_key(seed), jax.random.PRNGKey(seed))
    # PRNGKey keeps the low 32 bits: these pairs would share a key, and a training run.
    keys = [prng_key(seed) for seed in (0, 2**32, 5, 2**32 + 5, 2**40 + 5, 2**63 - 1)]
    distinct = {tuple(np.asarray(key).tolist()) for key in keys}
    assert len(distinct) == len(keys)
    np.testing.assert_array_equal(prng_key(2**32 + 5), jax.random.fold_in(jax.random.PRNGKey(5), 1))

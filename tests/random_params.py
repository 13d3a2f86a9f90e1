"""Random parameters from shapes alone, for tests: a compiled Flax init costs far more CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_params_from_init(init_fn, seed=0, *args):
    """Params shaped like ``init_fn(key, *args)`` returns (``args`` may be ShapeDtypeStructs):
    kernels U(±1/√fan_in), norm scales ≈ 1, everything else small normal. A kernel's fan-in is
    all but its output dimension: the first for the denoiser's OHWI convs, else the last."""
    boxed = jax.eval_shape(init_fn, jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        shape = nn.meta.unbox(leaf).shape
        if name == "kernel":
            output_first = getattr(leaf, "names", (None,))[0] == "conv_out" and len(shape) == 4
            bound = 1.0 / np.sqrt(np.prod(shape[1:] if output_first else shape[:-1]))
            return rng.uniform(-bound, bound, shape).astype(np.float32)
        if name == "scale":
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return jax.tree_util.tree_map_with_path(draw, boxed, is_leaf=is_box)


def random_params(module, x_shape, seed=0):
    """``random_params_from_init`` for ``module.init(key, x)['params']`` with x of ``x_shape``."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return random_params_from_init(lambda key, x: module.init(key, x)["params"], seed, x)

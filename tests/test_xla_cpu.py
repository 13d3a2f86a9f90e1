"""On the CPU the model programs keep XLA's YNNPACK fusions for reductions only: convolutions
and matrix products run on its Eigen kernels (see predvdm_jax/xla_cpu.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from predvdm_jax import xla_cpu
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from tiny_config import tiny_config

YNN = "__ynn_fusion"


def _ynn_fusion_roots(hlo: str) -> list[str]:
    """The opcode at the root of each YNNPACK fusion of a compiled program's text."""
    called = set(re.findall(r"calls=%([\w.\-]+)[^\n]*" + YNN, hlo))
    roots = re.findall(
        r"^%([\w.\-]+) [^\n]*\{\n(?:[^\n]*\n)*?  ROOT [^=]*= \S+ ([\w\-]+)\(", hlo, re.M
    )
    return [opcode for name, opcode in roots if name in called]


def _check_library_options(hlo: str) -> None:
    """Some reduction is a YNNPACK fusion (none is with every fusion off) and no convolution or
    matrix product is one of its own (XLA's default)."""
    roots = _ynn_fusion_roots(hlo)
    assert "reduce" in roots and not {"convolution", "dot"} & set(roots), roots


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_a_convolution_leaves_ynnpack_and_keeps_its_values():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    default = jax.jit(_conv).lower(x, w).compile()
    ours = xla_cpu.jit(_conv).lower(x, w).compile()
    assert YNN in default.as_text()  # XLA:CPU's default takes YNNPACK for this convolution
    assert YNN not in ours.as_text()

    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = sum(
        np.einsum("bhwi,io->bhwo", padded[:, i : i + 8, j : j + 8], w[i, j].astype(np.float64))
        for i in range(3)
        for j in range(3)
    )
    np.testing.assert_allclose(np.asarray(ours(x, w)), expected, rtol=1e-4, atol=1e-4)


def test_reductions_keep_ynnpack_and_their_accuracy():
    """With every YNNPACK fusion off XLA rewrites a large sum into a tree of reduce-windows:
    ten times slower and, on this map, 9.5e-7 from float64 instead of 1e-7."""
    x = (np.random.default_rng(0).standard_normal((8, 64, 64, 32)) * 3 + 5).astype(np.float32)
    sums = xla_cpu.jit(lambda x: jnp.sum(x, axis=(1, 2)))
    hlo = sums.lower(x).compile().as_text()
    assert _ynn_fusion_roots(hlo) == ["reduce"] and "reduce-window" not in hlo
    expected = x.astype(np.float64).sum(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(sums(x)), expected, rtol=3e-7)


def test_the_rollout_program_takes_the_options():
    model = LatentDiffusion.from_config(tiny_config())
    params = jax.eval_shape(model.init_denoiser, jax.random.key(0))
    vq_params = jax.eval_shape(model.init_vq, jax.random.key(1))
    cond = jax.ShapeDtypeStruct((2, 2, 16, 16, 1), jnp.float32)
    predict = model.make_predict_fn(2)
    compiled = predict.lower(params, vq_params, cond, jax.random.key(2)).compile()
    _check_library_options(compiled.as_text())


def test_the_engine_train_step_takes_the_options():
    from predvdm_jax import mesh as mesh_lib
    from predvdm_jax.training.train_state import abstract_train_state
    from predvdm_jax.training.train_step import make_train_step
    from training.tiny_setup import IN_DIM, OUT_DIM, init_fn, make_loss_fn

    mesh = mesh_lib.make_mesh(1, 1)
    optimizer = optax.adam(1e-3)
    state, state_sharding = abstract_train_state(init_fn, optimizer, jax.random.key(0), mesh)
    sharding = mesh_lib.batch_sharding(mesh)
    batch = {
        "x": jax.ShapeDtypeStruct((64, IN_DIM), jnp.float32, sharding=sharding),
        "y": jax.ShapeDtypeStruct((64, OUT_DIM), jnp.float32, sharding=sharding),
    }
    step = make_train_step(make_loss_fn(), optimizer, 0.999, mesh, state_sharding, sharding)
    _check_library_options(step.lower(state, batch).compile().as_text())


def test_the_training_state_initialises_unoptimised_to_the_optimised_programs_values():
    """Its init compiles without XLA's backend optimisation (the demo's: 27 s -> 3-6 s); the
    params are those of the default-compiled init, whose random-number code is the same."""
    from predvdm_jax import mesh as mesh_lib
    from predvdm_jax.training.sharding import unbox
    from predvdm_jax.training.train_state import create_train_state

    model = LatentDiffusion.from_config(tiny_config())
    key = jax.random.PRNGKey(3)
    state, _ = create_train_state(
        model.init_denoiser, optax.adam(1e-3), key, mesh_lib.make_mesh(1, 1)
    )
    expected = unbox(jax.jit(model.init_denoiser)(jax.random.fold_in(key, 0)))
    got = jax.device_get(state.params)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

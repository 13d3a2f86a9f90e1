"""Optimizer, schedule, clipping and EMA against PyTorch / closed forms (spec D.3-D.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from predvdm_jax import config as config_lib
from predvdm_jax.training.ema import ema_decay, ema_update
from predvdm_jax.training.optim import clip_by_global_norm_torch, global_norm, make_optimizer


def ldm_lambda_linear(n, warm_up, f_start, f_max, f_min, cycle_length=1e13):
    """LDM LambdaLinearScheduler.schedule for one cycle, in Python floats."""
    if n < warm_up:
        return (f_max - f_start) / warm_up * n + f_start
    return f_min + (f_max - f_min) * (cycle_length - n) / cycle_length


def config_with(batch_size=128, num_steps=None, **optimizer):
    """The schema's config (PredVDM's optimizer values) with these overrides."""
    config = config_lib.default_config()
    config.data.batch_size = batch_size
    if num_steps is not None:
        config.train.num_steps = num_steps
    config.optimizer.update(optimizer)
    return config_lib.finalize(config)


def test_schedule_matches_lambda_linear_scheduler_with_predvdm_values():
    _, schedule = make_optimizer(config_with())  # PredVDM defaults, 2 GPUs x 64
    peak = 1.5625e-6 * 128
    assert peak == pytest.approx(2.0e-4)
    for n in [0, 1, 2, 500, 5000, 9999, 10000, 10001, 400000]:
        expected = peak * ldm_lambda_linear(n, 10000, 1e-6, 1.0, 1.0)
        np.testing.assert_allclose(float(schedule(n)), expected, rtol=1e-5, err_msg=f"n={n}")


def test_schedule_after_warmup_follows_the_cycle_formula():
    _, schedule = make_optimizer(
        config_with(
            batch_size=4,
            base_learning_rate=0.5,
            warmup_steps=10,
            f_start=0.1,
            f_max=1.0,
            f_min=0.2,
            cycle_length=100.0,
            num_steps=100,  # a longer run would fall below f_min after the cycle: refused
        )
    )
    for n in [0, 3, 9, 10, 50, 99]:
        expected = 2.0 * ldm_lambda_linear(n, 10, 0.1, 1.0, 0.2, 100.0)
        np.testing.assert_allclose(float(schedule(n)), expected, rtol=1e-5, err_msg=f"n={n}")


def test_the_vq_discriminators_rate_follows_the_training_steps_from_disc_start():
    """Its first update comes at step disc_start and takes that step's warmed-up rate (LDM
    advances both LambdaLRs every step): a count of its own updates would restart the warm-up
    at 0 and lag the decay."""
    from predvdm_jax.training import vq_trainer

    config = config_lib.default_config()
    config.vq_train.update(
        warmup_steps=1000, disc_start=500, lr_end_fraction=0.1, num_steps=2000, scale_lr=False
    )
    config = config_lib.finalize(config)
    _, generator_schedule = make_optimizer(vq_trainer.engine_config(config))
    disc = vq_trainer.discriminator_optimizer(config)
    grads = {"w": jnp.array([3.0, -0.5])}
    params = {"w": jnp.zeros(2)}
    state = disc.init(params)
    for count in range(3):  # Adam's first update is -lr * sign(g); later ones, with constant g, too
        updates, state = disc.update(grads, state, params)
        expected = -float(generator_schedule(500 + count)) * np.sign(grads["w"])
        np.testing.assert_allclose(updates["w"], expected, rtol=1e-4)
    assert float(generator_schedule(500)) > 0


def test_lr_scales_with_global_batch_only_when_scale_lr():
    _, scaled = make_optimizer(config_with(batch_size=32, base_learning_rate=1e-4, warmup_steps=0))
    _, unscaled = make_optimizer(
        config_with(batch_size=32, base_learning_rate=1e-4, warmup_steps=0, scale_lr=False)
    )
    np.testing.assert_allclose(float(scaled(7)), 32e-4, rtol=1e-6)
    np.testing.assert_allclose(float(unscaled(7)), 1e-4, rtol=1e-6)


@pytest.mark.parametrize("scale", [0.05, 3.0, 40.0])
def test_clipping_matches_torch_clip_grad_norm(scale):
    rng = np.random.default_rng(1)
    grads = {"a": rng.standard_normal((3, 5)) * scale, "b": rng.standard_normal(7) * scale}
    torch_grads = [torch.tensor(grads["a"]), torch.tensor(grads["b"])]
    params = [torch.zeros_like(g, requires_grad=True) for g in torch_grads]
    for p, g in zip(params, torch_grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    clip = clip_by_global_norm_torch(1.0)
    jax_grads = jax.tree.map(jnp.asarray, grads)
    clipped, _ = clip.update(jax_grads, clip.init(jax_grads))
    np.testing.assert_allclose(clipped["a"], params[0].grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(clipped["b"], params[1].grad.numpy(), rtol=1e-5, atol=1e-7)


def test_global_norm_is_the_l2_norm_of_every_leaf_with_the_row_sums_kept_apart():
    rng = np.random.default_rng(2)
    tree = {
        "conv": rng.standard_normal((16, 3, 3, 8)),
        "dense": rng.standard_normal((8, 5)),
        "bias": rng.standard_normal(16),
        "scalar": np.float64(3.0),
        "bf16": rng.standard_normal((4, 6)),
    }
    want = np.sqrt(sum(np.sum(np.square(v)) for v in tree.values()))
    as_jax = {
        k: jnp.asarray(v, jnp.bfloat16 if k == "bf16" else jnp.float32) for k, v in tree.items()
    }
    want_rounded = np.sqrt(
        sum(np.sum(np.square(np.asarray(v, np.float64))) for v in as_jax.values())
    )
    got = jax.jit(global_norm)(as_jax)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want_rounded, rtol=1e-6)
    np.testing.assert_allclose(float(got), want, rtol=1e-2)  # bf16 rounding of one leaf only
    assert float(global_norm({})) == 0.0
    # The conv leaf is reduced over its rows first: XLA did not fold it into one full reduction.
    hlo = jax.jit(global_norm).lower(as_jax).compile().as_text()
    assert "f32[16,3,3]" in hlo and "dimensions={0,1,2,3}" not in hlo


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_steps_match_torch_adamw_lambdalr_and_lightning_clipping(grad_clip):
    """Six steps with varying gradient scales: clip -> AdamW(wd) -> LambdaLR step."""
    base, batch, warm = 1e-3, 4, 3
    tx, _ = make_optimizer(
        config_with(
            batch_size=batch,
            base_learning_rate=base,
            warmup_steps=warm,
            weight_decay=0.05,
            grad_clip=grad_clip,
        )
    )
    rng = np.random.default_rng(0)
    init = {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float32),
    }
    grads_per_step = [
        {k: (rng.standard_normal(v.shape) * s).astype(np.float32) for k, v in init.items()}
        for s in [0.1, 5.0, 0.3, 20.0, 1.0, 0.01]
    ]

    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = torch.optim.AdamW(
        list(torch_params.values()),
        lr=base * batch,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.05,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda n: ldm_lambda_linear(n, warm, 1e-6, 1.0, 1.0)
    )
    for grads in grads_per_step:
        for k, p in torch_params.items():
            p.grad = torch.tensor(grads[k])
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(list(torch_params.values()), grad_clip)
        opt.step()
        sched.step()

    params = jax.tree.map(jnp.asarray, init)
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
        params = optax.apply_updates(params, updates)
    for k in init:
        np.testing.assert_allclose(
            params[k], torch_params[k].detach().numpy(), rtol=1e-5, atol=1e-6
        )


def test_ema_decay_warmup_values_from_spec():
    for n, expected in [(1, 0.182), (10, 0.55), (100, 0.918), (1000, 0.991)]:
        assert round(float(ema_decay(n, 0.999)), 3) == expected
    assert float(ema_decay(8989, 0.999)) < 0.999
    assert float(ema_decay(8991, 0.999)) == pytest.approx(0.999)
    assert float(ema_decay(10**6, 0.999)) == pytest.approx(0.999)


def test_ema_update_matches_litema_shadow_update():
    rng = np.random.default_rng(3)
    shadow = torch.tensor(rng.standard_normal(6))
    ema = {"p": jnp.asarray(shadow.numpy(), jnp.float32)}
    for n in range(1, 5):  # LitEma: num_updates += 1, then decay with the new count
        param = rng.standard_normal(6)
        decay = min(0.999, (1 + n) / (10 + n))
        shadow.sub_((1.0 - decay) * (shadow - torch.tensor(param)))
        ema = ema_update(ema, {"p": jnp.asarray(param, jnp.float32)}, n, 0.999)
    np.testing.assert_allclose(ema["p"], shadow.numpy(), rtol=1e-5, atol=1e-6)


def test_clipping_uses_a_supplied_norm_and_the_engine_step_computes_the_norm_once():
    grads = {"a": jnp.full((3, 4), 2.0), "b": jnp.full((5,), 2.0)}  # global norm √(17·4)
    clip = clip_by_global_norm_torch(1.0)
    # A supplied norm of 10 scales by 1 / (10 + 1e-6), whatever the updates' own norm.
    clipped, _ = clip.update(grads, clip.init(grads), grad_norm=jnp.float32(10.0))
    np.testing.assert_allclose(clipped["a"], 2.0 / (10.0 + 1e-6), rtol=1e-6)

    from predvdm_jax import mesh as mesh_lib
    from predvdm_jax.training.train_state import create_train_state
    from predvdm_jax.training.train_step import make_train_step

    from .tiny_setup import StreamIterator, init_fn, make_config, make_loss_fn

    config = make_config()
    mesh = mesh_lib.make_mesh(1, 1)
    optimizer, schedule = make_optimizer(config)
    state, shardings = create_train_state(init_fn, optimizer, jax.random.PRNGKey(0), mesh)
    step = make_train_step(
        make_loss_fn(), optimizer, 0.999, mesh, shardings, mesh_lib.batch_sharding(mesh)
    )
    batch = mesh_lib.make_global_batch(next(StreamIterator(0, 8)), mesh)
    # global_norm's two stages are split by one optimization barrier: one barrier, one norm
    # (the logged grad_norm, handed to the clipping).
    assert step.lower(state, batch).as_text().count("optimization_barrier") == 1

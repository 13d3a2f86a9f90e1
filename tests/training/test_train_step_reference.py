"""Three steps of the real jitted ``make_train_step`` on one device against a hand loop:
``jax.grad`` of the same loss, then torch's ``clip_grad_norm_`` + ``AdamW(weight_decay=0)`` +
``LambdaLR(LambdaLinearScheduler)`` in float64 and LitEma's shadow update written out (spec
D.3-D.4). The other engine tests compare runs of the step with each other; this one pins it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from predvdm_jax import config as config_lib, mesh as mesh_lib
from predvdm_jax.training.optim import make_optimizer
from predvdm_jax.training.train_state import create_train_state
from predvdm_jax.training.train_step import make_train_step

from .tiny_setup import StreamIterator, flat_params, init_fn, make_loss_fn

STEPS, BATCH = 3, 8
BASE_LR, WARMUP, F_START = 2e-3, 2, 0.25  # steps 0, 1 in the warm-up, step 2 after it
EMA_RATE = 0.2  # decay (1+n)/(10+n) = 0.18 at n = 1, then capped at the rate: both branches
# optax's Adam divides by 1 - β₂^t computed in float32, where β₂ = 0.999 is 0.99900001: in the
# first steps that is 1.3e-5 to 1.4e-5 below torch's float64 value, so each Adam step is about
# 7e-6 shorter than torch's. Params may differ by that fraction of the distance Adam moved them
# (at most about Σ lr). The bugs this test is for move them much further (measured: EMA decay
# with the stale count 85×, weight decay 0.01 660×, no clipping 4000×, lr not × batch 6000×).
ADAM_FLOAT32_STEP_ERROR = 2e-5


def _config(grad_clip: float, grad_accum_steps: int):
    config = config_lib.default_config()  # PredVDM's AdamW: betas, eps, weight_decay 0
    config.data.batch_size = BATCH
    config.optimizer.update(
        dict(base_learning_rate=BASE_LR, warmup_steps=WARMUP, f_start=F_START, grad_clip=grad_clip)
    )
    config.train.update(dict(ema_rate=EMA_RATE, grad_accum_steps=grad_accum_steps))
    return config_lib.finalize(config)


def _multiplier(n):
    """LDM LambdaLinearScheduler, one cycle, f_max = f_min = 1."""
    return (1.0 - F_START) / WARMUP * n + F_START if n < WARMUP else 1.0


def _float64(tree):
    return {k: np.asarray(v, np.float64) for k, v in flat_params(tree).items()}


def _hand_grads(grad_fn, params, batch, key, step, microbatches):
    """(loss, grads) of the whole batch with ``key`` (``microbatches`` None), or their means over
    microbatch i = examples i, i + m, i + 2m, … with key ``fold_in(key, i)``."""
    if microbatches is None:
        loss, grads = grad_fn(params, batch, key, step)
        return np.float64(loss), _float64(grads)
    parts = [
        grad_fn(
            params,
            {k: v[i::microbatches] for k, v in batch.items()},
            jax.random.fold_in(key, i),
            step,
        )
        for i in range(microbatches)
    ]
    grads = [_float64(g) for _, g in parts]
    mean_grads = {k: np.mean([g[k] for g in grads], axis=0) for k in grads[0]}
    return np.mean([np.float64(loss) for loss, _ in parts]), mean_grads


def _as_params(flat):
    """``{'hidden/kernel': array}`` → the model's float32 param tree."""
    tree = {}
    for name, value in flat.items():
        layer, leaf = name.split("/")
        tree.setdefault(layer, {})[leaf] = jnp.asarray(value, jnp.float32)
    return tree


@pytest.mark.parametrize(
    "grad_clip, grad_accum_steps, target_noise, reference_microbatches",
    [
        (100.0, 1, 0.01, None),  # clipping on but not binding; step key fold_in(rng, step)
        (0.05, 1, 0.01, None),  # clipping binds on every step
        (0.05, 2, 0.0, None),  # two microbatches == one step on the full batch
        (0.05, 2, 0.5, 2),  # strided microbatches, keys fold_in(step key, i): noise matters
    ],
    ids=["no-clip", "clip", "accum-equals-full-batch", "accum-microbatch-keys"],
)
def test_three_steps_match_a_hand_loop_with_torch_adamw_and_litema(
    grad_clip, grad_accum_steps, target_noise, reference_microbatches
):
    config = _config(grad_clip, grad_accum_steps)
    loss_fn = make_loss_fn(target_noise=target_noise)
    mesh = mesh_lib.make_mesh(1, 1)
    optimizer, schedule = make_optimizer(config)
    state, shardings = create_train_state(init_fn, optimizer, jax.random.PRNGKey(0), mesh)
    init = _float64(jax.device_get(state.params))  # copied: the step donates the state
    run_key = jnp.asarray(jax.device_get(state.rng))
    step_fn = make_train_step(
        loss_fn,
        optimizer,
        config.train.ema_rate,
        mesh,
        shardings,
        mesh_lib.batch_sharding(mesh),
        lr_schedule=schedule,
        grad_accum_steps=config.train.grad_accum_steps,
    )
    batches = [StreamIterator(0, BATCH).global_batch_at(n) for n in range(STEPS)]
    metrics = []
    for batch in batches:
        state, step_metrics = step_fn(state, mesh_lib.make_global_batch(batch, mesh))
        metrics.append(jax.device_get(step_metrics))

    # The hand loop: torch in float64, peak learning rate base × global batch.
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = torch.optim.AdamW(
        list(params.values()), lr=BASE_LR * BATCH, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _multiplier)
    shadow = {k: v.copy() for k, v in init.items()}
    grad_fn = jax.jit(jax.value_and_grad(lambda *args: loss_fn(*args)[0]))
    norms, lrs = [], []
    for n, batch in enumerate(batches):
        current = _as_params({k: p.detach().numpy() for k, p in params.items()})
        key = jax.random.fold_in(run_key, n)
        loss, grads = _hand_grads(grad_fn, current, batch, key, n, reference_microbatches)
        for k, p in params.items():
            p.grad = torch.tensor(grads[k])
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(params.values()), grad_clip)))
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        updates = n + 1  # LitEma: num_updates += 1, then the decay with the new count
        decay = min(EMA_RATE, (1 + updates) / (10 + updates))
        for k, p in params.items():
            shadow[k] -= (1.0 - decay) * (shadow[k] - p.detach().numpy())

        np.testing.assert_allclose(metrics[n]["grad_norm"], norms[n], rtol=1e-6, err_msg=n)
        np.testing.assert_allclose(metrics[n]["lr"], lrs[n], rtol=1e-6, err_msg=n)
        np.testing.assert_allclose(metrics[n]["loss"], loss, rtol=1e-6, err_msg=n)

    # Clipping binds on every step of the small-clip cases, on none of the other.
    assert all(norm > grad_clip for norm in norms) == (grad_clip < 1), norms
    assert any(norm > grad_clip for norm in norms) == (grad_clip < 1), norms
    atol = ADAM_FLOAT32_STEP_ERROR * sum(lrs)
    got_params = flat_params(jax.device_get(state.params))
    got_ema = flat_params(jax.device_get(state.ema_params))
    for k, p in params.items():
        want = p.detach().numpy()
        np.testing.assert_allclose(got_params[k], want, rtol=1e-6, atol=atol, err_msg=k)
        np.testing.assert_allclose(got_ema[k], shadow[k], rtol=1e-6, atol=atol, err_msg=k)
        assert np.max(np.abs(want - init[k])) > 0.4 * sum(lrs), k  # Adam moved every leaf
    assert int(state.step) == int(state.ema_updates) == STEPS

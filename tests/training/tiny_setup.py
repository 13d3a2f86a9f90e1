"""A tiny regression model, data stream and config for the training-engine tests.

Also a command-line entry (``python tiny_setup.py '<json>'``) so tests can run
training in subprocesses that need their own device count or process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from predvdm_jax import config as config_lib

IN_DIM, HIDDEN, OUT_DIM = 16, 64, 4
# hidden kernel has 16*64 = 1024 elements: sharded over fsdp, the rest replicated.
TEST_MIN_SHARD_SIZE = 512
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(HIDDEN, name="hidden")(x))
        return nn.Dense(OUT_DIM, name="out")(x)


MODEL = TinyMLP()


def init_fn(key):
    return MODEL.init(key, jnp.zeros((1, IN_DIM)))["params"]


@jax.custom_vjp
def _nan_gradient(x):
    return x


_nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (g * jnp.nan,))


def make_loss_fn(
    nan_at_step: int | None = None,
    target_noise: float = 0.01,
    nan_gradient_at_step: int | None = None,
):
    """Mean squared error to targets jittered by ``target_noise``·N(0, 1) drawn from ``rng``;
    NaN from step ``nan_at_step`` on, or a finite loss with NaN gradients at
    ``nan_gradient_at_step``."""

    def loss_fn(params, batch, rng, step):
        pred = MODEL.apply({"params": params}, batch["x"])
        if nan_gradient_at_step is not None:
            pred = jax.lax.cond(step + 1 == nan_gradient_at_step, _nan_gradient, lambda p: p, pred)
        target = batch["y"] + target_noise * jax.random.normal(rng, batch["y"].shape)
        loss = jnp.mean(jnp.sum((pred - target) ** 2, axis=-1))
        if nan_at_step is not None:
            loss = jnp.where(step + 1 >= nan_at_step, jnp.nan, loss)
        return loss, {"pred_abs": jnp.mean(jnp.abs(pred))}

    return loss_fn


class StreamIterator:
    """Seeded numpy stream; batch n is the same global batch for any process count."""

    def __init__(
        self, seed: int, global_batch: int, process_index: int = 0, process_count: int = 1
    ):
        self.seed, self.global_batch = seed, global_batch
        self.process_index, self.process_count = process_index, process_count
        self.position = 0
        self.true_w = np.random.default_rng(seed + 1000).standard_normal((IN_DIM, OUT_DIM))

    def global_batch_at(self, n: int) -> dict:
        rng = np.random.default_rng([self.seed, n])
        x = rng.standard_normal((self.global_batch, IN_DIM)).astype(np.float32)
        return {"x": x, "y": np.sin(x @ self.true_w).astype(np.float32)}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.global_batch_at(self.position)
        self.position += 1
        share = self.global_batch // self.process_count
        lo = self.process_index * share
        return {k: v[lo : lo + share] for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    def set_state(self, state: dict) -> None:
        self.seed, self.position = state["seed"], state["position"]


def make_config(
    num_steps=6,
    batch_size=8,
    data=-1,
    fsdp=1,
    save_every=3,
    log_every=1,
    seed=0,
    grad_accum_steps=1,
    slices=1,
) -> ml_collections.ConfigDict:
    """The schema's config with the tiny run's settings (a validated, locked config)."""
    config = config_lib.default_config()
    config.seed = seed
    config.mesh.update(
        dict(data=data, fsdp=fsdp, slices=slices, min_shard_size=TEST_MIN_SHARD_SIZE)
    )
    config.data.batch_size = batch_size
    config.optimizer.update(dict(base_learning_rate=2e-3, warmup_steps=3, weight_decay=0.01))
    config.train.update(
        dict(
            num_steps=num_steps,
            log_every=log_every,
            save_every=save_every,
            grad_accum_steps=grad_accum_steps,
        )
    )
    return config_lib.finalize(config)


def flat_params(tree) -> dict:
    """``{'hidden/kernel': np.ndarray, ...}`` of a (gathered) param tree."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in flat}


def train_in_process(config, workdir: str, evaluations=()) -> dict:
    """A straight in-process run of the tiny model; its final params, flattened."""
    from predvdm_jax.training import loop

    state = loop.train_loop(
        config,
        workdir,
        init_fn,
        make_loss_fn(),
        StreamIterator(config.seed, config.data.batch_size),
        evaluations=evaluations,
    )
    return flat_params(jax.device_get(state.params))


def best_bundle_evaluation(workdir: str):
    """Every 2 steps: keep the EMA weights in ``workdir/best`` when their metric (1 / step,
    so every step improves) is the best."""
    from predvdm_jax.training.best_bundles import BestBundles

    bundle_config = config_lib.finalize(config_lib.default_config())  # read_bundle_files reads it
    vq_params = {"unused": np.zeros(1, np.float32)}
    best = BestBundles(os.path.join(workdir, "best"), 1, "val/loss_ema", bundle_config, vq_params)

    def evaluate(state):
        step = int(jax.device_get(state.step))
        return {"kept": float(best.keep(step, state.ema_params, 1.0 / step))}

    return 2, evaluate


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_subprocess(args: dict, *, devices: int = 1, timeout: float = 120, wait: bool = True):
    """Runs this file's ``main`` with ``args`` on ``devices`` simulated CPU devices."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), json.dumps(args)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result


def run_two_processes(args: dict, timeout: float = 240, devices: int = 1) -> list[tuple[int, str]]:
    """Runs this file's ``main`` with ``args`` as processes 0 and 1 of one JAX job
    (``devices`` CPU devices each, a fresh localhost coordinator); ``(return code, output)``
    of each."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    procs = [
        run_subprocess(
            dict(args, coordinator=coordinator, num_processes=2, process_id=i),
            devices=devices,
            wait=False,
        )
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0].decode())
        except Exception:
            for p in procs:
                p.kill()
            raise
    return [(proc.returncode, output) for proc, output in zip(procs, outputs)]


def _gathered(tree):
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _main(args: dict) -> None:
    from predvdm_jax import mesh as mesh_lib
    from predvdm_jax.training import loop

    if args.get("num_processes", 1) > 1:
        mesh_lib.initialize_distributed(
            args["coordinator"], args["num_processes"], args["process_id"]
        )
    mode = args["mode"]
    if mode == "sharded_steps":
        _sharded_steps(args)
        return
    config = make_config(**args["config"])
    stream = StreamIterator(
        config.seed, config.data.batch_size, jax.process_index(), jax.process_count()
    )
    hooks = []
    sigterm_at = args.get("sigterm_at_step", {}).get(str(jax.process_index()))
    if sigterm_at:  # a preemption notice to this process only
        hooks.append(
            lambda step, state, metrics: step == sigterm_at and os.kill(os.getpid(), signal.SIGTERM)
        )
    for sigint_at in args.get("sigint_at_step", {}).get(str(jax.process_index()), []):
        hooks.append(  # a Ctrl-C to this process only, once per listed step
            lambda step, state, metrics, at=sigint_at: (
                step == at and os.kill(os.getpid(), signal.SIGINT)
            )
        )
    if args.get("hang_after_step"):  # stands still until killed, its checkpoints landing
        hooks.append(
            lambda step, state, metrics: step > args["hang_after_step"] and time.sleep(600)
        )
    evaluations = [best_bundle_evaluation(args["workdir"])] if args.get("keep_best") else []
    try:
        state = loop.train_loop(
            config,
            args["workdir"],
            init_fn,
            make_loss_fn(),
            stream,
            hooks=hooks,
            evaluations=evaluations,
        )
    except loop.TrainingPreempted as stop:
        print(f"preempted: {stop}", flush=True)
        sys.exit(stop.exit_code)
    params = _gathered(state.params)
    if jax.process_index() == 0:
        hidden = state.params["hidden"]["kernel"]
        np.savez(
            args["out"],
            **flat_params(params),
            _hidden_spec=np.array(str(hidden.sharding.spec)),
            _device_count=np.array(jax.device_count()),
            _mesh_processes=np.vectorize(lambda d: d.process_index)(hidden.sharding.mesh.devices),
        )


def _sharded_steps(args: dict) -> None:
    """A few make_train_step steps per run (``run_steps_on_mesh`` keywords and a ``name``)."""
    results = {}
    for run in args["runs"]:
        name = run.pop("name")
        outputs, spec, shard_shape = run_steps_on_mesh(steps=args["steps"], **run)
        for k, v in flat_params(outputs).items():
            results[f"{name}/{k}"] = v
        results[f"{name}/_hidden_spec"] = np.array(spec)
        results[f"{name}/_hidden_shard_shape"] = np.array(shard_shape)
    np.savez(args["out"], **results)


def run_steps_on_mesh(
    data: int,
    fsdp: int,
    steps: int,
    batch_size: int = 8,
    grad_accum_steps: int = 1,
    target_noise: float = 0.01,
):
    """({params, ema, last step's metrics} after ``steps`` steps, hidden kernel spec, its
    per-device shard shape)."""
    from predvdm_jax import mesh as mesh_lib
    from predvdm_jax.training.optim import make_optimizer
    from predvdm_jax.training.train_state import create_train_state
    from predvdm_jax.training.train_step import make_train_step

    config = make_config(data=data, fsdp=fsdp, batch_size=batch_size)
    mesh = mesh_lib.make_mesh(data, fsdp)
    optimizer, schedule = make_optimizer(config)
    state, shardings = create_train_state(
        init_fn, optimizer, jax.random.PRNGKey(0), mesh, min_size=TEST_MIN_SHARD_SIZE
    )
    step_fn = make_train_step(
        make_loss_fn(target_noise=target_noise),
        optimizer,
        0.999,
        mesh,
        shardings,
        mesh_lib.batch_sharding(mesh),
        lr_schedule=schedule,
        grad_accum_steps=grad_accum_steps,
    )
    stream = StreamIterator(0, config.data.batch_size)
    for _ in range(steps):
        state, metrics = step_fn(state, mesh_lib.make_global_batch(next(stream), mesh))
    hidden = state.params["hidden"]["kernel"]
    shard_shape = hidden.addressable_shards[0].data.shape
    outputs = {"params": state.params, "ema": state.ema_params, "metrics": metrics}
    return jax.device_get(outputs), str(hidden.sharding.spec), shard_shape


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))

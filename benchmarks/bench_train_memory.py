"""Memory and speed of the engine's train step with gradient accumulation and remat.

* XLA's compiled memory (``memory_analysis``: arguments and temporaries) of the engine step
  (gradient, grad norm, clipped AdamW, EMA) of a config at a batch, one pass against
  ``train.grad_accum_steps`` microbatches and ``model.remat``; compiled, not run.
* Examples/s of the demo step with and without accumulation (what the smaller
  microbatches cost in speed).

On a CPU, XLA drops the recomputation that ``jax.checkpoint`` asks for (its
optimisation barriers are removed before common-subexpression elimination), so remat
shows its saving only on GPUs and TPUs.

  python benchmarks/bench_train_memory.py [--config=kth64] [--batch=64] [--accum=4]
"""

import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402

from predvdm_jax import mesh as mesh_lib  # noqa: E402
from predvdm_jax.training.train_state import create_train_state  # noqa: E402

flags.DEFINE_string("config", "kth64", "Config whose step's memory is measured.")
flags.DEFINE_integer("batch", 64, "Global batch of that step.")
flags.DEFINE_integer("accum", 4, "Microbatches of the accumulated variants.")
flags.DEFINE_string("dtype", "float32", "Compute dtype (model.dtype).")
flags.DEFINE_integer("demo_batch", 16, "Batch of the timed demo step.")
flags.DEFINE_integer("repeats", 5, "Timed demo steps (median).")
FLAGS = flags.FLAGS

MIB = 2**20


def _with(config, batch, accum, remat, dtype):
    config = config.copy_and_resolve_references()
    config.unlock()
    config.data.batch_size = batch
    config.train.grad_accum_steps = accum
    config.model.remat = remat
    config.model.dtype = dtype
    return config


def _latents(config, model, mesh, abstract: bool):
    d = config.data
    shape = (d.batch_size, d.cond_frames + d.pred_frames, model.latent_size, model.latent_size, 3)
    sharding = mesh_lib.batch_sharding(mesh)
    if abstract:
        return {"latents": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)}
    return {"latents": jax.device_put(jax.random.normal(jax.random.PRNGKey(1), shape), sharding)}


def compiled_memory(config) -> tuple[float, float]:
    """(argument MiB, temporary MiB) of ``config``'s compiled engine step."""
    engine = common.engine_step(config)
    batch = _latents(config, engine.model, engine.mesh, True)
    stats = engine.step.lower(engine.state, batch).compile().memory_analysis()
    return stats.argument_size_in_bytes / MIB, stats.temp_size_in_bytes / MIB


def demo_examples_per_second(config) -> float:
    engine = common.engine_step(config)
    state, _ = create_train_state(
        engine.model.init_denoiser, engine.optimizer, jax.random.PRNGKey(0), engine.mesh
    )
    batch = _latents(config, engine.model, engine.mesh, False)
    holder = [state]

    def run():
        holder[0], metrics = engine.step(holder[0], batch)
        metrics["loss"].block_until_ready()

    return config.data.batch_size / common.time_call(run, repeats=FLAGS.repeats)


def main(argv):
    del argv
    print(common.hardware())
    base = common.load_config(FLAGS.config)
    a = FLAGS.accum
    variants = [(1, False), (a, False), (1, True), (a, True)]
    memory = {}
    for accum, remat in variants:
        memory[accum, remat] = compiled_memory(_with(base, FLAGS.batch, accum, remat, FLAGS.dtype))
        args, temp = memory[accum, remat]
        print(
            f"{FLAGS.config} batch {FLAGS.batch} {FLAGS.dtype}, {accum} microbatch(es), "
            f"remat {remat}: arguments {args:.0f} MiB, temporaries {temp:.0f} MiB",
            flush=True,
        )
    one_pass = memory[1, False][1]
    for accum, remat in variants[1:]:
        common.emit(
            f"{FLAGS.config} step batch {FLAGS.batch} temporaries, "
            f"{accum} microbatch(es), remat {remat}",
            memory[accum, remat][1],
            "MiB",
            "one pass",
            one_pass,
        )
    demo = common.load_config("digits_demo")
    rates = {
        accum: demo_examples_per_second(_with(demo, FLAGS.demo_batch, accum, False, "float32"))
        for accum in (1, a)
    }
    print(
        f"demo batch {FLAGS.demo_batch}: {rates[1]:.1f} examples/s one pass, {rates[a]:.1f} "
        f"with {a} microbatches"
    )
    common.emit(
        f"demo train step batch {FLAGS.demo_batch}, {a} microbatches",
        rates[a],
        "examples/s",
        "one pass",
        rates[1],
    )


if __name__ == "__main__":
    app.run(main)

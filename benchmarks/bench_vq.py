"""Encode / decode throughput (frames/s) of the full-size VQ-f4 (64×64 frames by default).

The model is the config's default `vq` section (LDM's VQ-f4: ch 128, ch_mult (1, 2, 4), two
ResBlocks per level, 55.3 M parameters). Baselines measured in the same run: the same JAX
programs compiled with a plain `jax.jit` (XLA's default fusions) instead of the library's
`predvdm_jax/xla_cpu.jit`, and the same network in PyTorch (the LDM-named reference module of
tests/torch_reference/ldm_vq.py) on the CPU, eval mode, no_grad, torch's default thread count
(skipped with --notorch or when PyTorch is missing). Decoding quantizes first, as PredVDM's
decode does.

  python benchmarks/bench_vq.py [--batch=8] [--size=64] [--repeats=3] [--notorch]
"""

import importlib.util
import os
import sys

import jax
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

from predvdm_jax import config as config_lib  # noqa: E402
from predvdm_jax import xla_cpu  # noqa: E402
from predvdm_jax.diffusion.latent_diffusion import build_vq  # noqa: E402
from predvdm_jax.models.autoencoder import VQModel  # noqa: E402

flags.DEFINE_integer("batch", 8, "Frames per encode / decode call.")
flags.DEFINE_integer("size", 64, "Frame height and width.")
flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (median reported).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch baseline.")
FLAGS = flags.FLAGS


def jax_rates(batch: int, size: int, repeats: int, jit=xla_cpu.jit) -> tuple[float, float]:
    model: VQModel = build_vq(config_lib.default_config())
    frames = jax.random.uniform(jax.random.PRNGKey(0), (batch, size, size, 3), minval=-1, maxval=1)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), frames[:1])["params"]
    encode = jit(lambda p, x: model.apply({"params": p}, x, method=VQModel.encode))
    decode = jit(lambda p, z: model.apply({"params": p}, z, method=VQModel.decode))
    latents = encode(params, frames).block_until_ready()
    t_enc = common.time_call(lambda: encode(params, frames).block_until_ready(), repeats)
    t_dec = common.time_call(lambda: decode(params, latents).block_until_ready(), repeats)
    return batch / t_enc, batch / t_dec


def torch_rates(batch: int, size: int, repeats: int) -> tuple[float, float]:
    import torch

    from tests.torch_reference.ldm_vq import torch_vq_for_config

    model = torch_vq_for_config(config_lib.default_config())
    frames = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        latents = model.encode(frames)
        t_enc = common.time_call(lambda: model.encode(frames), repeats)
        t_dec = common.time_call(lambda: model.decode(latents), repeats)
    return batch / t_enc, batch / t_dec


def main(argv):
    del argv
    print(common.hardware())
    vq = config_lib.default_config().vq
    label = f"VQ-f4 ch{vq.ch} {FLAGS.size}x{FLAGS.size} batch {FLAGS.batch}"
    print(
        f"VQ-f4 (ch {vq.ch}, ch_mult {tuple(vq.ch_mult)}, {vq.num_res_blocks} ResBlocks), "
        f"{FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}, median of {FLAGS.repeats}"
    )
    enc, dec = jax_rates(FLAGS.batch, FLAGS.size, FLAGS.repeats)
    print(f"jax    encode {enc:8.2f} frames/s   decode {dec:8.2f} frames/s")
    plain_enc, plain_dec = jax_rates(FLAGS.batch, FLAGS.size, FLAGS.repeats, jit=jax.jit)
    print(
        f"jax, plain jax.jit: encode {plain_enc:8.2f} frames/s   decode {plain_dec:8.2f} frames/s "
        f"(library programs {enc / plain_enc:.2f}x, {dec / plain_dec:.2f}x)"
    )
    common.emit(f"{label} encode", enc, "frames/s", "plain jax.jit", plain_enc)
    common.emit(f"{label} decode", dec, "frames/s", "plain jax.jit", plain_dec)
    if not FLAGS.torch:
        print("PyTorch baseline skipped (--notorch)")
    elif importlib.util.find_spec("torch") is None:
        print("PyTorch baseline skipped (PyTorch is not installed)")
    else:
        import torch

        t_enc, t_dec = torch_rates(FLAGS.batch, FLAGS.size, FLAGS.repeats)
        print(
            f"torch  encode {t_enc:8.2f} frames/s   decode {t_dec:8.2f} frames/s "
            f"(torch {torch.__version__}, {torch.get_num_threads()} threads)"
        )
        print(f"jax/torch  encode {enc / t_enc:.2f}x   decode {dec / t_dec:.2f}x")
        common.emit(f"{label} encode", enc, "frames/s", "PyTorch CPU", t_enc)
        common.emit(f"{label} decode", dec, "frames/s", "PyTorch CPU", t_dec)
    print(f"peak RSS {common.peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    app.run(main)

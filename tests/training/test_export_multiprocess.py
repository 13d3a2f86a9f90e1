"""scripts/export.py of a checkpoint written on 8 devices (a 2 x 4 mesh, parameters split over
fsdp), run as two JAX processes: one JAX job that writes the bundle and the PredVDM checkpoint
once, from process 0, holding the checkpoint's EMA and raw weights exactly."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop import bundle as bundle_lib, predvdm_ckpt
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors
from random_params import random_params_from_init
from tiny_config import tiny_config
from two_processes import run_as_two_processes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAW_SEED, EMA_SEED = 5, 7

# On 8 devices: a train state of known random weights on a 2 x 4 mesh, saved as step 3.
WRITE_CHECKPOINT = textwrap.dedent(
    """
    import json
    import sys

    import jax
    from predvdm_jax import config as config_lib, mesh as mesh_lib
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.training import optim, train_state
    from predvdm_jax.training.checkpoint import Checkpointer
    from random_params import random_params_from_init

    with open(sys.argv[1]) as f:
        config = config_lib.config_from_dict(json.load(f))
    model = LatentDiffusion.from_config(config)
    optimizer, _ = optim.make_optimizer(config)
    mesh = mesh_lib.make_mesh(2, 4)
    _, shardings = train_state.abstract_train_state(
        model.init_denoiser, optimizer, jax.random.PRNGKey(0), mesh, min_size=256
    )
    assert "fsdp" in str(shardings.params), "nothing split over fsdp"
    params = random_params_from_init(model.init_denoiser, {raw})
    state = train_state.TrainState(
        step=jax.numpy.int32(3),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=random_params_from_init(model.init_denoiser, {ema}),
        ema_updates=jax.numpy.int32(3),
        rng=jax.random.PRNGKey(1),
    )
    checkpointer = Checkpointer(sys.argv[2])
    checkpointer.save(3, jax.device_put(state, shardings), {{"examples": 0}}, config)
    checkpointer.close()
    """
).format(raw=RAW_SEED, ema=EMA_SEED)


def _env(devices, **extra):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([REPO, tests, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return dict(env, **extra)


def _config(tmp_path):
    config = tiny_config()
    config.vq_params = str(tmp_path / "vq.safetensors")
    model = LatentDiffusion.from_config(config)
    save_params_safetensors(config.vq_params, random_params_from_init(model.init_vq, 2))
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json_best_effort())
    return config, model, str(config_file)


def test_export_on_two_processes_writes_once_the_weights_saved_on_eight_devices(tmp_path):
    config, model, config_file = _config(tmp_path)
    workdir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-c", WRITE_CHECKPOINT, config_file, str(workdir / "checkpoints")],
        env=_env(8),
        check=True,
        timeout=120,
    )

    out, ckpt = tmp_path / "bundle", tmp_path / "exported.safetensors"
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "export.py"),
        f"--workdir={workdir}",
        f"--out={out}",
        f"--predvdm_ckpt={ckpt}",
    ]
    outputs = []
    for returncode, stdout, stderr in run_as_two_processes(command, _env(1)):
        assert returncode == 0, (stdout + stderr)[-3000:]
        outputs.append(stdout + stderr)
    # One JAX job: process 0 writes and reports each file, process 1 writes nothing.
    assert outputs[0].count("wrote ") == 2, outputs[0][-3000:]
    assert "wrote " not in outputs[1], outputs[1][-3000:]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["bundle", "config.json", "exported.safetensors", "run", "vq.safetensors"]
    )

    # The bundle holds the EMA weights saved on the 8 devices; it loads in this 1-device process.
    expected = random_params_from_init(model.init_denoiser, EMA_SEED)
    bundle = bundle_lib.load_bundle(str(out))
    assert bundle.source == bundle_lib.BundleSource("run", str(workdir), "EMA", 3, 3)
    assert f"wrote {out} (step 3, EMA weights, config " in outputs[0]
    assert jax.tree.structure(bundle.params) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, bundle.params, expected)
    # The PredVDM checkpoint holds the raw and the EMA weights.
    back = predvdm_ckpt.load_predvdm_checkpoint(str(ckpt), model.denoiser)
    jax.tree.map(np.testing.assert_array_equal, back.ema_params, expected)
    raw = random_params_from_init(model.init_denoiser, RAW_SEED)
    jax.tree.map(np.testing.assert_array_equal, back.params, raw)

"""Gradient accumulation: one microbatch of activations at a time, a clear error when the
batch does not split. (That accumulated steps equal whole-batch steps, sharded too, is
tested in test_sharded.py.)"""

import jax
import jax.numpy as jnp
import pytest

from predvdm_jax import config as config_lib
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax import mesh as mesh_lib
from predvdm_jax.training import diffusion_trainer, loop
from predvdm_jax.training.optim import make_optimizer
from predvdm_jax.training.train_state import abstract_train_state
from predvdm_jax.training.train_step import make_train_step

from .tiny_setup import StreamIterator, init_fn, make_config, make_loss_fn, run_steps_on_mesh

BATCH = 32


def _denoiser_config():
    c = config_lib.default_config()
    c.data.update(dict(image_size=64, batch_size=BATCH, cond_frames=4, pred_frames=2))
    c.data.frames_per_sample = 6
    c.unet.update(
        dict(
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(2,),
            num_head_channels=32,
            dropout=0.0,
        )
    )
    c.model.mode = "tc"
    return config_lib.finalize(c)


def test_accumulation_keeps_only_one_microbatch_of_activations_live():
    config = _denoiser_config()
    model = LatentDiffusion.from_config(config)
    mesh = mesh_lib.make_mesh(1, 1)
    optimizer, _ = make_optimizer(config)
    state, state_sharding = abstract_train_state(
        model.init_denoiser, optimizer, jax.random.PRNGKey(0), mesh
    )
    sharding = mesh_lib.batch_sharding(mesh)
    batch = {"latents": jax.ShapeDtypeStruct((BATCH, 6, 16, 16, 3), jnp.float32, sharding=sharding)}
    loss_fn = diffusion_trainer.make_loss_fn(model, None)
    temp_bytes = {}
    for accum in (1, 4):
        step = make_train_step(
            loss_fn, optimizer, 0.999, mesh, state_sharding, sharding, grad_accum_steps=accum
        )
        temp_bytes[accum] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    # Activations dominate at this batch; a quarter of them plus the gradient sum stays below 40 %.
    assert temp_bytes[4] < 0.4 * temp_bytes[1], temp_bytes


def test_a_batch_that_does_not_split_into_equal_microbatches_is_a_clear_error():
    with pytest.raises(ValueError, match="make data.batch_size a multiple of 3"):
        run_steps_on_mesh(1, 1, 1, batch_size=8, grad_accum_steps=3)
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1"):
        run_steps_on_mesh(1, 1, 1, grad_accum_steps=0)


def test_training_refuses_microbatches_that_do_not_split_before_it_starts(tmp_path):
    config = make_config(batch_size=6)
    config.train.grad_accum_steps = 4
    with pytest.raises(config_lib.ConfigError, match="data.batch_size 6 must be a multiple of"):
        loop.train_loop(config, str(tmp_path), init_fn, make_loss_fn(), StreamIterator(0, 6))
    assert not (tmp_path / "checkpoints").exists()

"""An export loads into PyTorch Lightning the way the original's test command loads a checkpoint.

The original evaluates with ``main.py --resume <logdir> -f test``, i.e. Lightning's
``trainer.test(ckpt_path=...)``, which migrates the file by its ``pytorch-lightning_version``
and loads the ``state_dict`` strictly into ``LatentDiffusion``. The module here has the
original's tree, built from tests/torch_reference: the ``DiffusionWrapper`` (both gates, in
every mode), ``LitEma``'s dot-free buffers, the VQ as first and cond stage (one module), and the
schedule buffers.
"""

import copy
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from random_params import random_params_from_init
from tiny_config import tiny_config
from torch_reference.denoiser import TorchDiffusionWrapper, TorchUNet
from torch_reference.ldm_vq import torch_vq_for_config

from predvdm_jax import config as config_lib
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop import predvdm_ckpt, torch_checkpoint as tc


class LitEma(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.register_buffer("decay", torch.tensor(0.999))
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int))
        for name, p in model.named_parameters():
            self.register_buffer(name.replace(".", ""), p.detach().clone())


def latent_diffusion_module(config):
    """A LightningModule with PredVDM ``LatentDiffusion``'s state_dict keys for ``config``."""
    k, cond, c = config.data.pred_frames, config.data.cond_frames, config.vq.embed_dim
    unet = {f: config.unet[f] for f in ("model_channels", "num_res_blocks", "num_head_channels")}
    unet.update(
        attention_resolutions=tuple(config.unet.attention_resolutions),
        channel_mult=tuple(config.unet.channel_mult),
    )

    class LatentDiffusionLike(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = TorchDiffusionWrapper(
                TorchUNet((k + cond) * c, k * c, **unet), k, config.model.mode
            )
            self.model_ema = LitEma(self.model)
            self.first_stage_model = torch_vq_for_config(config)
            self.cond_stage_model = self.first_stage_model  # "__is_first_stage__"
            for name in predvdm_ckpt.SCHEDULE_BUFFERS:
                self.register_buffer(name, torch.zeros(1000))
            self.outputs = []

        def test_step(self, batch, _):
            x, t, cond = batch
            ema = copy.deepcopy(self.model)
            for name, p in ema.named_parameters():
                p.data.copy_(getattr(self.model_ema, name.replace(".", "")))
            self.outputs = [self.model(x, t, cond), ema(x, t, cond)]

    return LatentDiffusionLike


# tcct_para_attn (no unused gate) is test_predvdm_ckpt's export, run in PyTorch: the same
# state_dict keys and parity, on a UNet with attention blocks.
@pytest.mark.parametrize("mode", ["tc", "tc_attn"])
def test_an_export_loads_with_lightning_trainer_test_and_predicts_what_flax_does(tmp_path, mode):
    config = config_lib.with_overrides(tiny_config(), {"model.mode": mode})
    diffusion = LatentDiffusion.from_config(config)
    params = random_params_from_init(diffusion.init_denoiser, 1)
    ema = random_params_from_init(diffusion.init_denoiser, 2)
    vq_file = tmp_path / "vq.safetensors"
    tc.save_params_safetensors(vq_file, random_params_from_init(diffusion.init_vq, 3))
    config = config_lib.with_overrides(config, {"vq_params": str(vq_file)})
    state = types.SimpleNamespace(params=params, ema_params=ema, ema_updates=7)
    exported = tmp_path / "last.ckpt"
    predvdm_ckpt.write_latent_diffusion_checkpoint(str(exported), config, state, 40)

    rng = np.random.default_rng(4)
    h, c = diffusion.latent_size, config.vq.embed_dim
    x = rng.standard_normal((2, diffusion.k, h, h, c)).astype(np.float32)
    cond = rng.standard_normal((2, diffusion.cond_frames, h, h, c)).astype(np.float32)
    t = np.array([3.0, 517.0], dtype=np.float32)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 1, 4, 2, 3)))
    data = torch.utils.data.TensorDataset(to_torch(x), torch.from_numpy(t), to_torch(cond))
    loader = torch.utils.data.DataLoader(data, batch_size=2)

    module = latent_diffusion_module(config)()
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False
    )
    trainer.test(module, dataloaders=loader, ckpt_path=str(exported), verbose=False)

    apply = jax.jit(diffusion.denoiser.apply)
    for got, flax_params in zip(module.outputs, (params, ema)):
        want = apply({"params": flax_params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond))
        got = got.detach().numpy().transpose(0, 1, 3, 4, 2)
        assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))
    assert int(module.model_ema.num_updates) == 7

    # A gate the mode does not use is there, raw and EMA equal, at PyTorch's initial scale.
    unused = [m for m in ("tc_attn", "ct_attn") if m not in params]
    for name in unused:
        weight = getattr(module.model, name).to_qkv.weight
        ema_weight = getattr(module.model_ema, f"{name}to_qkvweight")
        torch.testing.assert_close(weight, ema_weight, rtol=0, atol=0)
        assert 0 < float(weight.detach().abs().max()) <= 1 / np.sqrt(weight.shape[1])

    again = latent_diffusion_module(config).load_from_checkpoint(str(exported))
    for key, value in module.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)

"""PredVDM checkpoint import: parity against a PyTorch UNet + DiffusionWrapper written here.

The PyTorch reference (tests/torch_reference/denoiser.py) follows LDM's openaimodel (legacy
attention) and PredVDM's DiffusionWrapper with their exact state_dict names; it is randomised (zero-init
layers and GroupNorm affine included), saved as a Lightning ``.ckpt`` with a
perturbed ``LitEma`` copy, and imported through the real loading path.
"""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from predvdm_jax.interop import predvdm_ckpt
from predvdm_jax.models.predictor import PredVDMDenoiser
from torch_reference.denoiser import TorchDiffusionWrapper, TorchUNet

K, N_COND, C, SIDE, BATCH = 2, 2, 3, 8, 2
TINY_UNET = dict(
    model_channels=32,
    attention_resolutions=(2,),
    num_res_blocks=1,
    channel_mult=(1, 2),
    num_head_channels=16,
    dropout=0.0,
)
MODES = ("tc", "ct", "tcct_para", "tc_attn", "tcct_para_attn")


def randomise_(module, generator):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and (
                "in_layers.0" in name or "out_layers.0" in name or "norm" in name or "out.0" in name
            ):
                p.copy_(
                    (1.0 if name.endswith("weight") else 0.0)
                    + 0.2 * torch.randn(p.shape, generator=generator)
                )
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))


def make_torch_wrapper(mode, use_scale_shift_norm=False, seed=0):
    in_ch, out_ch = (K + N_COND) * C, K * C
    unet = TorchUNet(in_ch, out_ch, use_scale_shift_norm=use_scale_shift_norm, **TINY_UNET)
    wrapper = TorchDiffusionWrapper(unet, K, mode).eval()
    randomise_(wrapper, torch.Generator().manual_seed(seed))
    return wrapper


def lightning_state_dict(wrapper, seed=1):
    generator = torch.Generator().manual_seed(seed)
    sd = {"model." + k: v.clone() for k, v in wrapper.state_dict().items()}
    for name, p in wrapper.named_parameters():
        sd["model_ema." + name.replace(".", "")] = p.detach() + 0.05 * torch.randn(
            p.shape, generator=generator
        )
    sd["model_ema.decay"] = torch.tensor(0.999)
    sd["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int)
    sd["first_stage_model.encoder.conv_in.weight"] = torch.ones(4, 3, 3, 3)
    sd["cond_stage_model.encoder.conv_in.weight"] = torch.ones(4, 3, 3, 3)
    sd["betas"] = torch.linspace(1e-4, 2e-2, 10)
    return sd


def ema_copy(wrapper, sd):
    ema = copy.deepcopy(wrapper)
    with torch.no_grad():
        for name, p in ema.named_parameters():
            p.copy_(sd["model_ema." + name.replace(".", "")])
    return ema.eval()


def inputs(seed=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, K, SIDE, SIDE, C)).astype(np.float32)
    cond = rng.standard_normal((BATCH, N_COND, SIDE, SIDE, C)).astype(np.float32)
    t = np.array([3.0, 517.25], dtype=np.float32)
    return x, t, cond


def torch_eps(wrapper, x, t, cond):
    to_cf = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 1, 4, 2, 3)))
    with torch.no_grad():
        out = wrapper(to_cf(x), torch.from_numpy(t), to_cf(cond))
    return out.numpy().transpose(0, 1, 3, 4, 2)


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def flax_model(mode, use_scale_shift_norm=False):
    return PredVDMDenoiser(
        mode=mode,
        k=K,
        n_cond=N_COND,
        latent_channels=C,
        unet=dict(TINY_UNET, use_scale_shift_norm=use_scale_shift_norm),
    )


@pytest.fixture(scope="module")
def saved_wrapper(tmp_path_factory):
    """One randomised PyTorch wrapper (both attentions; the mode only selects the forward) saved as .ckpt."""
    wrapper = make_torch_wrapper("tc")
    sd = lightning_state_dict(wrapper)
    path = tmp_path_factory.mktemp("ckpt") / "predvdm.ckpt"
    torch.save({"state_dict": sd, "global_step": 100, "epoch": 3}, path)
    return wrapper, ema_copy(wrapper, sd), path


def check_parity(wrapper, ema, path, mode, use_scale_shift_norm=False):
    wrapper.mode = ema.mode = mode
    model = flax_model(mode, use_scale_shift_norm)
    ckpt = predvdm_ckpt.load_predvdm_checkpoint(path, model)
    assert ckpt.ema_num_updates == 7 and ckpt.ema_decay == pytest.approx(0.999)
    assert set(ckpt.first_stage_state_dict) == {"first_stage_model.encoder.conv_in.weight"}
    unused_attention = {"tc": 2, "ct": 2, "tcct_para": 2, "tc_attn": 1, "tcct_para_attn": 0}[mode]
    assert (
        len(ckpt.ignored_keys) == 2 + unused_attention * 2 * 3
    )  # cond_stage + betas; raw & EMA, 3 tensors each

    x, t, cond = inputs()
    apply = jax.jit(model.apply)
    for params, reference in ((ckpt.params, wrapper), (ckpt.ema_params, ema)):
        expected = torch_eps(reference, x, t, cond)
        got = apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond))
        assert got.shape == expected.shape
        assert rel_err(got, expected) < 1e-4, (mode, rel_err(got, expected))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_matches_pytorch_raw_and_ema(saved_wrapper, mode):
    check_parity(*saved_wrapper, mode)


def test_scale_shift_norm_matches_pytorch(tmp_path):
    wrapper = make_torch_wrapper("tc", use_scale_shift_norm=True)
    sd = lightning_state_dict(wrapper)
    torch.save({"state_dict": sd}, tmp_path / "sss.ckpt")
    check_parity(
        wrapper,
        ema_copy(wrapper, sd),
        tmp_path / "sss.ckpt",
        "tcct_para_attn",
        use_scale_shift_norm=True,
    )


def test_export_round_trips_to_the_pytorch_state_dict():
    wrapper = make_torch_wrapper("tcct_para_attn")
    sd = {k: v.numpy() for k, v in lightning_state_dict(wrapper).items()}
    ckpt = predvdm_ckpt.convert_predvdm_state_dict(sd, flax_model("tcct_para_attn"))
    exported = predvdm_ckpt.predvdm_params_to_state_dict(
        ckpt.params, ckpt.ema_params, ckpt.ema_num_updates
    )
    denoiser_keys = {
        k for k in sd if k.startswith(("model.", "model_ema.")) and k != "model_ema.decay"
    }
    assert set(exported) == denoiser_keys
    for key in exported:
        np.testing.assert_array_equal(exported[key], sd[key], err_msg=key)


def test_checkpoint_without_ema_gives_no_ema_params():
    wrapper = make_torch_wrapper("tc")
    sd = {k: v.numpy() for k, v in wrapper.state_dict().items()}
    sd = {"model." + k: v for k, v in sd.items() if not k.startswith(("tc_attn", "ct_attn"))}
    ckpt = predvdm_ckpt.convert_predvdm_state_dict(sd, flax_model("tc"))
    assert ckpt.ema_params is None and ckpt.ema_num_updates is None and ckpt.ignored_keys == ()


def test_key_mismatch_error_lists_missing_unexpected_and_wrong_shape_keys():
    wrapper = make_torch_wrapper("tc_attn")
    sd = {k: v.numpy() for k, v in lightning_state_dict(wrapper).items()}
    del sd["model.diffusion_model.middle_block.1.qkv.bias"]
    del sd["model_ema.diffusion_modeltime_embed0weight"]
    sd["model.diffusion_model.extra_block.weight"] = np.zeros(3, np.float32)
    sd["model.tc_attn.to_out.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as err:
        predvdm_ckpt.convert_predvdm_state_dict(sd, flax_model("tc_attn"))
    message = str(err.value)
    assert "missing (2)" in message and "unexpected (1)" in message and "wrong shape (1)" in message
    for key in (
        "model.diffusion_model.middle_block.1.qkv.bias",
        "model_ema.diffusion_modeltime_embed0weight",
        "model.diffusion_model.extra_block.weight",
        "model.tc_attn.to_out.bias: expected (6,), got (7,)",
    ):
        assert key in message


def test_config_mismatch_is_reported_as_wrong_shapes():
    sd = {k: v.numpy() for k, v in lightning_state_dict(make_torch_wrapper("tc")).items()}
    model = PredVDMDenoiser(mode="tc", k=K, n_cond=N_COND + 1, latent_channels=C, unet=TINY_UNET)
    with pytest.raises(
        ValueError, match=r"wrong shape \(2\): model.diffusion_model.input_blocks.0.0.weight"
    ):
        predvdm_ckpt.convert_predvdm_state_dict(sd, model)


def test_exported_latent_diffusion_checkpoint_loads_and_runs_in_pytorch(tmp_path):
    """One state_dict saved in both formats: each read back by its own reader gives the same
    tensors, which PyTorch's wrapper takes strictly and runs as Flax does (the Lightning test
    checks the other modes' gates)."""
    from random_params import random_params_from_init
    from safetensors.torch import load_file

    from predvdm_jax.interop import ldm_vq, torch_checkpoint as tc

    model = flax_model("tcct_para_attn")
    x, t, cond = inputs()
    init = lambda key: model.init(key, jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond))["params"]
    params, ema = random_params_from_init(init, 1), random_params_from_init(init, 2)
    vq_config = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, n_embed=16, resolution=16)
    vq_model = ldm_vq.make_vq_model(vq_config)
    vq = random_params_from_init(
        lambda key: vq_model.init(key, jnp.zeros((1, 16, 16, 3)))["params"], 3
    )
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2  # LDM "linear"
    alphas_cumprod = np.cumprod(1 - betas)
    buffers = {name: np.zeros(1000) for name in predvdm_ckpt.SCHEDULE_BUFFERS}
    buffers.update(betas=betas, alphas_cumprod=alphas_cumprod)

    state_dict = predvdm_ckpt.latent_diffusion_state_dict(model, params, ema, 7, 0.999, vq, buffers)
    for suffix in (".ckpt", ".safetensors"):
        tc.save_torch_state_dict(tmp_path / f"exported{suffix}", state_dict, {"global_step": 40})
    saved = torch.load(tmp_path / "exported.ckpt", weights_only=True)
    assert saved["global_step"] == 40
    loaded = saved["state_dict"]
    from_safetensors = load_file(tmp_path / "exported.safetensors")
    assert set(from_safetensors) == set(loaded)
    for key, value in loaded.items():  # dtype, shape and every value
        other = from_safetensors[key]
        assert other.dtype == value.dtype and torch.equal(other, value), key

    # The PyTorch PredVDM wrapper takes every model.* key (strict) and predicts what Flax does,
    # for the raw weights and for the LitEma copy.
    wrapper = make_torch_wrapper("tcct_para_attn")
    wrapper.load_state_dict(
        {k[len("model.") :]: v for k, v in loaded.items() if k.startswith("model.")}
    )
    ema_wrapper = ema_copy(wrapper, loaded)
    apply = jax.jit(model.apply)
    for flax_params, torch_module in ((params, wrapper), (ema, ema_wrapper)):
        expected = torch_eps(torch_module, x, t, cond)
        got = apply({"params": flax_params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(cond))
        assert rel_err(got, expected) < 1e-4
    assert float(loaded["model_ema.decay"]) == pytest.approx(0.999)
    assert int(loaded["model_ema.num_updates"]) == 7
    assert "scale_factor" not in loaded  # a buffer only under scale_by_std, off in PredVDM

    first = {k: v.numpy() for k, v in loaded.items() if k.startswith("first_stage_model.")}
    again = ldm_vq.convert_vq_state_dict(first, vq_config)
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, vq))
    for key, value in first.items():
        np.testing.assert_array_equal(loaded["cond_stage_model." + key[18:]].numpy(), value)
    np.testing.assert_allclose(loaded["betas"].numpy(), betas, rtol=1e-7)
    assert loaded["betas"].dtype == torch.float32 and len(loaded["alphas_cumprod"]) == 1000


def test_an_unknown_export_suffix_is_one_clear_error_and_writes_nothing(tmp_path):
    from predvdm_jax.interop import torch_checkpoint as tc

    with pytest.raises(ValueError, match=r"cannot tell the format of .*x\.bin.*\.safetensors"):
        tc.save_torch_state_dict(tmp_path / "x.bin", {"a": np.zeros(2, np.float32)})
    assert list(tmp_path.iterdir()) == []

"""PredVDM checkpoint import: parity against a PyTorch UNet + DiffusionWrapper written here.

The PyTorch reference follows LDM's openaimodel (legacy attention) and PredVDM's
DiffusionWrapper with their exact state_dict names; it is randomised (zero-init
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
from torch import nn

from predvdm_jax.interop import predvdm_ckpt
from predvdm_jax.models.predictor import PredVDMDenoiser

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


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels):
    return GroupNorm32(32, channels)


def zero_module(module):
    for p in module.parameters():
        p.detach().zero_()
    return module


def torch_timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TorchResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels, dropout, use_scale_shift_norm):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x, emb):
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class TorchAttentionBlock(nn.Module):
    """AttentionBlock with QKVAttentionLegacy."""

    def __init__(self, channels, num_head_channels):
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        q, k, v = qkv.reshape(bs * self.num_heads, ch * 3, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class TorchDownsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class TorchUpsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TorchResBlock) else layer(x)
        return x


class TorchUNet(nn.Module):
    def __init__(
        self,
        in_channels,
        out_channels,
        model_channels,
        attention_resolutions,
        num_res_blocks,
        channel_mult,
        num_head_channels,
        dropout=0.0,
        use_scale_shift_norm=False,
    ):
        super().__init__()
        self.model_channels = model_channels
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def res(ch_in, ch_out):
            return TorchResBlock(ch_in, emb_dim, ch_out, dropout, use_scale_shift_norm)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(TorchAttentionBlock(ch, num_head_channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(TorchDownsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(
            res(ch, ch), TorchAttentionBlock(ch, num_head_channels), res(ch, ch)
        )
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(TorchAttentionBlock(ch, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(TorchUpsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)),
        )

    def forward(self, x, timesteps):
        emb = self.time_embed(torch_timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class TorchLinearAttention(nn.Module):
    def __init__(self, dim, heads, dim_head=32):
        super().__init__()
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        qkv = self.to_qkv(x).reshape(
            b, 3, self.heads, -1, h * w
        )  # 'b (qkv heads c) h w -> qkv b heads c (h w)'
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w)
        return self.to_out(out)


class TorchDiffusionWrapper(nn.Module):
    """PredVDM DiffusionWrapper (concat conditioning); always holds both wrapper attentions."""

    def __init__(self, unet, k, mode):
        super().__init__()
        self.diffusion_model, self.k, self.mode = unet, k, mode
        self.tc_attn = TorchLinearAttention(k * C, heads=5)
        self.ct_attn = TorchLinearAttention(k * C, heads=3)

    def forward(self, x, t, cond):
        xc = torch.cat([x, cond], dim=1)
        b, frames, c, h, w = xc.shape
        tc = xc.reshape(b, frames * c, h, w)
        ct = xc.permute(0, 2, 1, 3, 4).reshape(b, c * frames, h, w)

        def unflat_tc(o):
            return o.reshape(b, self.k, c, h, w)

        def unflat_ct(o):
            return o.reshape(b, c, self.k, h, w).permute(0, 2, 1, 3, 4)

        if self.mode == "tc":
            return unflat_tc(self.diffusion_model(tc, t))
        if self.mode == "ct":
            return unflat_ct(self.diffusion_model(ct, t))
        if self.mode == "tcct_para":
            return (
                unflat_tc(self.diffusion_model(tc, t)) + unflat_ct(self.diffusion_model(ct, t))
            ) / 2
        o1 = self.diffusion_model(tc, t)
        o1 = unflat_tc(self.tc_attn(o1) * o1)
        if self.mode == "tc_attn":
            return o1
        o2 = self.diffusion_model(ct, t)
        return o1 + unflat_ct(self.ct_attn(o2) * o2)


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


def torch_wrapper_for_config(config):
    """The PyTorch wrapper + UNet sized like a predvdm_jax ``config`` (default init)."""
    u, k, cond = config.unet, config.data.pred_frames, config.data.cond_frames
    unet = TorchUNet(
        (k + cond) * 3,
        k * 3,
        u.model_channels,
        tuple(u.attention_resolutions),
        u.num_res_blocks,
        tuple(u.channel_mult),
        u.num_head_channels,
        dropout=u.dropout,
    )
    return TorchDiffusionWrapper(unet, k, config.model.mode)


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


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_exported_latent_diffusion_checkpoint_loads_and_runs_in_pytorch(tmp_path, suffix):
    from random_params import random_params_from_init

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

    path = tmp_path / f"exported{suffix}"
    state_dict = predvdm_ckpt.latent_diffusion_state_dict(params, ema, 7, 0.999, vq, buffers, 0.25)
    tc.save_torch_state_dict(path, state_dict, {"global_step": 40})
    if suffix == ".ckpt":
        saved = torch.load(path, weights_only=True)
        assert saved["global_step"] == 40
        loaded = saved["state_dict"]
    else:
        from safetensors.torch import load_file

        loaded = load_file(path)

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
    assert float(loaded["scale_factor"]) == 0.25

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

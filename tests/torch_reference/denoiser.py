"""LDM's openaimodel UNet (legacy attention) and PredVDM's DiffusionWrapper in PyTorch, with
their exact state_dict names."""

import math

import torch
from torch import nn

LATENT_CHANNELS = 3  # the VQ-f4's embed_dim


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
        self.tc_attn = TorchLinearAttention(k * LATENT_CHANNELS, heads=5)
        self.ct_attn = TorchLinearAttention(k * LATENT_CHANNELS, heads=3)

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


def torch_wrapper_for_config(config):
    """The PyTorch wrapper + UNet sized like a predvdm_jax ``config`` (default init)."""
    u, k, cond = config.unet, config.data.pred_frames, config.data.cond_frames
    unet = TorchUNet(
        (k + cond) * LATENT_CHANNELS,
        k * LATENT_CHANNELS,
        u.model_channels,
        tuple(u.attention_resolutions),
        u.num_res_blocks,
        tuple(u.channel_mult),
        u.num_head_channels,
        dropout=u.dropout,
    )
    return TorchDiffusionWrapper(unet, k, config.model.mode)

"""LDM's VQ-f4 first stage in PyTorch, with its exact state_dict names (ldm/modules/
diffusionmodules/model.py Encoder / Decoder, taming's VectorQuantizer2)."""

import torch
import torch.nn.functional as F
from torch import nn as tnn


def Normalize(c):
    return tnn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(tnn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = tnn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.dropout = tnn.Dropout(0.0)
        self.conv2 = tnn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = tnn.Conv2d(in_channels, out_channels, 1, 1, 0)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = Normalize(c)
        self.q = tnn.Conv2d(c, c, 1)
        self.k = tnn.Conv2d(c, c, 1)
        self.v = tnn.Conv2d(c, c, 1)
        self.proj_out = tnn.Conv2d(c, c, 1)

    def forward(self, x):
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)
        k = k.reshape(b, c, h * w)
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = torch.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        h_ = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Downsample(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = tnn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = tnn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(tnn.Module):
    def __init__(
        self,
        *,
        ch,
        ch_mult,
        num_res_blocks,
        attn_resolutions,
        in_channels,
        resolution,
        z_channels,
        **_,
    ):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.conv_in = tnn.Conv2d(in_channels, ch, 3, 1, 1)
        curr_res = resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = tnn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = tnn.ModuleList(), tnn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = tnn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(down)
        self.mid = tnn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = tnn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(tnn.Module):
    def __init__(
        self, *, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, **_
    ):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = tnn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = tnn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.up = tnn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = tnn.ModuleList(), tnn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = tnn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res *= 2
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = tnn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer2(tnn.Module):
    def __init__(self, n_e, e_dim):
        super().__init__()
        self.embedding = tnn.Embedding(n_e, e_dim)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        z_flat = z.view(-1, z.shape[-1])
        d = (
            torch.sum(z_flat**2, dim=1, keepdim=True)
            + torch.sum(self.embedding.weight**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", z_flat, self.embedding.weight.t())
        )
        indices = torch.argmin(d, dim=1)
        z_q = self.embedding(indices).view(z.shape)
        return z_q.permute(0, 3, 1, 2).contiguous(), indices.view(z.shape[:-1]), d


class TorchVQModel(tnn.Module):
    def __init__(self, embed_dim, n_embed, **ddconfig):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(n_embed, embed_dim)
        self.quant_conv = tnn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = tnn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, h):
        z_q, _, _ = self.quantize(h)
        return self.decoder(self.post_quant_conv(z_q))


def build_torch_model(config, seed=0):
    torch.manual_seed(seed)
    cfg = dict(config)
    model = TorchVQModel(cfg.pop("embed_dim"), cfg.pop("n_embed"), **cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif p.ndim == 1:  # GroupNorm scale
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        # Codebook: perturbed encoder outputs, so that codes are near the latents and many are used.
        z = (
            model.encode(torch.rand(2, 3, 64, 64) * 2 - 1)
            .permute(0, 2, 3, 1)
            .reshape(-1, cfg["z_channels"])
        )
        picks = z[torch.randint(0, z.shape[0], (model.quantize.embedding.weight.shape[0],))]
        model.quantize.embedding.weight.copy_(picks + 0.05 * z.std() * torch.randn_like(picks))
    return model


def torch_vq_for_config(config, seed=0):
    """``build_torch_model`` sized like a predvdm_jax ``config``'s ``vq`` section."""
    return build_torch_model(config.vq.to_dict(), seed)

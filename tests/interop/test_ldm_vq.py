"""PyTorch parity of the VQ-f4 first stage through the real checkpoint loading path.

The reference is the PyTorch VQModel of tests/torch_reference/ldm_vq.py (LDM's exact state_dict
names), randomly initialised (GroupNorm affine params and biases too), saved as a Lightning-style
.ckpt and converted.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from predvdm_jax.interop import ldm_vq, torch_checkpoint  # noqa: E402
from predvdm_jax.models.autoencoder import VQModel  # noqa: E402
from torch_reference.ldm_vq import TorchVQModel, build_torch_model  # noqa: E402

SMALL = dict(
    ch=32,
    ch_mult=(1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(),
    dropout=0.0,
    in_channels=3,
    out_ch=3,
    resolution=32,
    z_channels=3,
    embed_dim=3,
    n_embed=64,
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def save_lightning_ckpt(model, path):
    state_dict = dict(model.state_dict())
    state_dict["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    state_dict["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    state_dict["loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": state_dict, "epoch": 3, "global_step": 1234}, path)


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def to_nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model = build_torch_model(SMALL)
    path = tmp_path_factory.mktemp("vq") / "model.ckpt"
    save_lightning_ckpt(model, path)
    params = ldm_vq.load_vq_checkpoint(path, SMALL)
    return model, params, path


def test_pytorch_parity_encode_quantize_decode(converted):
    """One size: the VQ has no size-dependent path (convolutions, GroupNorm and the mid block's
    attention over all positions, whatever their number), and 64 px is already not the config's
    resolution of 32."""
    size, batch = 64, 2
    torch_model, params, _ = converted
    jax_model = VQModel(**SMALL)
    x = np.random.default_rng(size).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)

    with torch.no_grad():
        z_ref = torch_model.encode(to_nchw(x))
        _, idx_ref, dist_ref = torch_model.quantize(z_ref)
        rec_ref = torch_model.decode(z_ref)
    z_ref_nhwc = to_nhwc(z_ref)

    @jax.jit
    def run(p, x, z_torch):
        z = jax_model.apply({"params": p}, x, method=VQModel.encode)
        _, idx_own = jax_model.apply({"params": p}, z, method=VQModel.quantize)[:2]
        _, idx_same_input = jax_model.apply({"params": p}, z_torch, method=VQModel.quantize)[:2]
        rec = jax_model.apply({"params": p}, z_torch, method=VQModel.decode)
        return z, idx_own, idx_same_input, rec

    z, idx_own, idx_same_input, rec = map(np.asarray, run(params, x, jnp.asarray(z_ref_nhwc)))
    assert z.shape == (batch, size // 4, size // 4, 3)
    assert rel_err(z, z_ref_nhwc) < 1e-4

    # Same input as PyTorch: indices must be identical.
    np.testing.assert_array_equal(idx_same_input, idx_ref.numpy())
    assert len(np.unique(idx_ref.numpy())) > 8

    # From our own encoding: any index that differs must be a numerical tie in PyTorch's distances.
    idx_own, idx_t = idx_own.reshape(-1), idx_ref.numpy().reshape(-1)
    d = dist_ref.numpy()
    rows = np.nonzero(idx_own != idx_t)[0]
    assert np.all(np.abs(d[rows, idx_own[rows]] - d[rows, idx_t[rows]]) < 1e-4 * np.abs(d).max())
    assert rows.size <= max(1, idx_t.size // 100)

    assert rec.shape == x.shape
    assert rel_err(rec, to_nhwc(rec_ref)) < 1e-4


def test_attention_levels_parity(tmp_path):
    """attn_resolutions adds `down.i.attn.j` / `up.i.attn.j` keys; their names and math must match too."""
    config = dict(
        SMALL, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32, n_embed=16
    )
    torch_model = build_torch_model(config, seed=1)
    keys = torch_model.state_dict().keys()
    assert (
        "encoder.down.1.attn.0.q.weight" in keys and "decoder.up.1.attn.1.proj_out.weight" in keys
    )
    params = ldm_vq.convert_vq_state_dict(
        {k: v.numpy() for k, v in torch_model.state_dict().items()}, config
    )
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        z_ref = torch_model.encode(to_nchw(x))
        rec_ref = torch_model.decode(z_ref)
    model = VQModel(**config)

    @jax.jit
    def run(p, x, z_torch):
        return (
            model.apply({"params": p}, x, method=VQModel.encode),
            model.apply({"params": p}, z_torch, method=VQModel.decode),
        )

    z, rec = run(params, x, jnp.asarray(to_nhwc(z_ref)))
    assert rel_err(z, to_nhwc(z_ref)) < 1e-4
    assert rel_err(rec, to_nhwc(rec_ref)) < 1e-4


# PredVDM's first-stage config (spec §B.1: embed_dim, n_embed and ddconfig).
LDM_VQ_F4 = dict(
    embed_dim=3,
    n_embed=8192,
    double_z=False,
    z_channels=3,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=(1, 2, 4),
    num_res_blocks=2,
    attn_resolutions=(),
    dropout=0.0,
)


def test_full_vq_f4_keys_match_the_pytorch_reference():
    """Every key and shape the default VQModel expects is the PyTorch VQ-f4's (its parameter
    count: tests/models/test_autoencoder.py)."""
    expected = ldm_vq.expected_torch_shapes(VQModel())
    config = dict(LDM_VQ_F4)
    with torch.device("meta"):  # shapes only, nothing allocated
        reference = TorchVQModel(config.pop("embed_dim"), config.pop("n_embed"), **config)
    assert expected == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert len(expected) == 205
    # Spot checks against spec Appendix 2.
    assert expected["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert expected["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert expected["decoder.up.0.block.0.conv1.weight"] == (128, 256, 3, 3)
    assert expected["decoder.up.2.upsample.conv.weight"] == (512, 512, 3, 3)
    assert expected["decoder.norm_out.weight"] == (128,)
    assert expected["quantize.embedding.weight"] == (8192, 3)
    assert expected["post_quant_conv.weight"] == (3, 3, 1, 1)
    assert "decoder.up.0.upsample.conv.weight" not in expected
    assert "encoder.down.2.downsample.conv.weight" not in expected


def _numpy_state_dict(torch_model):
    return {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}


def test_predvdm_checkpoint_prefix_and_round_trip(converted):
    torch_model, params, _ = converted
    bare = _numpy_state_dict(torch_model)
    full = {f"first_stage_model.{k}": v for k, v in bare.items()}
    full.update({f"cond_stage_model.{k}": v for k, v in bare.items()})
    full["model.diffusion_model.out.2.weight"] = np.zeros((3, 224, 3, 3), np.float32)
    full["betas"] = np.zeros(1000, np.float32)
    from_full = ldm_vq.convert_vq_state_dict(full, SMALL)
    jax.tree.map(np.testing.assert_array_equal, from_full, params)

    back = ldm_vq.vq_params_to_state_dict(params)
    assert back.keys() == bare.keys()
    for key, value in bare.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    # Conv kernel layout: OIHW -> HWIO.
    np.testing.assert_array_equal(
        params["encoder"]["down_1"]["block_0"]["conv1"]["kernel"],
        np.transpose(bare["encoder.down.1.block.0.conv1.weight"], (2, 3, 1, 0)),
    )
    np.testing.assert_array_equal(
        params["decoder"]["mid"]["attn_1"]["norm"]["scale"], bare["decoder.mid.attn_1.norm.weight"]
    )


def test_mismatch_error_lists_every_offending_key(converted):
    torch_model, _, _ = converted
    sd = _numpy_state_dict(torch_model)
    del sd["decoder.up.1.upsample.conv.bias"]
    sd["encoder.down.0.block.0.conv1.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    sd["encoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as info:
        ldm_vq.convert_vq_state_dict(sd, SMALL)
    message = str(info.value)
    assert "missing (1): decoder.up.1.upsample.conv.bias" in message
    assert "unexpected (1): encoder.extra.weight" in message
    assert (
        "encoder.down.0.block.0.conv1.weight: expected (32, 32, 3, 3), got (32, 32, 1, 1)"
        in message
    )
    # A full VQ-f4 config against the small checkpoint: wrong shapes are reported, not a crash.
    with pytest.raises(ValueError, match="wrong shape"):
        ldm_vq.convert_vq_state_dict(_numpy_state_dict(torch_model), None)


def test_config_forms_and_unknown_field():
    ldm_style = {
        "embed_dim": 3,
        "n_embed": 64,
        "ckpt_path": "x",
        "lossconfig": {},
        "ddconfig": {k: v for k, v in SMALL.items() if k not in ("embed_dim", "n_embed")}
        | {"double_z": False},
    }
    assert ldm_vq.make_vq_model(ldm_style) == VQModel(**SMALL)
    with pytest.raises(ValueError, match="unknown VQ config field.*chmult"):
        ldm_vq.make_vq_model({"chmult": (1, 2)})


def test_convert_script_writes_loadable_safetensors(converted, tmp_path):
    _, params, ckpt = converted
    config_file = tmp_path / "small.py"
    config_file.write_text(
        "from predvdm_jax import config as config_lib\n"
        "def get_config():\n"
        "    config = config_lib.default_config()\n"
        f"    config.vq.update({SMALL!r})\n"
        "    return config_lib.finalize(config)\n"
    )
    out = tmp_path / "sub" / "vq.safetensors"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)

    def convert(out, *args):
        command = [sys.executable, os.path.join(REPO, "scripts", "convert_ldm_vq.py")]
        command += [f"--ckpt={ckpt}", f"--out={out}", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    result = convert(out, f"--config={config_file}")
    assert result.returncode == 0, result.stderr
    loaded = torch_checkpoint.load_params_safetensors(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert not [p for p in os.listdir(out.parent) if p.startswith(".tmp-")]

    # Without --config the script takes VQ-f4's shapes, which this small checkpoint lacks.
    default = convert(tmp_path / "default.safetensors")
    assert default.returncode == 1 and "Traceback" not in default.stderr, default.stderr
    assert "shape" in default.stderr.strip().splitlines()[-1]

    # An override the config does not allow is one error line naming the field.
    invalid = convert(
        tmp_path / "invalid.safetensors", f"--config={config_file}", "--config.vq.ch=48"
    )
    assert invalid.returncode == 1 and "Traceback" not in invalid.stderr, invalid.stderr
    assert "error: invalid config: vq.ch" in invalid.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "invalid.safetensors").exists()


def test_converted_and_unconverted_files_swapped_are_named(converted, tmp_path):
    """The converter given its own output says so; config.vq_params given a PyTorch
    checkpoint or state_dict says to convert it."""
    from predvdm_jax.interop import params as params_lib

    _, params, ckpt = converted
    flax_file = tmp_path / "vq.safetensors"
    ldm_vq.convert_vq_checkpoint(ckpt, flax_file, SMALL)
    with pytest.raises(ValueError, match="already holds converted Flax params") as err:
        ldm_vq.load_vq_checkpoint(flax_file, SMALL)
    assert "'decoder/conv_in/bias'" in str(err.value)
    # A PyTorch state_dict saved as safetensors still converts.
    torch_file = tmp_path / "torch.safetensors"
    torch_checkpoint.save_torch_state_dict(torch_file, ldm_vq.vq_params_to_state_dict(params))
    again = ldm_vq.load_vq_checkpoint(torch_file, SMALL)
    jax.tree.map(np.testing.assert_array_equal, again, params)

    for unconverted in (ckpt, torch_file):
        with pytest.raises(ValueError, match="convert it with scripts/convert_ldm_vq.py"):
            params_lib.load_vq_params(str(unconverted))
    jax.tree.map(np.testing.assert_array_equal, params_lib.load_vq_params(str(flax_file)), params)


def test_integer_weights_are_refused_by_the_converter(converted):
    """A checkpoint cast to an integer dtype would convert to ~all-zero weights."""
    model = converted[0]
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    state_dict["decoder.conv_out.bias"] = state_dict["decoder.conv_out.bias"].astype(np.int64)
    with pytest.raises(ValueError) as err:
        ldm_vq.convert_vq_state_dict(state_dict, SMALL)
    assert str(err.value).startswith(
        "VQ state_dict does not match the model: not floating point (1): "
        "decoder.conv_out.bias: int64. "
    )


def test_nan_weights_are_refused_by_the_converter_and_by_load_vq_params(converted, tmp_path):
    """A NaN encoder would read as a diverging optimizer, a NaN decoder train to a NaN bundle:
    the converter writes nothing, and loading names the file."""
    from predvdm_jax.interop import params as params_lib

    _, params, ckpt = converted
    state_dict = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    state_dict["decoder.conv_out.bias"][0] = float("nan")
    damaged, out = tmp_path / "nan.ckpt", tmp_path / "vq.safetensors"
    torch.save({"state_dict": state_dict}, damaged)
    with pytest.raises(ValueError) as err:
        ldm_vq.convert_vq_checkpoint(damaged, out, SMALL)
    assert str(err.value) == (
        f"the VQ weights in {damaged} hold NaN or Inf: decoder/conv_out/bias (1 of 3 values); "
        "the checkpoint is damaged or its run diverged: convert another one (nothing was written)"
    )
    assert not out.exists()

    nan_params = jax.tree.map(np.array, params)
    nan_params["encoder"]["conv_in"]["kernel"][...] = np.nan
    torch_checkpoint.save_params_safetensors(out, nan_params)
    with pytest.raises(ValueError) as err:
        params_lib.load_vq_params(str(out), setting="--vq_params")
    assert str(err.value).startswith(
        f"VQ params {str(out)!r} (--vq_params) hold NaN or Inf: encoder/conv_in/kernel ("
    )
    assert "; the file is damaged or its training diverged: point --vq_params at" in str(err.value)


class _Opaque:
    """A pickled Python object that weights_only loading refuses."""


def test_loader_errors_and_safe_default(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        torch_checkpoint.load_torch_state_dict(tmp_path / "nope.ckpt")
    path = tmp_path / "opaque.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {_Opaque: 1}}, path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        torch_checkpoint.load_torch_state_dict(path)
    sd = torch_checkpoint.load_torch_state_dict(path, allow_pickle=True)
    np.testing.assert_array_equal(sd["w"], np.ones(2, np.float32))
    bare = tmp_path / "bare.pt"
    torch.save(
        {"a.weight": torch.arange(6.0).reshape(2, 3).to(torch.bfloat16), "note": "text"}, bare
    )
    sd = torch_checkpoint.load_torch_state_dict(bare)
    assert list(sd) == ["a.weight"] and sd["a.weight"].dtype == np.float32


def test_layout_helpers_match_torch_ops():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 4)).astype(np.float32)  # (N, W, C)
    w1 = rng.standard_normal((5, 4, 3)).astype(np.float32)  # Conv1d (O, I, K)
    ref = F.conv1d(
        torch.from_numpy(x.transpose(0, 2, 1).copy()), torch.from_numpy(w1), padding=1
    ).numpy()
    out = jax.lax.conv_general_dilated(
        x,
        torch_checkpoint.conv_kernel_to_flax(w1),
        (1,),
        [(1, 1)],
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    np.testing.assert_allclose(np.asarray(out).transpose(0, 2, 1), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        torch_checkpoint.conv_kernel_to_torch(torch_checkpoint.conv_kernel_to_flax(w1)), w1
    )

    lin = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        x @ torch_checkpoint.linear_to_dense(lin),
        F.linear(torch.from_numpy(x), torch.from_numpy(lin)).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    ref1x1 = F.conv1d(
        torch.from_numpy(x.transpose(0, 2, 1).copy()), torch.from_numpy(w1[:, :, :1])
    ).numpy()
    np.testing.assert_allclose(
        x @ torch_checkpoint.conv1x1_to_dense(w1[:, :, :1]),
        ref1x1.transpose(0, 2, 1),
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="conv1x1_to_dense"):
        torch_checkpoint.conv1x1_to_dense(w1)

    sd = {"first_stage_model.a": 1, "cond_stage_model.a": 2, "loss.b": 3}
    assert torch_checkpoint.select_prefix(sd, "first_stage_model.") == {"a": 1}
    assert torch_checkpoint.drop_prefixes(sd, ("loss.", "cond_stage_model.")) == {
        "first_stage_model.a": 1
    }


def test_truncated_or_garbage_safetensors_raise_value_error(tmp_path):
    full = tmp_path / "full.safetensors"
    torch_checkpoint.save_params_safetensors(full, {"a": {"kernel": np.ones((64, 64), np.float32)}})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(full.read_bytes()[:100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file" * 8)
    for path in (truncated, garbage):
        for read in (
            torch_checkpoint.load_params_safetensors,
            torch_checkpoint.load_torch_state_dict,
        ):
            with pytest.raises(ValueError, match="not a complete safetensors file") as raised:
                read(path)
            assert str(path) in str(raised.value)


def test_a_damaged_checkpoint_is_called_damaged_not_steered_to_allow_pickle(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, good)
    data = good.read_bytes()
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.ones(64, 64)}, legacy, _use_new_zipfile_serialization=False)
    damaged = {
        "truncated.ckpt": data[: len(data) // 2],
        "short.ckpt": data[:100],
        "garbage.ckpt": b"not a checkpoint" * 100,
        "empty.ckpt": b"",
        "legacy_truncated.ckpt": legacy.read_bytes()[:200],
    }
    for name, content in damaged.items():
        path = tmp_path / name
        path.write_bytes(content)
        for allow_pickle in (False, True):
            with pytest.raises(ValueError) as err:
                torch_checkpoint.load_torch_state_dict(path, allow_pickle=allow_pickle)
            message = str(err.value)
            assert "the file is damaged or not a PyTorch checkpoint" in message, (name, message)
            assert "allow_pickle" not in message and "\n" not in message, message
    # A folder is named as one, not "not found".
    with pytest.raises(ValueError, match="is a folder"):
        torch_checkpoint.load_torch_state_dict(tmp_path)
    with pytest.raises(ValueError, match="is a folder"):
        torch_checkpoint.load_params_safetensors(tmp_path)


def test_vq_params_that_name_a_folder_say_so(tmp_path):
    from predvdm_jax.interop import params as params_lib

    with pytest.raises(ValueError, match="is a folder"):
        params_lib.load_vq_params(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\(config\.vq_params\) not found"):
        params_lib.load_vq_params(str(tmp_path / "nope.safetensors"))
    # A flag that gave the path is named instead of the config field.
    with pytest.raises(FileNotFoundError, match=r"\(--vq_params\) not found"):
        params_lib.load_vq_params(str(tmp_path / "nope.safetensors"), None, "--vq_params")
    with pytest.raises(FileNotFoundError, match=r"^--vq_params is empty"):
        params_lib.load_vq_params("", None, "--vq_params")


def test_convert_script_refuses_bad_outputs_before_reading_the_checkpoint(tmp_path):
    """--out a folder, a file in a bundle, or an existing file of another kind: one error line,
    nothing written (the checkpoint is never read, so it need not exist)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    (bundle / "denoiser.safetensors").write_bytes(b"denoiser")
    text = tmp_path / "notes.txt"
    text.write_text("keep me")
    denoiser = tmp_path / "denoiser.safetensors"
    torch_checkpoint.save_params_safetensors(
        denoiser, {"a": np.zeros(2, np.float32)}, metadata={"format": "flax/predvdm_denoiser"}
    )
    before = denoiser.read_bytes()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    cases = {
        str(tmp_path): "is a folder",
        str(bundle / "denoiser.safetensors"): "inference bundle",
        str(bundle / "vq.safetensors"): "inference bundle",
        str(text): "refusing to overwrite",
        str(text / "vq.safetensors"): "is a file, not a folder",
        str(denoiser): "refusing to overwrite",
    }
    for out, message in cases.items():
        command = [sys.executable, os.path.join(REPO, "scripts", "convert_ldm_vq.py")]
        command += [f"--ckpt={tmp_path / 'missing.ckpt'}", f"--out={out}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[-1].startswith("error: ") and message in lines[-1], (out, lines[-1])
    assert (bundle / "denoiser.safetensors").read_bytes() == b"denoiser"
    assert not (bundle / "vq.safetensors").exists()
    assert text.read_text() == "keep me" and denoiser.read_bytes() == before
    # An earlier VQ output may be replaced: the check passes and the missing --ckpt is reported.
    vq = tmp_path / "vq.safetensors"
    torch_checkpoint.save_params_safetensors(
        vq, {"a": np.zeros(2, np.float32)}, metadata={"format": "flax/vq"}
    )
    torch_checkpoint.check_output_file(vq, {"format": "flax/vq"}, "VQ params")


def test_a_trained_vq_file_gives_its_architecture_and_frames_to_a_default_config(tmp_path):
    """evaluate.py --vq_params: train_vq.py's file records its VQ and frame size, which replace
    the defaults (LDM's vq-f4) unless given on the command line; a converted file records
    none."""
    from predvdm_jax import config as config_lib
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop import params as params_lib
    from predvdm_jax.training.vq_trainer import save_vq_params
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    trained = tiny_config()
    trained.data.channels = 3
    vq = random_params_from_init(LatentDiffusion.from_config(trained).init_vq, 1)
    path = str(tmp_path / "vq_params.safetensors")
    save_vq_params(path, vq, trained)
    defaults = config_lib.default_config()
    recorded = params_lib.with_recorded_vq(defaults, path, {})
    assert recorded.vq.to_dict() == trained.vq.to_dict() != defaults.vq.to_dict()
    assert (recorded.data.image_size, recorded.data.channels) == (trained.data.image_size, 3)
    assert recorded.data.cond_frames == defaults.data.cond_frames  # not the VQ's
    jax.tree.map(np.testing.assert_array_equal, params_lib.load_vq_params(path, recorded), vq)
    given = params_lib.with_recorded_vq(defaults, path, {"vq.n_embed": 32, "data.channels": 1})
    assert (given.vq.n_embed, given.data.channels) == (defaults.vq.n_embed, defaults.data.channels)
    assert given.vq.ch == trained.vq.ch
    converted = str(tmp_path / "converted.safetensors")
    torch_checkpoint.save_params_safetensors(converted, vq, metadata=dict(ldm_vq.VQ_METADATA_KIND))
    assert params_lib.with_recorded_vq(defaults, converted, {}).to_dict() == defaults.to_dict()

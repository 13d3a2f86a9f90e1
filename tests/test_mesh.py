"""Device meshes over groups joined by a slow network (``mesh.slices``), on stand-in devices:
the grouping logic needs only each device's id, platform and slice or process index."""

import dataclasses

import numpy as np
import pytest

from predvdm_jax import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class _Device:
    id: int
    process_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"


@dataclasses.dataclass(frozen=True)
class _SliceDevice(_Device):
    slice_index: int = 0


def _groups(mesh, attribute):
    return np.vectorize(lambda d: getattr(d, attribute))(mesh.devices)


@pytest.mark.parametrize(
    "devices, attribute",
    [
        # two TPU slices whose device ids alternate, all in one process
        ([_SliceDevice(i, 0, slice_index=i % 2) for i in range(8)], "slice_index"),
        # two processes (hosts) whose device ids alternate; CPU and GPU devices carry
        # slice_index 0
        ([_SliceDevice(i, i % 2, slice_index=0) for i in range(8)], "process_index"),
        ([_Device(i, i % 2) for i in range(8)], "process_index"),
    ],
)
def test_fsdp_rows_stay_inside_one_slice(devices, attribute):
    plain = _groups(mesh_lib.make_mesh(-1, 2, devices), attribute)
    assert (plain[:, 0] != plain[:, 1]).all()  # without slices, every fsdp row crosses them
    mesh = mesh_lib.make_mesh(-1, 2, devices, slices=2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    np.testing.assert_array_equal(_groups(mesh, attribute), [[0, 0], [0, 0], [1, 1], [1, 1]])
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_slices_that_do_not_fit_the_devices():
    devices = [_SliceDevice(i, 0, slice_index=i // 4) for i in range(8)]
    with pytest.raises(ValueError, match="slices=4 but the devices are in 2 TPU slices"):
        mesh_lib.make_mesh(-1, 1, devices, slices=4)
    with pytest.raises(ValueError, match="mesh.data=1 is not a multiple of mesh.slices=2"):
        mesh_lib.make_mesh(1, 8, devices, slices=2)
    one_slice = [_SliceDevice(i, 0, slice_index=0) for i in range(8)]
    with pytest.raises(ValueError) as error:
        mesh_lib.make_mesh(-1, 1, one_slice, slices=2)
    assert str(error.value) == (
        "mesh.slices=2 but the devices are in 1 process of one slice; set mesh.slices=1 (with "
        "one TPU slice or none, each process counts as a slice: run 2 processes for "
        "mesh.slices=2)"
    )


def test_mesh_errors_name_the_field_and_the_fix():
    devices = [_Device(i, 0) for i in range(8)]
    with pytest.raises(ValueError, match=r"mesh.fsdp=3 does not divide the 8 devices; pick a"):
        mesh_lib.make_mesh(-1, 3, devices)
    with pytest.raises(ValueError, match=r"mesh.data \* mesh.fsdp = 2\*2 = 4 but there are 8"):
        mesh_lib.make_mesh(2, 2, devices)

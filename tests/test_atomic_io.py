"""Files written whole survive a crash: the data is on the disk before the rename, the rename
before the call returns."""

import errno
import os

import numpy as np
import pytest

from predvdm_jax import atomic_io
from predvdm_jax.data import hdf5


def _record_syncs_and_renames(monkeypatch) -> list[tuple]:
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recording_replace(source, target):
        events.append(("replace", os.path.abspath(source), os.path.abspath(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return events


@pytest.mark.parametrize("writer", ["write_text", "shard"])
def test_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, writer):
    target = str(tmp_path / ("a.txt" if writer == "write_text" else "shard_0000.hdf5"))
    events = _record_syncs_and_renames(monkeypatch)
    if writer == "write_text":
        atomic_io.write_text(target, "x")
    else:
        hdf5.write_shard(target, [np.zeros((2, 4, 4), np.uint8)])
    (renamed,) = [event for event in events if event[0] == "replace"]
    temporary = renamed[1]
    assert renamed[2] == target
    assert events == [("fsync", temporary), renamed, ("fsync", str(tmp_path))]
    assert os.listdir(tmp_path) == [os.path.basename(target)]


def test_a_shard_another_process_is_writing_is_refused_and_left_alone(tmp_path):
    import fcntl

    target = str(tmp_path / "shard_0000.hdf5")
    with open(target + ".tmp", "wb") as other_writer:
        other_writer.write(b"partial")
        other_writer.flush()
        fcntl.flock(other_writer.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as HDF5 locks it
        with pytest.raises(hdf5.DatasetError, match=r"being written by another process.*one"):
            hdf5.write_shard(target, [np.zeros((2, 4, 4), np.uint8)])
    with open(target + ".tmp", "rb") as f:
        assert f.read() == b"partial"
    assert not os.path.exists(target)


def test_a_shard_left_half_written_by_a_killed_writer_is_redone(tmp_path):
    target = str(tmp_path / "shard_0000.hdf5")
    with open(target + ".tmp", "wb") as left:
        left.write(b"partial")
    hdf5.write_shard(target, [np.full((2, 4, 4), 7, np.uint8)])
    assert os.listdir(tmp_path) == ["shard_0000.hdf5"]
    np.testing.assert_array_equal(hdf5.VideoShards(str(tmp_path)).read_clip(0, 0, 2), 7)


def test_a_folder_its_filesystem_cannot_sync_still_gets_the_file(tmp_path, monkeypatch):
    """Some network and FUSE mounts refuse ``fsync`` of a folder (EINVAL); a file's data that
    cannot be synced is an error."""
    fsync = os.fsync

    def folder_refusing_fsync(descriptor):
        if os.path.isdir(f"/proc/self/fd/{descriptor}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", folder_refusing_fsync)
    atomic_io.write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"

    def failing_fsync(descriptor):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_io.write_text(tmp_path / "a.txt", "y")
    assert os.listdir(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "x"

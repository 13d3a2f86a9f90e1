"""OUT/progress: what a resumed evaluation reads back, and what it refuses."""

import os

import numpy as np
import pytest

from predvdm_jax.evaluation import progress as progress_lib
from predvdm_jax.evaluation import protocol as protocol_lib

FINGERPRINT = {"source": "bundle", "batch_size": 4, "protocol": {"num_samples": 2}}


def _record(batch):
    return {
        "values": {"per_frame": {"model": {"ssim": np.full((4, 2, 3), batch, np.float32)}}},
        "videos": {},
        "timings": {"seconds": {"reconstruct": 0.25 * batch}, "label": "a/b, c=1"},
    }


def test_records_read_back_as_written_up_to_the_first_missing_batch(tmp_path):
    progress = progress_lib.Progress(str(tmp_path), FINGERPRINT)
    assert progress.load() == protocol_lib.Resume()
    for batch in (0, 1, 3):  # batch 2 never finished: 3 is a later run's, dropped
        progress.add(batch, _record(batch))
    progress.add_sample(2, "ddim 100/eta=1", 4, _record(7))  # batch 2's finished samples
    progress.add_sample(2, "model", 0, _record(8))
    progress.add_sample(0, "model", 0, _record(9))  # left beside a finished batch: dropped
    resume = progress_lib.Progress(str(tmp_path), dict(FINGERPRINT)).load()
    assert len(resume.batches) == 2
    for batch, record in enumerate(resume.batches):
        ssim = record["values"]["per_frame"]["model"]["ssim"]
        assert ssim.dtype == np.float32 and ssim.shape == (4, 2, 3) and (ssim == batch).all()
        assert record["videos"] == {}
        assert record["timings"] == {"seconds": {"reconstruct": 0.25 * batch}, "label": "a/b, c=1"}
    assert sorted(resume.samples) == [("ddim 100/eta=1", 4), ("model", 0)]
    assert (resume.samples[("model", 0)]["values"]["per_frame"]["model"]["ssim"] == 8).all()
    names = sorted(os.listdir(tmp_path / "progress"))
    assert names[:2] == ["batch_00000.npz", "batch_00001.npz"] and names[-1] == "run.json"
    assert len(names) == 5 and all(".sample_" in name for name in names[2:4])

    progress.add(2, _record(2))  # batch 2 done: its sample files go
    assert len(os.listdir(tmp_path / "progress")) == 4
    assert progress.load().samples == {}


def test_another_evaluations_progress_is_refused_naming_each_field_and_both_values(tmp_path):
    saved = {**FINGERPRINT, "params": "ab" * 32, "samplings": {"model": {"steps": 100}}}
    progress_lib.Progress(str(tmp_path), saved).load()
    other = {**saved, "params": "cd" * 32, "samplings": {"model": {"steps": 20}}}
    with pytest.raises(ValueError) as error:
        progress_lib.Progress(str(tmp_path), other).load()
    assert str(error.value) == (
        f"{tmp_path / 'progress'} holds the partial results of another evaluation, which differs "
        'in params: "ababababababababa...babababababababab" (saved) vs '
        '"cdcdcdcdcdcdcdcdc...dcdcdcdcdcdcdcdcd" (now); '
        "samplings.model.steps: 100 (saved) vs 20 (now): rerun the command that made it to "
        f"resume it, or delete {tmp_path / 'progress'} to start over"
    )

    other = {**saved, "batch_size": 8, "keep_videos": 2, "protocol": {"num_samples": 1}}
    with pytest.raises(ValueError) as error:
        progress_lib.Progress(str(tmp_path), {**other, "frames": [10, 30]}).load()
    assert (
        "differs in batch_size: 4 (saved) vs 8 (now); frames: absent (saved) vs [10, 30] (now); "
        "keep_videos: absent (saved) vs 2 (now); and 1 more: rerun" in str(error.value)
    )


def test_a_folder_not_ours_and_a_damaged_batch_file_are_one_clear_error(tmp_path):
    mine = tmp_path / "mine"
    (mine / "progress").mkdir(parents=True)
    (mine / "progress" / "notes.txt").write_text("the user's")
    with pytest.raises(ValueError, match="is not an interrupted evaluation's progress"):
        progress_lib.Progress(str(mine), FINGERPRINT).load()
    assert os.listdir(mine / "progress") == ["notes.txt"]

    progress = progress_lib.Progress(str(tmp_path), FINGERPRINT)
    progress.load()
    progress.add(0, _record(0))
    damaged = tmp_path / "progress" / "batch_00000.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"batch_00000.npz cannot be read .*; delete it"):
        progress_lib.Progress(str(tmp_path), FINGERPRINT).load()


def test_clear_removes_only_what_progress_wrote(tmp_path):
    progress = progress_lib.Progress(str(tmp_path), FINGERPRINT)
    progress.load()
    progress.add(0, _record(0))
    progress.clear()
    assert not os.path.exists(tmp_path / "progress")
    progress.load()
    (tmp_path / "progress" / "notes.txt").write_text("the user's")
    progress.clear()
    assert os.listdir(tmp_path / "progress") == ["notes.txt"]

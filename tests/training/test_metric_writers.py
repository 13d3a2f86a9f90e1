"""Images reach TensorBoard and PNG files unchanged; bad images are one clear error."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from predvdm_jax.training.metric_writers import create_default_writer


def _decode(png: bytes) -> np.ndarray:

    return np.asarray(Image.open(io.BytesIO(png)))


def test_images_round_trip_through_tensorboard_and_png_files(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (9, 13, 1), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    writer = create_default_writer(str(tmp_path))
    writer.write_images(30, {"preview/gray": gray, "preview/rgb": rgb})
    writer.write_scalars(30, {"preview/psnr": 12.5})
    writer.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["preview/gray", "preview/rgb"]
    (logged,) = events.Images("preview/gray")
    assert logged.step == 30 and (logged.height, logged.width) == (9, 13)
    np.testing.assert_array_equal(_decode(logged.encoded_image_string), gray[..., 0])
    np.testing.assert_array_equal(
        _decode(events.Images("preview/rgb")[0].encoded_image_string), rgb
    )

    on_disk = np.asarray(Image.open(tmp_path / "images" / "preview_rgb_00000030.png"))
    np.testing.assert_array_equal(on_disk, rgb)
    written = sorted(p.name for p in (tmp_path / "images").iterdir())  # no temporary left
    assert written == ["preview_gray_00000030.png", "preview_rgb_00000030.png"]


def test_a_resume_drops_what_the_dead_run_logged_after_its_checkpoint(tmp_path):
    """A run died at step 30 after its checkpoint of step 20: the resumed writer drops the
    later metrics lines and preview images, and TensorBoard (its own EventAccumulator)
    purges the later scalars on the session start the writer logs."""
    image = np.zeros((4, 4), np.uint8)
    dead = create_default_writer(str(tmp_path))
    for step in (10, 20, 30):
        dead.write_scalars(step, {"loss": float(step)})
        dead.write_images(step, {"preview/rollout": image})
    dead.close()
    (tmp_path / "images" / "mine.png").write_bytes(b"not the writer's")
    resumed = create_default_writer(str(tmp_path), resume_step=20)
    resumed.write_scalars(30, {"loss": 3.0})
    resumed.close()

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, "loss": 10.0},
        {"step": 20, "loss": 20.0},
        {"step": 30, "loss": 3.0},
    ]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "mine.png",
        "preview_rollout_00000010.png",
        "preview_rollout_00000020.png",
    ]
    events = EventAccumulator(str(tmp_path / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (10, 10.0),
        (20, 20.0),
        (30, 3.0),
    ]


def test_a_resume_drops_a_last_line_cut_short_and_names_a_damaged_one(tmp_path):
    """A run killed (or out of disk) mid-line leaves half a record: dropped on resume; a bad
    line elsewhere is no metrics file of ours, named with the fix."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    create_default_writer(str(tmp_path), resume_step=2).close()
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n'
    path.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": 2.0}\n')
    with pytest.raises(ValueError, match=rf"^{path}: line 2 is not a metrics record \('not json"):
        create_default_writer(str(tmp_path), resume_step=2)


def test_a_float_image_is_a_clear_error(tmp_path):
    writer = create_default_writer(str(tmp_path))
    with pytest.raises(ValueError, match=r"image 'x' must be uint8 .* got float32 \(4, 4, 2\)"):
        writer.write_images(1, {"x": np.zeros((4, 4, 2), np.float32)})
    writer.close()


def test_progress_reports_steps_per_second_only_at_its_interval(monkeypatch):
    from predvdm_jax.training import metric_writers

    clock = iter([100.0, 102.0, 103.0])  # start; step 4 at +2 s; step 6 at +1 s
    monkeypatch.setattr(metric_writers.time, "perf_counter", lambda: next(clock))
    progress = metric_writers.ProgressReporter(10, every_steps=2, start_step=2)
    assert progress(3) is None
    assert progress(4) == pytest.approx(1.0)  # 2 steps in 2 s
    assert progress(5) is None
    assert progress(6) == pytest.approx(2.0)  # 2 steps in 1 s
    progress.close()


def test_progress_times_from_a_restart_and_shows_no_bar_when_told(monkeypatch, capsys):
    from predvdm_jax.training import metric_writers

    clock = iter([100.0, 105.0, 106.0, 111.0, 112.0])
    monkeypatch.setattr(metric_writers.time, "perf_counter", lambda: next(clock))
    progress = metric_writers.ProgressReporter(10, every_steps=2, start_step=0, show_bar=False)
    progress.restart(2)  # at 105 s: steps 1 and 2 are not timed
    assert progress(2) is None  # no step timed since the restart
    assert progress(4) == pytest.approx(2.0)  # steps 3-4 in 1 s (106)
    progress.restart(5)  # at 111 s, after an evaluation at step 5
    assert progress(6) == pytest.approx(1.0)  # step 6 in 1 s (112)
    progress.close()
    assert capsys.readouterr().err == ""

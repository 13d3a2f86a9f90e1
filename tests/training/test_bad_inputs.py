"""Bad inputs to the trainers are one clear error before the first step, and nothing written is
lost: frames of another size or channel count than the config's, a damaged checkpoint, a
workdir of another trainer or optimizer, a workdir that is a file, an export over a file it
did not write."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predvdm_jax import config as config_lib, mesh as mesh_lib
from predvdm_jax.data.hdf5 import DatasetError, write_split
from predvdm_jax.training import checkpoint, diffusion_trainer, preview, vq_trainer

from tiny_config import tiny_config

from .tiny_setup import REPO_ROOT


def _split(path, shape, videos=3, frames=6):
    rng = np.random.default_rng(0)
    write_split(str(path), [rng.integers(0, 256, (frames,) + shape, np.uint8)] * videos)
    return str(path)


def _config(tmp_path, **data):
    c = tiny_config(2, 2, pred_frames=2)
    c.unlock()
    c.data.update(dict(batch_size=2, num_threads=1, prefetch=1, **data))
    c.train.update(dict(eval_clips=2, preview_clips=2))
    c.vq_train.update(dict(batch_size=2, eval_clips=2, eval_frames=2))
    c.vq_params = str(tmp_path / "vq.safetensors")
    c.lock()
    return c


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    return {
        "gray16": _split(root / "gray16", (16, 16)),
        "rgb16": _split(root / "rgb16", (16, 16, 3)),
        "gray32": _split(root / "gray32", (32, 32)),
    }


def test_frames_of_another_size_or_channel_count_are_refused_before_training(tmp_path, splits):
    rgb = _config(tmp_path, train_dir=splits["rgb16"], test_dir=splits["gray16"])
    with pytest.raises(DatasetError) as err:
        diffusion_trainer.train_iterator(rgb)
    # Each fix names only what differs: prepare_data.py --image_size cannot change channels.
    assert str(err.value) == (
        f"data.train_dir: {splits['rgb16']} holds 16x16 frames with 3 channel(s), but the model "
        f"takes data.image_size=16 with data.channels=1; use a split of 1-channel (gray) frames "
        f"(scripts/prepare_data.py has no option to change a dataset's channel count), or train "
        f"a model for these frames with --config.data.channels=3."
    )
    big = _config(tmp_path, train_dir=splits["gray32"], test_dir=splits["gray16"])
    with pytest.raises(DatasetError) as err:
        diffusion_trainer.train_iterator(big)
    assert str(err.value) == (
        f"data.train_dir: {splits['gray32']} holds 32x32 frames with 1 channel(s), but the model "
        f"takes data.image_size=16 with data.channels=1; write the split with 16x16 frames "
        f"(scripts/prepare_data.py --image_size=16; frames of your own: resize them before "
        f"hdf5.write_split), or train a model for these frames with --config.data.image_size=32."
    )
    gray_as_rgb = _config(tmp_path, train_dir=splits["gray32"], test_dir=splits["gray16"])
    gray_as_rgb.data.unlock()
    gray_as_rgb.data.channels = 3
    with pytest.raises(DatasetError) as err:
        diffusion_trainer.train_iterator(gray_as_rgb)
    assert str(err.value).endswith(
        "data.channels=3; use a split of 16x16 3-channel (RGB) frames (scripts/prepare_data.py "
        "--image_size=16 sets the size; the channel count is the dataset's), or train a model "
        "for these frames with --config.data.image_size=32 --config.data.channels=1."
    )

    # The validation clips and the previews' test split.
    mismatched_test = _config(tmp_path, train_dir=splits["gray16"], test_dir=splits["rgb16"])
    diffusion_trainer.train_iterator(mismatched_test).close()  # the training split fits
    fix = "point --config.data.test_dir at a split of the training data's frame size and channels"
    with pytest.raises(DatasetError, match=f"^data.test_dir: {splits['rgb16']} holds .*{fix}"):
        diffusion_trainer.load_validation_batches(mismatched_test)
    with pytest.raises(DatasetError, match=f"^data.test_dir: .*{fix}"):
        preview.load_preview_clips(mismatched_test, mesh_lib.make_mesh())

    # A split that is not there is named by its field too.
    missing = _config(tmp_path, train_dir=str(tmp_path / "nowhere"), test_dir=splits["gray16"])
    with pytest.raises(DatasetError, match=f"^data.train_dir: Dataset folder '{tmp_path}/nowhere'"):
        diffusion_trainer.train_iterator(missing)

    # The VQ trainer: both splits, before a model is built (the workdir stays empty).
    with pytest.raises(DatasetError, match="^data.train_dir: .* 3 channel"):
        vq_trainer.train_vq(rgb, str(tmp_path / "vq_run"))
    with pytest.raises(DatasetError, match="^data.test_dir: .*32x32"):
        vq_trainer.load_eval_frames(splits["gray32"], 2, 2, 0, rgb)
    assert not (tmp_path / "vq_run").exists()


def test_validation_previews_and_vq_evaluation_read_the_val_split_when_set(tmp_path, splits):
    """With data.val_dir, validation, previews and the VQ trainer's evaluation read it, not the
    test split: a test split they could not read is never opened, a val split of other frames
    is named by its own field."""
    held_out = _config(tmp_path, train_dir=splits["gray16"], test_dir=splits["rgb16"])
    held_out = config_lib.with_overrides(held_out, {"data.val_dir": splits["gray16"]})
    batches = diffusion_trainer.load_validation_batches(held_out)
    assert batches[0]["video"].shape == (2, 4, 16, 16, 1)
    assert preview.load_preview_clips(held_out, mesh_lib.make_mesh()).shape[-1] == 1
    mismatched_val = config_lib.with_overrides(
        held_out,
        {
            "data.val_dir": splits["rgb16"],
            "data.test_dir": splits["gray16"],
            "vq_train.disc_weight": 0.0,  # 16x16 frames leave the default PatchGAN no output
        },
    )
    for read in (
        diffusion_trainer.load_validation_batches,
        lambda c: preview.load_preview_clips(c, mesh_lib.make_mesh()),
        lambda c: vq_trainer.train_vq(c, str(tmp_path / "vq_run")),
    ):
        with pytest.raises(DatasetError, match=f"^data.val_dir: {splits['rgb16']} holds 16x16"):
            read(mismatched_val)
    assert not (tmp_path / "vq_run").exists()


def _save(workdir, step, state, config):
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, checkpoint.CHECKPOINT_DIR), async_save=False
    )
    checkpointer.save(step, state, data_state={}, config=config)
    checkpointer.close()


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_a_damaged_checkpoint_is_one_line_naming_the_step_and_the_fix(tmp_path):
    # Arrays big enough for files of their own (OCDBT inlines small ones in its manifest).
    rng = np.random.default_rng(0)
    state = {name: jnp.asarray(rng.standard_normal((64, 256)), jnp.float32) for name in "ab"}
    config = tiny_config()
    for step in (1, 2):
        _save(tmp_path, step, state, config)
    directory = tmp_path / checkpoint.CHECKPOINT_DIR
    data_files = list((directory / "2" / "state").glob("ocdbt.process_0/d/*"))
    assert data_files
    for path in data_files:
        path.unlink()
    checkpointer = checkpoint.Checkpointer(str(directory), async_save=False)
    try:
        with pytest.raises(checkpoint.CheckpointReadError) as err:
            checkpointer.restore(2, _abstract(state))
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"could not read checkpoint step 2 in {directory} (")
        assert f"delete {directory / '2'} to resume training from the step before it" in message
        assert "pass --step=<an earlier step>" in message and "(1, 2 on disk)" in message
        restored, _ = checkpointer.restore(1, _abstract(state))  # the earlier step still reads
        np.testing.assert_array_equal(restored["a"], state["a"])

        (directory / "2" / "config" / "metadata").write_text("garbage")
        with pytest.raises(checkpoint.CheckpointReadError) as err:
            checkpointer.restore_config(2)
        assert str(err.value).startswith(
            f"could not read checkpoint step 2 in {directory} ({directory / '2' / 'config'}: "
            f"Expecting value: line 1 column 1 (char 0)); its files are damaged"
        )
        with pytest.raises(FileNotFoundError, match=r"no checkpoint step 7 .*steps: 1, 2\)"):
            checkpointer.restore_config(7)
    finally:
        checkpointer.close()
    with pytest.raises(checkpoint.CheckpointReadError, match="could not read checkpoint step 2"):
        checkpoint.check_saved_config(str(tmp_path), config)


def test_orbax_teardown_reports_of_a_failed_read_are_dropped(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    monkeypatch.setattr(checkpoint, "_QUIET", False)
    checkpoint._quiet_orbax_teardown()

    class Unraisable:
        def __init__(self, exc_value, obj=None):
            self.exc_value, self.object = exc_value, obj

    sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
    sys.unraisablehook(Unraisable(Exception("Encountered error while reading array index: ()")))
    other = Unraisable(RuntimeError("something else"))
    sys.unraisablehook(other)
    assert reported == [other]


def test_a_state_of_another_structure_is_one_line(tmp_path):
    _save(tmp_path, 3, {"params": {"w": jnp.zeros(2)}, "opt": [jnp.zeros(2)] * 3}, None)
    checkpointer = checkpoint.Checkpointer(
        str(tmp_path / checkpoint.CHECKPOINT_DIR), async_save=False
    )
    try:
        other = {"params": {"w": jnp.zeros(2)}, "opt": [jnp.zeros(2)] * 2}
        with pytest.raises(ValueError) as err:
            checkpointer.restore(3, _abstract(other))
    finally:
        checkpointer.close()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"checkpoint step 3 in {tmp_path / checkpoint.CHECKPOINT_DIR} holds a train state of "
        f"another structure than this run's (first at opt)"
    )
    assert message.endswith(
        "Resume with the run's original config, or pass a new --workdir to start over."
    )


def test_gradient_clipping_switched_on_resume_is_named(tmp_path, caplog):
    config = tiny_config()
    _save(tmp_path, 2, {"w": jnp.zeros(2)}, config)
    changed = config.copy_and_resolve_references()
    changed.optimizer.grad_clip = 0.5  # another threshold: the same optimizer state
    checkpoint.check_saved_config(str(tmp_path), changed)
    # allowed, and said in the log: the resumed run is not the one its checkpoint started
    assert (
        f"resuming {tmp_path} from step 2 with settings changed since it was saved: "
        f"optimizer.grad_clip {config.optimizer.grad_clip!r} then, 0.5 now"
    ) in caplog.text
    changed.optimizer.grad_clip = 0.0
    with pytest.raises(config_lib.ConfigError) as err:
        checkpoint.check_saved_config(str(tmp_path), changed)
    assert "gradient clipping (optimizer.grad_clip > 0) 'on' in the checkpoint, 'off' now" in str(
        err.value
    )


def test_a_workdir_of_the_other_trainer_is_named(tmp_path):
    config = tiny_config()
    vq_state = {
        "params": {name: {"w": jnp.zeros(2)} for name in ("encoder", "decoder", "quantize")}
    }
    _save(tmp_path / "vq", 2, vq_state, config)
    _save(tmp_path / "dn", 2, {"params": {"diffusion_model": {"w": jnp.zeros(2)}}}, config)
    vq_run, dn_run = str(tmp_path / "vq"), str(tmp_path / "dn")
    with pytest.raises(ValueError) as err:
        checkpoint.load_train_state(vq_run)
    assert str(err.value).startswith(
        f"{vq_run} is the workdir of a VQ run (scripts/train_vq.py): its checkpoint (step 2) "
        f"holds a VQ, not a denoiser; pass the workdir of a scripts/train.py run, or a --bundle"
    )
    with pytest.raises(ValueError, match="pass a new --workdir to train a denoiser run"):
        checkpoint.check_saved_config(vq_run, config)
    with pytest.raises(ValueError, match="is the workdir of a denoiser run .*train a VQ run"):
        checkpoint.check_saved_config(
            dn_run, config, checkpoint.VQ_FIELDS, vq_trainer.DERIVED_FIELDS, trainer="vq"
        )


def test_a_workdir_that_is_a_file_is_refused_up_front(tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    config = tiny_config()
    with pytest.raises(ValueError, match=f"^--workdir {afile} is not a folder; pass a new"):
        diffusion_trainer.train(config, str(afile))
    with pytest.raises(ValueError, match=f"is not a folder \\({afile} is a file\\)"):
        vq_trainer.train_vq(config, str(afile / "run"))
    assert afile.read_text() == "keep me"


def test_a_bundle_or_a_dataset_is_refused_as_workdir_and_left_alone(tmp_path):
    """Both trainers used to train into an exported bundle, or beside a split's shards."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("config.json", "denoiser.safetensors", "vq.safetensors"):
        (bundle / name).write_text(name)
    write_split(str(tmp_path / "data" / "train"), [np.zeros((3, 4, 4), np.uint8)])
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    config = tiny_config()
    refusals = [
        (
            diffusion_trainer.train,
            bundle,
            "is an inference bundle; pass a new folder for the run (to start from the bundle's "
            f"weights: --config.train.init_from={bundle}).",
        ),
        (
            vq_trainer.train_vq,
            bundle,
            "is an inference bundle; pass a new folder for the run (to start from the bundle's "
            f"weights: --config.vq_train.init_from={bundle}/vq.safetensors).",
        ),
        (
            diffusion_trainer.train,
            bundle / "run",
            f"is inside the bundle {bundle}; pass a new folder for the run.",
        ),
        (
            vq_trainer.train_vq,
            tmp_path / "data" / "train",
            "holds a dataset's shards (it is a split folder); pass a new folder for the run.",
        ),
        (
            diffusion_trainer.train,
            tmp_path / "data",
            "holds a dataset (its splits train); pass a new folder for the run.",
        ),
    ]
    for train, workdir, problem in refusals:
        with pytest.raises(ValueError) as err:
            train(config, str(workdir))
        assert str(err.value) == f"--workdir {workdir} {problem}"
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_export_refuses_to_overwrite_a_file_it_did_not_write(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("config.json", "denoiser.safetensors", "vq.safetensors"):
        (bundle / name).write_text(name)
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "old.ckpt").write_text("")
    (bundle / "old.ckpt").write_text("")
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 7}, tmp_path / "last.ckpt")
    original = (tmp_path / "last.ckpt").read_bytes()  # e.g. the PyTorch original's checkpoint
    not_ours = (
        "exists and is not an earlier export of this project (it records no predvdm_jax_config)"
    )
    for target, why in (
        (bundle / "vq.safetensors", "exists inside the bundle folder"),
        (bundle / "old.ckpt", "exists inside the bundle folder"),
        (tmp_path / "notes.txt", not_ours),
        (tmp_path / "last.ckpt", not_ours),
        (tmp_path / "run" / "checkpoints" / "x.ckpt", "is inside the run's checkpoint folder"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                os.path.join(REPO_ROOT, "scripts", "export.py"),
                f"--workdir={tmp_path / 'run'}",
                f"--predvdm_ckpt={target}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
        )
        assert done.returncode == 1, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: --predvdm_ckpt {target} {why}"), line
        assert line.endswith("nothing was written. Pass a new file path (e.g. exports/<run>.ckpt).")
    assert (bundle / "vq.safetensors").read_text() == "vq.safetensors"
    assert (tmp_path / "notes.txt").read_text() == "notes"
    assert (tmp_path / "last.ckpt").read_bytes() == original

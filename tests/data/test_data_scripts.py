"""prepare_data.py and inspect_data.py: a bad source, split or flag is one ``error:`` line."""

import os
import subprocess
import sys

import h5py
import numpy as np

from predvdm_jax.data import hdf5

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script, *args, ok=False):
    command = [sys.executable, os.path.join(REPO, "scripts", script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == (0 if ok else 1) and "Traceback" not in done.stderr, done.stderr
    return done.stdout if ok else done.stderr.strip().splitlines()[-1]


def test_prepare_data_errors_are_one_line(tmp_path):
    out = f"--out={tmp_path / 'out'}"
    assert _run("prepare_data.py", "--dataset=kthx", out).startswith(
        "error: Unknown dataset 'kthx'; choose one of ['bair', "
    )
    assert _run("prepare_data.py", "--dataset=kth", f"--src={tmp_path / 'nope'}", out) == (
        f"error: KTH source: '{tmp_path / 'nope'}' is not a folder; pass the folder that holds the "
        f"downloaded dataset as --src."
    )
    assert _run("prepare_data.py", "--dataset=tfds:moving_mnist", out) == (
        "error: TFDS moving_mnist: set --tfds_key to the video feature (e.g. image_sequence)."
    )
    assert _run(
        "prepare_data.py", "--dataset=smmnist", "--src=x", "--image_size=32", "--kth_split=rvd", out
    ) == (
        "error: smmnist does not take --kth_split, --image_size (its options: --num_digits, "
        "--num_train, --num_test, --seed); remove them."
    )
    assert _run("prepare_data.py", "--dataset=smmnist", "--src=x", "--notfds_download", out) == (
        "error: smmnist does not take --tfds_download (its options: --num_digits, --num_train, "
        "--num_test, --seed); remove it."
    )
    for split in ("train", "test"):
        os.makedirs(tmp_path / "bair" / split)
        (tmp_path / "bair" / split / "traj_0_to_255.tfrecords").write_bytes(b"\x01\x02\x03")
    assert _run("prepare_data.py", "--dataset=bair", f"--src={tmp_path / 'bair'}", out) == (
        f"error: {tmp_path / 'bair/train/traj_0_to_255.tfrecords'}: truncated TFRecord header at "
        f"byte 0; re-download."
    )
    assert not os.path.exists(tmp_path / "out")  # nothing was written


def test_prepare_data_refuses_an_out_folder_of_other_settings(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        x_test=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
    )
    args = [
        "--dataset=smmnist",
        f"--src={tmp_path / 'mnist.npz'}",
        f"--out={tmp_path / 'out'}",
        "--num_test=1",
        "--num_workers=1",
    ]
    assert "smmnist →" in _run("prepare_data.py", *args, "--num_train=2", ok=True)
    line = _run("prepare_data.py", *args, "--num_train=3")
    assert line == (
        f"error: {tmp_path / 'out'} holds a conversion made with other settings "
        f"(items.train, options.num_train differ); use a new --out folder or delete "
        f"{tmp_path / 'out'} "
        f"to start over."
    )


def test_inspect_data_checks_every_frame(tmp_path):
    split = tmp_path / "train"
    videos = [np.zeros((3, 64, 64), np.uint8), np.full((4, 64, 64), 9, np.uint8)]
    hdf5.write_split(str(split), videos)
    assert "2 videos, 7 frames" in _run("inspect_data.py", str(split), ok=True)
    with h5py.File(split / "shard_0001.hdf5", "a") as f:
        del f["1"]["3"]
        f["1"].create_dataset("3", data=np.zeros((32, 64), np.uint8))
        f["len"]["0"][()] = 5
    assert _run("inspect_data.py", str(split)) == (
        f"error: {split}: 3 bad frame(s): {split / 'shard_0001.hdf5'}: video 0 has no frame 3 (its "
        f"'len' entry says 5); {split / 'shard_0001.hdf5'}: video 0 has no frame 4 (its 'len' "
        f"entry says 5); {split / 'shard_0001.hdf5'}: video 1 frame 3 is uint8(32, 64), expected "
        f"uint8(64, 64); re-create the dataset."
    )
    assert _run("inspect_data.py", str(split / "shard_0001.hdf5")) == (
        f"error: '{split / 'shard_0001.hdf5'}' is a file; pass the split folder that holds it "
        f"('{split}')."
    )


def test_inspect_data_of_the_other_kind_names_its_kind_flag(tmp_path):
    frames, latents = tmp_path / "frames", tmp_path / "latents"
    hdf5.write_split(str(frames), [np.zeros((2, 8, 8), np.uint8)])
    with hdf5.ShardWriter(hdf5.shard_path(str(latents), 1), kind="latents") as writer:
        writer.add_video(np.zeros((2, 4, 4, 3), np.float16))
    assert _run("inspect_data.py", "--kind=latents", str(frames)) == (
        f"error: {frames}: video 0 has frames of dtype uint8; a latent cache holds "
        f"float16/float32 latents: it looks like a frame split; read it with --kind=frames, or "
        f"encode it with scripts/encode_dataset.py."
    )
    assert _run("inspect_data.py", str(latents)) == (
        f"error: {latents}: video 0 has frames of dtype float16; expected uint8 (a latent cache: "
        f"read it with --kind=latents)."
    )


def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path):
    """numpy refuses it only when the first video is drawn, after conversion.json was
    written, which then blocked the corrected rerun as a conversion of other settings."""
    out = tmp_path / "out"
    line = _run(
        "make_moving_digits.py", f"--out={out}", "--num_train=1", "--num_test=1", "--seed=-1"
    )
    assert line == "error: --seed must be >= 0, got -1"
    assert not out.exists()
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    args = ["--dataset=smmnist", f"--src={tmp_path / 'mnist.npz'}", f"--out={out}", "--seed=-1"]
    assert _run("prepare_data.py", *args) == "error: --seed must be >= 0, got -1"
    assert not out.exists()

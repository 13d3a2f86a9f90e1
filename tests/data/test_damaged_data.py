"""Damaged shards, sources and videos end in one ``DatasetError``/``SourceError``/``ValueError``
naming the file and the fix, never an h5py/PIL/numpy traceback."""

import gzip
import json
import os
import re
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from predvdm_jax.data import converters, hdf5, moving_digits, video_files
from predvdm_jax.data.converters import smmnist
from predvdm_jax.data.converters.common import SourceError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_script(script, *args):
    """Runs a script expected to fail; returns its one stderr line (no traceback)."""
    command = [sys.executable, os.path.join(REPO, "scripts", script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def _split(split_dir, num_videos=2, frames=3, shape=(16, 16)):
    # Smooth frames, so lzf compresses every chunk (an incompressible one is stored raw).
    video = np.broadcast_to(np.arange(shape[0], dtype=np.uint8)[:, None], (frames,) + shape)
    hdf5.write_split(str(split_dir), [video] * num_videos)
    return str(split_dir / "shard_0001.hdf5")


def _corrupt_chunk(path, video, frame):
    """Overwrites the lzf chunk of one frame with garbage (the file stays a valid HDF5)."""
    with h5py.File(path, "r") as f:
        offset = f[str(video)][str(frame)].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 40)


def test_truncated_shard_is_a_dataset_error(tmp_path):
    path = _split(tmp_path / "train")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(hdf5.DatasetError, match=r"shard_0001.hdf5: cannot read .*re-download"):
        hdf5.VideoShards(str(tmp_path / "train"))


def test_corrupt_first_chunk_is_a_dataset_error(tmp_path):
    path = _split(tmp_path / "train")
    _corrupt_chunk(path, 0, 0)
    with pytest.raises(hdf5.DatasetError, match=r"shard_0001.hdf5: cannot read video 0 frame 0"):
        hdf5.VideoShards(str(tmp_path / "train"))


def test_corrupt_later_chunk_is_a_dataset_error_when_read(tmp_path):
    path = _split(tmp_path / "train")
    _corrupt_chunk(path, 1, 2)
    shards = hdf5.VideoShards(str(tmp_path / "train"))
    shards.check_all_frames()  # metadata only: the chunk is not read
    with pytest.raises(
        hdf5.DatasetError, match=r"shard_0001.hdf5: cannot read video 1 frames 0-2 .*damaged"
    ):
        shards.read_clip(1, 0, 3)
    with pytest.raises(hdf5.DatasetError, match=r"cannot read video 1 frames 0-2"):
        shards.load_into_memory()
    assert not shards.in_memory


@pytest.mark.parametrize("value", [b"abc", -3, 0, 2.5, np.arange(2)])
def test_bad_len_entry_is_a_dataset_error(tmp_path, value):
    path = _split(tmp_path / "train")
    with h5py.File(path, "a") as f:
        del f["len"]["1"]
        f["len"].create_dataset("1", data=value)
    with pytest.raises(
        hdf5.DatasetError, match=r"shard_0001.hdf5: video 1's 'len' entry is .*not a frame count"
    ):
        hdf5.VideoShards(str(tmp_path / "train"))


# --- VideoShards.check_decodes / inspect_data.py --decode -----------------------------------


def _inspect(*args):
    """Runs inspect_data.py expected to pass; returns its stdout."""
    command = [sys.executable, os.path.join(REPO, "scripts", "inspect_data.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_corrupt_unsampled_chunk_is_found_by_check_decodes(tmp_path):
    split = tmp_path / "train"
    path = _split(split, frames=6)
    _corrupt_chunk(path, 1, 5)  # the summary samples frames 0-3 only
    shards = hdf5.VideoShards(str(split))
    shards.check_all_frames()
    shards.summary()
    with pytest.raises(
        hdf5.DatasetError, match=r"shard_0001.hdf5: cannot read video 1 frames 4-5 "
    ):
        shards.check_decodes(max_bytes=2 * 16 * 16)  # two frames a read
    assert "2 videos, 12 frames" in _inspect(str(split))
    line = _run_script("inspect_data.py", "--decode", str(split))
    assert line.startswith(f"error: {path}: cannot read video 1 frames 0-5 ("), line
    assert line.endswith("or re-download it."), line


def test_check_decodes_passes_good_frames_and_refuses_nan_latents(tmp_path):
    _split(tmp_path / "frames", frames=6)
    assert "2 videos, 12 frames" in _inspect("--decode", str(tmp_path / "frames"))
    _split(tmp_path / "data" / "test", frames=3)
    _split(tmp_path / "data" / "train", frames=6)
    summaries = _inspect(str(tmp_path / "data")).splitlines()  # a dataset: each of its splits
    assert [line.split(":")[0] for line in summaries] == [
        str(tmp_path / "data" / name) for name in ("test", "train")
    ]
    assert "2 videos, 6 frames" in summaries[0]
    latents = np.zeros((2, 3, 4, 4, 2), np.float16)
    latents[1, 2, 0, 0, 1] = np.nan
    path = str(tmp_path / "latents" / "shard_0001.hdf5")
    with hdf5.ShardWriter(path, kind="latents") as writer:
        for video in latents:
            writer.add_video(video)
    shards = hdf5.VideoShards(str(tmp_path / "latents"), "latents")
    shards.check_all_frames()
    with pytest.raises(hdf5.DatasetError, match=r"shard_0001.hdf5: video 1 frame 2 holds NaN or"):
        shards.check_decodes()
    line = _run_script("inspect_data.py", "--kind=latents", "--decode", str(tmp_path / "latents"))
    assert line.startswith(f"error: {path}: video 1 frame 2 holds NaN or Inf latents; "), line


# --- make_moving_digits.py / write_moving_digits -------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_train=0), r"--num_train must be a whole number >= 1, got 0"),
        (dict(num_train=-1), r"--num_train must be a whole number >= 1, got -1"),
        (dict(seq_len=0), r"--seq_len must be a whole number >= 1, got 0"),
        (dict(num_digits=0), r"--num_digits must be a whole number >= 1, got 0"),
    ],
)
def test_moving_digits_refuses_bad_settings_before_writing(tmp_path, changes, message):
    settings = dict(num_train=2, num_test=1, seq_len=3, progress=False)
    with pytest.raises(ValueError, match=message):
        moving_digits.write_moving_digits(str(tmp_path / "out"), **{**settings, **changes})
    assert not os.path.exists(tmp_path / "out")


def _no_new_videos(*args):
    raise AssertionError("a video was generated again")


def _marked(shard):
    with h5py.File(shard, "r") as f:
        return bool((f["1"]["2"][()] == 77).all())


def test_moving_digits_refuses_an_out_folder_of_other_data(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    moving_digits.write_moving_digits(out, 2, 1, seq_len=3, progress=False)
    assert json.load(open(tmp_path / "out" / "conversion.json"))["dataset"] == "moving_digits"
    # Same settings: resumes, keeping the written splits (a marked frame survives) and
    # generating no video (regenerating would give the same data: videos are seeded).
    shard = tmp_path / "out" / "train" / "shard_0001.hdf5"
    with h5py.File(shard, "a") as f:
        f["1"]["2"][...] = 77
    monkeypatch.setattr(moving_digits, "moving_digits_video", _no_new_videos)
    assert moving_digits.write_moving_digits(out, 2, 1, seq_len=3, progress=False) == {
        "train": 2,
        "test": 1,
    }
    assert _marked(shard)
    before = (tmp_path / "out" / "train" / "shard_0001.hdf5").read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(options.seq_len differ\); use a new"):
        moving_digits.write_moving_digits(out, 2, 1, seq_len=4, progress=False)
    assert (tmp_path / "out" / "train" / "shard_0001.hdf5").read_bytes() == before
    # Shards without conversion.json are refused, another dataset's or moving digits of
    # these very settings: every writer records conversion.json before its first shard.
    bundle = tmp_path / "bundle"  # a model's folder: the dataset would mix with its files
    bundle.mkdir()
    for name in ("config.json", "denoiser.safetensors"):
        (bundle / name).write_text(name)
    with pytest.raises(ValueError) as err:
        moving_digits.write_moving_digits(str(bundle), 2, 1, progress=False)
    assert str(err.value) == (
        f"--out {str(bundle)!r} is an inference bundle; give the dataset a folder of its own "
        f"(e.g. data/<name>)."
    )
    assert sorted(os.listdir(bundle)) == ["config.json", "denoiser.safetensors"]
    _split(tmp_path / "other" / "train")
    with pytest.raises(ValueError, match=r"already holds shards .* from an unknown conversion"):
        moving_digits.write_moving_digits(str(tmp_path / "other"), 2, 1, progress=False)
    assert not os.path.exists(tmp_path / "other" / "test")
    os.remove(tmp_path / "out" / "conversion.json")
    with pytest.raises(ValueError) as err:
        moving_digits.write_moving_digits(out, 2, 1, seq_len=3, progress=False)
    assert str(err.value) == (
        f"{out} already holds shards ({tmp_path / 'out' / 'test' / 'shard_0001.hdf5'}) from an "
        f"unknown conversion; use a new --out folder or delete them."
    )
    assert not os.path.exists(tmp_path / "out" / "conversion.json")
    assert _marked(shard) and shard.read_bytes() == before  # left as it was
    # A file as --out, or a folder under a file.
    (tmp_path / "afile").write_text("x")
    for bad in ("afile", "afile/sub"):
        with pytest.raises(hdf5.DatasetError, match=r"afile.*give --out a folder"):
            moving_digits.write_moving_digits(str(tmp_path / bad), 2, 1, progress=False)
    assert (tmp_path / "afile").read_text() == "x"


def test_make_moving_digits_script_errors_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for args in (["--num_train=0"], ["--seq_len=0"], [f"--out={tmp_path / 'afile'}"]):
        line = _run_script("make_moving_digits.py", f"--out={tmp_path / 'out'}", *args)
        assert line.startswith("error: --"), line
    assert not os.path.exists(tmp_path / "out")


# --- prepare_data.py --dataset=smmnist ----------------------------------------------------


def _mnist(n):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(a=_mnist(2)), r"has no x_train / x_test array \(it holds: a\)"),
        (dict(x_train=_mnist(4) / 255.0, x_test=_mnist(2)), r"x_train holds float64 images"),
        (
            dict(x_train=_mnist(4).reshape(4, 784), x_test=_mnist(2)),
            r"x_train holds images of shape \(4, 784\) \(flattened rows",
        ),
        (dict(x_train=_mnist(0), x_test=_mnist(2)), r"x_train holds no images"),
        (
            dict(x_train=_mnist(4), x_test=_mnist(2).astype(np.int64) * 300),
            r"x_test holds int64 values in",
        ),
    ],
)
def test_smmnist_refuses_npz_that_is_not_mnist(tmp_path, arrays, message):
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(SourceError, match=message + r".*expected MNIST as a mnist.npz"):
        smmnist.load_mnist(str(tmp_path / "mnist.npz"))


def test_smmnist_refuses_damaged_idx_files(tmp_path):
    header = struct.pack(">HBBIII", 0, 8, 3, 10, 28, 28)
    for stem in ("train", "t10k"):
        with gzip.open(tmp_path / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + bytes(100))
    with pytest.raises(SourceError, match=r"holds 116 bytes but its header announces 10 images"):
        smmnist.load_mnist(str(tmp_path))
    for stem in ("train", "t10k"):
        (tmp_path / f"{stem}-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(SourceError, match=r"train-images-idx3-ubyte.gz is not a gzip file"):
        smmnist.load_mnist(str(tmp_path))
    (tmp_path / "junk.npz").write_text("hello")
    with pytest.raises(SourceError, match=r"junk.npz is not an .npz \(zip\) archive"):
        smmnist.load_mnist(str(tmp_path / "junk.npz"))


def test_smmnist_refuses_counts_below_one_and_an_out_file(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=_mnist(4), x_test=_mnist(2))
    src = str(tmp_path / "mnist.npz")
    with pytest.raises(SourceError, match=r"--num_train must be >= 1, got -3"):
        converters.convert("smmnist", src, str(tmp_path / "out"), num_train=-3, progress=False)
    assert not os.path.exists(tmp_path / "out")
    (tmp_path / "afile").write_text("x")
    line = _run_script(
        "prepare_data.py", "--dataset=smmnist", f"--src={src}", f"--out={tmp_path / 'afile'}"
    )
    assert (
        line == f"error: --out '{tmp_path / 'afile'}' is a file; give --out a folder (a new "
        "one, or one this command wrote before)."
    )


# --- sample.py --video ----------------------------------------------------------------------


def test_a_single_image_is_not_a_video(tmp_path):
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "gray.png")
    for name in ("rgb.png", "gray.png"):
        with pytest.raises(
            ValueError, match=rf"{name}' is a single image, not a video; pass a video"
        ):
            video_files.read_clip(str(tmp_path / name), 8, 1, 2)


def test_unreadable_frames_and_videos_name_the_file(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "f1.png")
    (frames / "f2.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"f2.png' is not a readable image \(cannot identify"):
        video_files.read_clip(str(frames), 8, 1, 2)
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(noise).save(frames / "f2.png")
    data = (frames / "f2.png").read_bytes()
    (frames / "f2.png").write_bytes(data[:-40])  # cut inside the pixel data
    with pytest.raises(ValueError, match=r"f2.png' is not a readable image \(.*truncated"):
        video_files.read_clip(str(frames), 8, 1, 2)
    (tmp_path / "text.gif").write_text("hello")
    with pytest.raises(ValueError) as err:
        video_files.read_clip(str(tmp_path / "text.gif"), 8, 1, 2)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot decode '{tmp_path / 'text.gif'}' as a video (")


@pytest.mark.parametrize(
    "name, mode",
    [("gray.gif", "L"), ("gray_alpha.gif", "LA"), ("gray_alpha.png", "LA")],  # .png: APNG
)
def test_gray_and_gray_alpha_gifs_are_videos(tmp_path, name, mode):
    """Frame t's gray value v (here 40·t + 3·x + y on 8×10 frames) is v / 127.5 − 1 in the clip,
    centre-cropped to 8×8 (columns 1-8); alpha, varying over the frame, is dropped. An LA APNG
    decodes to 2-channel frames (gray, alpha), an LA GIF to RGB."""
    y, x = np.mgrid[:8, :10]
    gray = np.stack([40 * t + 3 * x + y for t in range(3)]).astype(np.uint8)
    alpha = np.stack([(32 * x + 64 * t + 7 * y) % 256 for t in range(3)]).astype(np.uint8)
    pixels = gray if mode == "L" else np.stack([gray, alpha], axis=-1)
    frames = [Image.fromarray(frame) for frame in pixels]
    assert frames[0].mode == mode
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    expected = gray[:, :, 1:9, None].astype(np.float32) / 127.5 - 1.0
    clip = video_files.read_clip(str(tmp_path / name), 8, 1, 3)
    assert clip.shape == (3, 8, 8, 1) and clip.dtype == np.float32
    np.testing.assert_allclose(clip, expected, rtol=0, atol=1e-6)
    rgb = video_files.read_clip(str(tmp_path / name), 8, 3, 3)
    np.testing.assert_allclose(rgb, np.repeat(expected, 3, axis=-1), rtol=0, atol=1e-6)


# --- encode_dataset.py ----------------------------------------------------------------------


def test_encode_dataset_refuses_an_out_file_or_the_source_up_front(tmp_path):
    src = tmp_path / "frames"
    _split(src / "train")
    (tmp_path / "afile").write_text("x")
    config = f"--config={os.path.join(REPO, 'configs', 'vq_digits_demo.py')}"
    line = _run_script("encode_dataset.py", config, f"--src={src}", f"--out={tmp_path / 'afile'}")
    assert line.startswith(
        f"error: cannot write the latent cache to '{tmp_path / 'afile'}': "
        f"'{tmp_path / 'afile'}' is a file; give --out a folder"
    )
    for out in (src, src / "latents"):
        line = _run_script("encode_dataset.py", config, f"--src={src}", f"--out={out}")
        assert line.startswith(
            f"error: the latent cache '{out}' would be written into its source frame split '{src}'"
        )
    line = _run_script("encode_dataset.py", config, f"--src={src / 'train'}", "--out=unused")
    assert line == (
        f"error: --src '{src / 'train'}' is a split folder (it holds shard files); pass the "
        f"dataset folder that holds the splits: --src={src}"
    )
    assert sorted(os.listdir(src)) == ["train"] and os.listdir(src / "train") == ["shard_0001.hdf5"]
    assert (tmp_path / "afile").read_text() == "x"


def test_a_truncated_latent_cache_shard_is_named_when_an_encode_resumes(tmp_path):
    """A finished cache shard cut short (a full disk, a copy) stops the resume with the
    shard's ``DatasetError``, not h5py's ``OSError``; the cache is left as it was."""
    from tiny_config import SIZE, tiny_config

    from predvdm_jax.data import latent_cache

    config = tiny_config()
    params = {"encoder": {"kernel": np.zeros(3, np.float32)}}  # never run: the check is first
    src, out = tmp_path / "frames", tmp_path / "latents"
    _split(src, shape=(SIZE, SIZE))
    info = latent_cache.cache_info(config, str(src), "float16", vq_params=params)
    os.makedirs(out)
    (out / latent_cache.CACHE_INFO).write_text(json.dumps(info, default=list))
    path = str(out / "shard_0001.hdf5")
    with hdf5.ShardWriter(path, kind="latents") as writer:
        for _ in range(2):
            writer.add_video(np.zeros((3, 4, 4, 3), np.float16))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    size = os.path.getsize(path)
    with pytest.raises(hdf5.DatasetError) as err:
        latent_cache.encode_split(config, params, str(src), str(out))
    assert str(err.value).startswith(f"{path}: cannot read the file (")
    assert str(err.value).endswith(
        "the shard is damaged (truncated or corrupt); delete it and re-create it (re-run the "
        "scripts/prepare_data.py, make_moving_digits.py or encode_dataset.py command that made "
        "it) or re-download it."
    )
    assert sorted(os.listdir(out)) == [latent_cache.CACHE_INFO, "shard_0001.hdf5"]
    assert os.path.getsize(path) == size


def test_a_vq_file_of_another_architecture_than_the_config_encodes_with_its_own(tmp_path):
    """train_vq.py records its VQ in the file: encode_dataset.py takes that architecture and
    frame size (as evaluate.py --vq_params does); loading it with a config of another VQ
    names the flags that would fit, not only ~180 keys of the wrong shape."""
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    from predvdm_jax import config as config_lib
    from predvdm_jax.data import latent_cache
    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.interop.params import load_vq_params
    from predvdm_jax.training.vq_trainer import save_vq_params

    tiny = tiny_config()  # 16x16 gray frames, VQ ch 32, ch_mult (1, 2), 16 codes
    vq_file = str(tmp_path / "vq_params.safetensors")
    save_vq_params(
        vq_file, random_params_from_init(LatentDiffusion.from_config(tiny).init_vq), tiny
    )
    kth = config_lib.load_config_file(os.path.join(REPO, "configs", "kth64.py"))
    with pytest.raises(ValueError) as err:
        load_vq_params(vq_file, kth)
    message = str(err.value)
    assert message.startswith(
        f"VQ params {vq_file!r} (config.vq) does not match the model: the file records the VQ "
        "it was trained with: set --config.vq.ch=32 --config.vq.ch_mult=1,2 "
        "--config.vq.n_embed=16 --config.vq.num_res_blocks=1 --config.vq.resolution=16. Keys: "
    )
    assert "\n" not in message and len(message) < 900, message  # ~200 keys differ: 3 named
    shapes = re.search(r"; wrong shape \(\d+\): (.*) \(\+\d+ more\)\.$", message)
    assert shapes and shapes.group(1).count("expected") == 3, message

    src = tmp_path / "frames"
    _split(src / "train")
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "encode_dataset.py"),
        f"--config={os.path.join(REPO, 'configs', 'kth64.py')}",
        f"--vq_params={vq_file}",
        f"--src={src}",
        f"--out={tmp_path / 'latents'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    info = latent_cache.read_cache_info(str(tmp_path / "latents" / "train"))
    assert info["vq"]["ch"] == 32 and list(info["vq"]["ch_mult"]) == [1, 2]
    latents = hdf5.VideoShards(str(tmp_path / "latents" / "train"), kind="latents")
    assert latents.frame_shape == (8, 8, 3)  # 16x16 frames through the file's f2 VQ

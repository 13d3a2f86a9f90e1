"""Latent cache: values equal LatentDiffusion.encode (and the bare VQ encoder), structure kept,
readable by the loader, resumable after an interruption; a folder without a complete
cache_info.json is refused."""

import json
import os
import re

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import ScopeParamNotFoundError

from predvdm_jax import config as config_lib
from predvdm_jax.data import hdf5
from predvdm_jax.data.hdf5 import DatasetError, VideoShards, write_split
from predvdm_jax.data.latent_cache import (
    CACHE_INFO,
    DIGEST_KEY,
    check_cache_matches,
    check_output,
    encode_split,
    read_cache_info,
)
from predvdm_jax.data.loader import (
    TrainWindows,
    eval_iterator,
    eval_windows,
    to_model_range,
    train_iterator,
)
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors
from predvdm_jax.models.autoencoder import VQModel

SIZE = 16
FRAME_COUNTS = (3, 5, 2, 4, 6)  # shards of 2, 2, 1 videos


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8) for n in FRAME_COUNTS]
    write_split(str(root / "frames"), videos, vids_per_shard=2)
    c = config_lib.default_config()
    c.data.image_size = SIZE
    c.vq.update(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, resolution=SIZE, n_embed=16)
    c.unet.update(channel_mult=(1,), attention_resolutions=())  # 4x4 latents: one level
    c.scale_factor = 0.5
    c.vq_chunk = 4
    config = config_lib.finalize(c)
    system = LatentDiffusion.from_config(config)
    params = jax.jit(system.init_vq)(jax.random.PRNGKey(0))
    return root, videos, config, system, params


def read_cache(split_dir):
    shards = VideoShards(split_dir, kind="latents")
    return shards, [shards.read_clip(i, 0, int(n)) for i, n in enumerate(shards.frame_counts)]


def test_cache_equals_encode_and_keeps_structure(setup):
    root, videos, config, system, params = setup
    out = str(root / "latents16")
    assert (
        encode_split(config, params, str(root / "frames"), out, dtype="float16", batch_frames=4)
        == 3
    )
    shards, cached = read_cache(out)
    assert sorted(os.listdir(out)) == sorted(os.listdir(root / "frames") + [CACHE_INFO])
    assert tuple(shards.frame_counts) == FRAME_COUNTS
    assert shards.dtype == np.float16 and shards.frame_shape == (SIZE // 4, SIZE // 4, 3)
    frames = to_model_range(np.concatenate(videos)[..., None])  # every frame, one batch
    expected = np.asarray(system.encode(params, jnp.asarray(frames)[None]))[0]
    # independent of LatentDiffusion: the bare encoder on RGB-repeated frames × scale_factor
    bare = (
        np.asarray(
            system.vq.apply(
                {"params": params}, np.repeat(frames, 3, axis=-1), method=VQModel.encode
            )
        )
        * 0.5
    )
    np.testing.assert_allclose(expected, bare, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.concatenate(cached).astype(np.float32), expected, rtol=2**-10, atol=1e-4
    )
    info = json.load(open(os.path.join(out, CACHE_INFO)))
    assert info["dtype"] == "float16" and info["scale_factor"] == 0.5

    # The denoiser trainer's input: example g of the stream is the cached window
    # TrainWindows(g), 3 batches of 2 crossing an epoch of 5 videos; float16 -> float32 exactly.
    windows = TrainWindows(shards.frame_counts, 2, seed=4)
    train = train_iterator(out, 2, 2, seed=4, kind="latents", num_threads=1, prefetch=1)
    for step in range(3):
        batch = next(train)
        assert set(batch) == {"latents"}
        assert batch["latents"].shape == (2, 2, SIZE // 4, SIZE // 4, 3)
        assert batch["latents"].dtype == np.float32
        for i, clip in enumerate(batch["latents"]):
            video, start, _ = windows(2 * step + i)
            np.testing.assert_array_equal(clip, cached[video][start : start + 2].astype(np.float32))
    # Evaluation: clip i is the cached window eval_windows(...)[i]; the last batch is padded
    # with clip 0 (mask 0).
    evaluation = eval_iterator(out, 2, 5, 2, seed=6, kind="latents", num_threads=1, prefetch=1)
    eval_clips = eval_windows(shards.frame_counts, 5, 2, seed=6) + [None]
    for step, batch in enumerate(evaluation):
        assert set(batch) == {"latents", "mask", "index"} and batch["latents"].dtype == np.float32
        for i, clip in enumerate(batch["latents"]):
            index = 2 * step + i
            video, start = eval_clips[index] or eval_clips[0]
            np.testing.assert_array_equal(clip, cached[video][start : start + 2].astype(np.float32))
            assert batch["mask"][i] == (index < 5) and batch["index"][i] == index
    assert step == 2


def test_interrupted_cache_resumes_and_refuses_other_settings(setup):
    root, videos, config, system, params = setup
    out = str(root / "latents32")
    assert (
        encode_split(
            config, params, str(root / "frames"), out, dtype="float32", batch_frames=3, max_shards=1
        )
        == 1
    )
    first = os.path.join(out, "shard_0001.hdf5")
    written_at = os.path.getmtime(first)
    with pytest.raises(DatasetError) as err:  # training refuses the unfinished cache
        check_cache_matches(config, out)
    assert str(err.value) == (
        f"{out} is an unfinished latent cache (1 of 3 shards; its encode was interrupted): run "
        f"scripts/encode_dataset.py again with the same flags to finish it."
    )
    # a half-written shard from the interruption
    with open(os.path.join(out, "shard_0002.hdf5.tmp"), "wb") as f:
        f.write(b"partial")
    with pytest.raises(DatasetError, match="another dtype"):
        encode_split(config, params, str(root / "frames"), out, dtype="float16")
    assert (
        encode_split(config, params, str(root / "frames"), out, dtype="float32", batch_frames=3)
        == 2
    )
    assert os.path.getmtime(first) == written_at
    assert not any(name.endswith(".tmp") for name in os.listdir(out))
    check_cache_matches(config, out)
    shards, cached = read_cache(out)
    assert tuple(shards.frame_counts) == FRAME_COUNTS and shards.dtype == np.float32
    frames = to_model_range(np.concatenate(videos)[..., None])
    expected = np.asarray(system.encode(params, jnp.asarray(frames)[None]))[0]
    np.testing.assert_allclose(np.concatenate(cached), expected, rtol=1e-5, atol=1e-5)
    with h5py.File(first, "r") as f:
        assert sorted(f.keys()) == ["0", "1", "len", "videos"]


def test_a_source_changed_since_encoding_is_refused_on_resume_and_in_training(setup, tmp_path):
    """A source split re-made at the same path (other videos): a resume kept the old shards
    beside new ones, a cache of two datasets, and training read the stale cache unchecked."""
    root, videos, config, system, params = setup
    src, out = str(tmp_path / "frames"), str(tmp_path / "latents")
    write_split(src, videos, vids_per_shard=2)
    encode_split(config, params, src, out, batch_frames=4, max_shards=1)
    remade = [v[:-1] for v in videos]  # one frame fewer per video, same shards
    for name in os.listdir(src):
        os.remove(os.path.join(src, name))
    os.rmdir(src)
    write_split(src, remade, vids_per_shard=2)
    changed = (
        rf"an earlier version of {re.escape(os.path.abspath(src))} \(its videos' frame counts "
        r"or conversion\.json differ now\)"
    )
    with pytest.raises(DatasetError, match=rf"^{re.escape(out)} holds latents of {changed}; "):
        encode_split(config, params, src, out, batch_frames=4)
    assert len(hdf5.shard_paths(out)) == 1
    for name in os.listdir(src):
        os.remove(os.path.join(src, name))
    os.rmdir(src)
    write_split(src, videos, vids_per_shard=2)  # the original videos back: the resume finishes
    encode_split(config, params, src, out, batch_frames=4)
    check_cache_matches(config, out, params)
    for name in os.listdir(src):
        os.remove(os.path.join(src, name))
    os.rmdir(src)
    write_split(src, remade, vids_per_shard=2)
    with pytest.raises(DatasetError, match=rf"^{re.escape(out)} was encoded from {changed}; "):
        check_cache_matches(config, out, params)


@pytest.mark.parametrize(
    "frame_shape, holds",
    [((SIZE, SIZE, 3), f"{SIZE}x{SIZE} frames with 3 channel(s)"), ((8, 8), "8x8 frames with 1")],
)
def test_a_split_of_another_frame_size_or_channels_is_refused_up_front(
    setup, tmp_path, frame_shape, holds
):
    _, _, config, _, params = setup  # data.image_size=SIZE, data.channels=1
    src, out = str(tmp_path / "frames"), str(tmp_path / "latents")
    write_split(src, [np.zeros((2, *frame_shape), np.uint8)])
    # check_output is what encode_dataset.py runs on every split before encoding any
    for check in (encode_split, check_output):
        with pytest.raises(DatasetError) as err:
            check(config, params, src, out)
        assert str(err.value).startswith(f"{src} holds {holds}")
        assert f"data.image_size={SIZE} with data.channels=1" in str(err.value)
        assert not os.path.exists(out)


def test_cache_records_its_vq_file_and_refuses_another_scale_or_vq(setup):
    root, videos, config, system, params = setup
    out = str(root / "checked")
    encode_split(
        config,
        params,
        str(root / "frames"),
        out,
        batch_frames=4,
        vq_params_path="elsewhere/vq.safetensors",
    )
    info = json.load(open(os.path.join(out, CACHE_INFO)))
    assert info["vq_params"] == os.path.abspath("elsewhere/vq.safetensors")

    check_cache_matches(config, out)
    other = config.copy_and_resolve_references()
    other.vq.dropout = 0.5  # dropout leaves the encoder's latents unchanged
    other.vq_params = "another/path.safetensors"
    check_cache_matches(other, out)
    other.scale_factor = 0.25
    with pytest.raises(
        config_lib.ConfigError,
        match=r"scale_factor 0\.5 but config\.scale_factor is 0\.25.*"
        r"--config\.scale_factor=0\.5",
    ):
        check_cache_matches(other, out)
    other = config.copy_and_resolve_references()
    other.data.image_size = 2 * config.data.image_size
    with pytest.raises(
        config_lib.ConfigError,
        match=r"holds 4x4 latents \(frames of 16x16\), but config\.data\.image_size=32 "
        r"makes 8x8 ones; set --config\.data\.image_size=16 ",
    ):
        check_cache_matches(other, out)
    other = config.copy_and_resolve_references()
    other.vq.update(n_embed=32, ch_mult=(1, 2, 2))
    with pytest.raises(
        config_lib.ConfigError,
        match=r"vq\.ch_mult \[1, 1, 1\] \(config: \[1, 2, 2\]\), "
        r"vq\.n_embed 16 \(config: 32\)",
    ):
        check_cache_matches(other, out)

    # Shards without cache_info.json are no cache of encode_dataset.py: one error, no warning.
    os.remove(os.path.join(out, CACHE_INFO))
    with pytest.raises(DatasetError) as err:
        check_cache_matches(config, out)
    assert str(err.value) == (
        f"{out} has no cache_info.json, so it is not a latent cache made by "
        f"scripts/encode_dataset.py; re-run scripts/encode_dataset.py to make it, or point "
        f"data.latent_train_dir / data.latent_test_dir at a cache."
    )


def test_cache_records_its_vq_weights_and_refuses_other_weights(setup, tmp_path):
    root, videos, config, system, params = setup
    frames = str(root / "frames")
    out = str(tmp_path / "latents")
    other = jax.tree.map(lambda x: x + 0.01, params)  # the same architecture, other weights
    made_with, retrained = str(tmp_path / "vq.safetensors"), str(tmp_path / "vq2.safetensors")
    save_params_safetensors(made_with, params)
    save_params_safetensors(retrained, other)
    assert encode_split(config, params, frames, out, batch_frames=4, vq_params_path=made_with) == 3
    with pytest.raises(DatasetError) as err:
        encode_split(config, other, frames, out, batch_frames=4, vq_params_path=retrained)
    message = str(err.value)
    assert "holds latents of other VQ weights" in message
    assert made_with in message and retrained in message
    assert message.endswith("delete the folder or choose another --out.")
    assert json.load(open(os.path.join(out, CACHE_INFO)))["vq_params"] == made_with

    # Training decodes with config.vq_params: the cache's own weights pass, others do not.
    check_cache_matches(config_with(config, vq_params=made_with), out)
    with pytest.raises(
        config_lib.ConfigError,
        match=r"other VQ weights .* than config\.vq_params .*vq2\.safetensors.*"
        r"set --config\.vq_params to the file the cache was made with",
    ):
        check_cache_matches(config_with(config, vq_params=retrained), out)

    # A cache_info.json without the digest (or any field the writer records), or not JSON,
    # neither resumes nor trains: one error naming the file and the fix.
    path = os.path.join(out, CACHE_INFO)
    info = json.load(open(path))
    del info[DIGEST_KEY]
    with open(path, "w") as f:
        json.dump(info, f)
    fix = f"delete {out} and re-run scripts/encode_dataset.py to make the cache."
    lacks = f"{path} lacks vq_params_sha256, which scripts/encode_dataset.py records; {fix}"
    with pytest.raises(DatasetError) as err:
        encode_split(config, params, frames, out, batch_frames=4, vq_params_path=made_with)
    assert str(err.value) == lacks
    with pytest.raises(DatasetError) as err:
        check_cache_matches(config_with(config, vq_params=made_with), out)
    assert str(err.value) == lacks
    with open(path, "w") as f:
        f.write("{")
    with pytest.raises(DatasetError, match=r"cache_info\.json is unreadable \(Expecting") as err:
        check_cache_matches(config, out)
    assert str(err.value).endswith(fix) and "\n" not in str(err.value)
    assert sorted(os.listdir(out)) == [CACHE_INFO] + [f"shard_000{i}.hdf5" for i in (1, 2, 3)]


def test_a_failed_encode_leaves_no_cache_info_to_block_a_rerun(setup, tmp_path):
    root, videos, config, system, params = setup
    out = str(tmp_path / "latents")
    broken = {k: v for k, v in params.items() if k != "quant_conv"}
    with pytest.raises(ScopeParamNotFoundError, match=r'"kernel" in scope "/quant_conv"'):
        encode_split(config, broken, str(root / "frames"), out, batch_frames=4)
    assert os.listdir(out) == []
    assert (
        encode_split(config, params, str(root / "frames"), out, batch_frames=4, max_shards=1) == 1
    )
    assert CACHE_INFO in os.listdir(out)


def test_latents_that_overflow_float16_are_refused_not_cached_as_inf(setup, tmp_path):
    """float16 holds at most 65504: larger latents became Inf in the cache, and training on them
    gives a NaN loss; with --dtype=float32 the same latents are cached."""
    root, videos, config, system, params = setup
    large = jax.tree.map(lambda x: x, params)
    large["quant_conv"]["bias"] = params["quant_conv"]["bias"] + 2e5  # x scale 0.5: 1e5 > 65504
    out = str(tmp_path / "latents")
    with pytest.raises(
        DatasetError,
        match=r"video 0 of .*frames/shard_0001\.hdf5 encodes to latents float16 cannot hold "
        r"\(largest \|value\| [0-9.e+]+ > 65504\); encode with --dtype=float32\.$",
    ):
        encode_split(config, large, str(root / "frames"), out, dtype="float16", batch_frames=4)
    assert not hdf5.shard_paths(out)
    encode_split(config, large, str(root / "frames"), str(tmp_path / "f32"), "float32", 4)
    shards, cached = read_cache(str(tmp_path / "f32"))
    assert all(np.isfinite(c).all() and np.abs(c).max() > 65504 for c in cached)


def test_no_shard_is_in_place_before_cache_info_and_a_run_killed_before_that_resumes(
    setup, tmp_path, monkeypatch
):
    """cache_info.json is written before the first shard is renamed into place, so a run
    killed at any point leaves no finished shard without it; one killed before the first
    rename leaves it alone, binding nothing, and a rerun (even of other settings) finishes."""
    root, videos, config, system, params = setup
    frames, out = str(root / "frames"), str(tmp_path / "latents")
    info_path = os.path.join(out, CACHE_INFO)
    close = hdf5.ShardWriter.close
    at_rename = []  # the cache_info dtype (None: no file) each time a shard is renamed into place

    def killed_before_the_rename(writer):
        at_rename.append(json.load(open(info_path))["dtype"] if os.path.exists(info_path) else None)
        writer._file.close()
        raise KeyboardInterrupt  # the process ends before os.replace: no finished shard

    monkeypatch.setattr(hdf5.ShardWriter, "close", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        encode_split(config, params, frames, out, dtype="float16", batch_frames=4)
    assert at_rename == ["float16"]
    assert sorted(os.listdir(out)) == [CACHE_INFO, "shard_0001.hdf5.tmp"]

    def recorded_close(writer):
        at_rename.append(json.load(open(info_path))["dtype"] if os.path.exists(info_path) else None)
        close(writer)

    monkeypatch.setattr(hdf5.ShardWriter, "close", recorded_close)
    assert encode_split(config, params, frames, out, dtype="float32", batch_frames=4) == 3
    assert at_rename == ["float16", "float32", "float32", "float32"]
    assert sorted(os.listdir(out)) == sorted(os.listdir(frames) + [CACHE_INFO])
    check_cache_matches(config, out)
    shards, _ = read_cache(out)
    assert shards.dtype == np.float32 and tuple(shards.frame_counts) == FRAME_COUNTS


def config_with(config, **changes):
    changed = config.copy_and_resolve_references()
    changed.update(changes)
    return changed


def test_an_out_folder_of_another_dataset_or_the_source_is_refused_before_writing(setup, tmp_path):
    root, videos, config, system, params = setup
    frames = str(root / "frames")
    # Another frame dataset's split: its shards have no cache_info.json.
    other = str(tmp_path / "other" / "train")
    write_split(other, [np.zeros((2, SIZE, SIZE), np.uint8)])
    before = sorted(os.listdir(other))
    with pytest.raises(DatasetError, match=r"holds shards \(shard_0001.hdf5\) but no cache_info"):
        encode_split(config, params, frames, other, batch_frames=4)
    assert sorted(os.listdir(other)) == before
    # The source itself, or a folder inside it.
    for out in (frames, os.path.join(frames, "latents")):
        with pytest.raises(DatasetError, match=r"would be written into its source frame split"):
            encode_split(config, params, frames, out, batch_frames=4)
    assert not os.path.exists(os.path.join(frames, "latents"))
    # A file, or a folder under a file.
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "train"):
        with pytest.raises(DatasetError, match=r"afile' is a file; give --out a folder"):
            encode_split(config, params, frames, str(out), batch_frames=4)
    # A training workdir's checkpoints (beside Orbax's steps).
    run = tmp_path / "run"
    (run / "checkpoints" / "40").mkdir(parents=True)
    out = run / "checkpoints" / "train"
    with pytest.raises(DatasetError) as err:
        encode_split(config, params, frames, str(out), batch_frames=4)
    assert str(err.value) == (
        f"cannot write the latent cache to {str(out)!r}: it is inside {run / 'checkpoints'}, the "
        f"checkpoints of a training workdir; give --out a folder of its own (e.g. "
        f"data/<name>_latents)."
    )
    assert os.listdir(run / "checkpoints") == ["40"]


def test_training_refuses_a_cache_of_frames_of_other_channels(setup, tmp_path):
    root, videos, config, system, params = setup  # data.channels=1
    out = str(tmp_path / "latents")
    encode_split(config, params, str(root / "frames"), out, batch_frames=4)
    assert json.load(open(os.path.join(out, CACHE_INFO)))["channels"] == 1
    check_cache_matches(config, out)
    with pytest.raises(
        config_lib.ConfigError,
        match=r"latents of 1-channel frames but config\.data\.channels is 3; set "
        r"--config\.data\.channels=1",
    ):
        check_cache_matches(config_with(config, data=dict(config.data, channels=3)), out)


ENCODE_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "encode_dataset.py")


def test_encode_dataset_script_writes_each_split_as_encode_split_does(setup, tmp_path):
    """Every split of --src becomes the same split of --out; overrides of fields the script
    does not read (the folders come from --src and --out) are refused before any work."""
    import subprocess
    import sys

    root, videos, config, _, params = setup
    src, out = tmp_path / "src", tmp_path / "out"
    splits = {"train": videos[:3], "test": videos[3:]}
    for split, split_videos in splits.items():
        write_split(str(src / split), split_videos)
    vq_file = str(tmp_path / "vq.safetensors")
    save_params_safetensors(vq_file, params)
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "from predvdm_jax import config as config_lib\n"
        "def get_config():\n"
        "    c = config_lib.default_config()\n"
        f"    c.data.image_size = {SIZE}\n"
        f"    c.vq.update({config.vq.to_dict()!r})\n"
        "    c.unet.update(channel_mult=(1,), attention_resolutions=())\n"
        f"    c.scale_factor, c.vq_chunk = {config.scale_factor}, {config.vq_chunk}\n"
        "    return config_lib.finalize(c)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def encode(*args):
        command = [sys.executable, ENCODE_SCRIPT, f"--config={config_file}", *args]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    refused = encode(
        f"--src={src}", f"--out={out}", f"--vq_params={vq_file}", "--config.data.train_dir=x"
    )
    assert refused.returncode == 1 and not out.exists(), refused.stderr
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: --config.data.train_dir (--src and --out name the folders) has no effect"
        )
    )
    done = encode(f"--src={src}", f"--out={out}", f"--vq_params={vq_file}", "--batch_frames=4")
    assert done.returncode == 0, done.stderr
    for split, split_videos in splits.items():
        expected = tmp_path / "expected" / split
        encode_split(config, params, str(src / split), str(expected), batch_frames=4)
        got_shards, got = read_cache(str(out / split))
        assert list(got_shards.frame_counts) == [len(v) for v in split_videos]
        for a, b in zip(got, read_cache(str(expected))[1], strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_latent_cache_folder_that_does_not_exist_says_so_and_what_makes_it(tmp_path):
    missing = str(tmp_path / "latents" / "train")
    with pytest.raises(DatasetError) as err:
        read_cache_info(missing)
    assert str(err.value) == (
        f"the latent cache {missing} does not exist; make it with scripts/encode_dataset.py "
        f"--src=<frame dataset> --out=<folder> (which writes <folder>/train, <folder>/test, "
        f"...), or point data.latent_train_dir / data.latent_test_dir at a cache."
    )


def test_unit_std_scale_factor_gives_a_cache_of_unit_std(setup, tmp_path):
    """LDM's scale_by_std: encoded with the measured factor, the latents have std 1 (16 videos
    of 2 frames, so the 32 measured clips hold every frame twice, i.e. the whole split)."""
    from predvdm_jax.data.latent_cache import unit_std_scale_factor

    _, _, config, _, params = setup
    rng = np.random.default_rng(5)
    videos = [rng.integers(0, 256, (2, SIZE, SIZE), dtype=np.uint8) for _ in range(16)]
    write_split(str(tmp_path / "frames"), videos)
    factor = unit_std_scale_factor(config, params, str(tmp_path / "frames"))
    assert factor == float(f"{factor:.5g}")  # printed exactly
    scaled = config_lib.with_overrides(config, {"scale_factor": factor})
    encode_split(scaled, params, str(tmp_path / "frames"), str(tmp_path / "latents"), "float32")
    _, cached = read_cache(str(tmp_path / "latents"))
    assert float(np.concatenate(cached).std()) == pytest.approx(1.0, rel=1e-4)
    assert read_cache_info(str(tmp_path / "latents"))["scale_factor"] == factor

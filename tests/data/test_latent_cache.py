"""Latent cache: values equal LatentDiffusion.encode (and the bare VQ encoder), structure kept,
readable by the loader, resumable after an interruption."""

import json
import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predvdm_jax import config as config_lib
from predvdm_jax.data.hdf5 import DatasetError, VideoShards, write_split
from predvdm_jax.data.latent_cache import CACHE_INFO, check_cache_matches, encode_split
from predvdm_jax.data.loader import to_model_range, train_iterator
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.models.autoencoder import VQModel

SIZE = 16
FRAME_COUNTS = (3, 5, 2, 4, 6)   # shards of 2, 2, 1 videos


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8) for n in FRAME_COUNTS]
    write_split(str(root / "frames"), videos, vids_per_shard=2)
    c = config_lib.default_config()
    c.data.image_size = SIZE
    c.vq.update(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, resolution=SIZE, n_embed=16)
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
    assert encode_split(config, params, str(root / "frames"), out, dtype="float16",
                        batch_frames=4) == 3
    shards, cached = read_cache(out)
    assert sorted(os.listdir(out)) == sorted(os.listdir(root / "frames") + [CACHE_INFO])
    assert tuple(shards.frame_counts) == FRAME_COUNTS
    assert shards.dtype == np.float16 and shards.frame_shape == (SIZE // 4, SIZE // 4, 3)
    frames = to_model_range(np.concatenate(videos)[..., None])   # every frame, one batch
    expected = np.asarray(system.encode(params, jnp.asarray(frames)[None]))[0]
    # independent of LatentDiffusion: the bare encoder on RGB-repeated frames × scale_factor
    bare = np.asarray(system.vq.apply({"params": params}, np.repeat(frames, 3, axis=-1),
                                      method=VQModel.encode)) * 0.5
    np.testing.assert_allclose(expected, bare, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(cached).astype(np.float32), expected,
                               rtol=2 ** -10, atol=1e-4)
    info = json.load(open(os.path.join(out, CACHE_INFO)))
    assert info["dtype"] == "float16" and info["scale_factor"] == 0.5

    batch = next(train_iterator(out, 2, 2, seed=0, kind="latents", num_threads=1, prefetch=1))
    assert set(batch) == {"latents"}
    assert batch["latents"].shape == (2, 2, SIZE // 4, SIZE // 4, 3)
    assert batch["latents"].dtype == np.float32


def test_interrupted_cache_resumes_and_refuses_other_settings(setup):
    root, videos, config, system, params = setup
    out = str(root / "latents32")
    assert encode_split(config, params, str(root / "frames"), out, dtype="float32",
                        batch_frames=3, max_shards=1) == 1
    first = os.path.join(out, "shard_0001.hdf5")
    written_at = os.path.getmtime(first)
    # a half-written shard from the interruption
    with open(os.path.join(out, "shard_0002.hdf5.tmp"), "wb") as f:
        f.write(b"partial")
    with pytest.raises(DatasetError, match="another dtype"):
        encode_split(config, params, str(root / "frames"), out, dtype="float16")
    assert encode_split(config, params, str(root / "frames"), out, dtype="float32",
                        batch_frames=3) == 2
    assert os.path.getmtime(first) == written_at
    assert not any(name.endswith(".tmp") for name in os.listdir(out))
    shards, cached = read_cache(out)
    assert tuple(shards.frame_counts) == FRAME_COUNTS and shards.dtype == np.float32
    frames = to_model_range(np.concatenate(videos)[..., None])
    expected = np.asarray(system.encode(params, jnp.asarray(frames)[None]))[0]
    np.testing.assert_allclose(np.concatenate(cached), expected, rtol=1e-5, atol=1e-5)
    with h5py.File(first, "r") as f:
        assert sorted(f.keys()) == ["0", "1", "len", "videos"]


def test_cache_records_its_vq_file_and_refuses_another_scale_or_vq(setup, caplog):
  root, videos, config, system, params = setup
  out = str(root / "checked")
  encode_split(config, params, str(root / "frames"), out, batch_frames=4, max_shards=1,
               vq_params_path="elsewhere/vq.safetensors")
  info = json.load(open(os.path.join(out, CACHE_INFO)))
  assert info["vq_params"] == os.path.abspath("elsewhere/vq.safetensors")

  check_cache_matches(config, out)
  other = config.copy_and_resolve_references()
  other.vq.dropout = 0.5   # dropout leaves the encoder's latents unchanged
  other.vq_params = "another/path.safetensors"
  check_cache_matches(other, out)
  other.scale_factor = 0.25
  with pytest.raises(config_lib.ConfigError,
                     match=r"scale_factor 0\.5 but config\.scale_factor is 0\.25.*"
                     r"--config\.scale_factor=0\.5"):
    check_cache_matches(other, out)
  other = config.copy_and_resolve_references()
  other.vq.update(n_embed=32, ch_mult=(1, 2, 2))
  with pytest.raises(config_lib.ConfigError,
                     match=r"vq\.ch_mult \[1, 1, 1\] \(config: \[1, 2, 2\]\), "
                     r"vq\.n_embed 16 \(config: 32\)"):
    check_cache_matches(other, out)

  os.remove(os.path.join(out, CACHE_INFO))
  check_cache_matches(other, out)   # an older cache: a warning, no error
  assert "no cache_info.json" in caplog.text

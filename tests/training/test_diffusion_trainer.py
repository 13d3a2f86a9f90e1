"""The denoiser trainer end to end on a tiny latent dataset, and the inference bundle."""

import json
import os
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from predvdm_jax import config as config_lib, mesh as mesh_lib
from predvdm_jax.data import hdf5, latent_cache, loader
from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
from predvdm_jax.interop import bundle as bundle_lib, predvdm_ckpt
from predvdm_jax.interop.params import load_vq_params
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors
from predvdm_jax.training import checkpoint, diffusion_trainer
from random_params import random_params_from_init

COND, K, LATENT = 2, 2, 4
PREVIEW_CLIPS, PREVIEW_FRAMES = 3, 3


def _config(tmp_path):
    c = config_lib.default_config()
    c.data.update(
        dict(
            image_size=4 * LATENT,
            channels=1,
            cond_frames=COND,
            pred_frames=K,
            frames_per_sample=COND + K,
            batch_size=4,
            num_threads=1,
            prefetch=1,
            latent_train_dir=str(tmp_path / "latents"),
            latent_test_dir=str(tmp_path / "latents"),
            test_dir=str(tmp_path / "frames_test"),  # the rollout previews show frames
        )
    )
    c.vq.update(dict(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, n_embed=16, resolution=16))
    c.vq_params = str(tmp_path / "vq.safetensors")
    c.unet.update(
        dict(
            model_channels=32,
            channel_mult=(1,),
            num_res_blocks=1,
            attention_resolutions=(),
            num_head_channels=32,
            dropout=0.0,
        )
    )
    c.model.mode = "tc"
    c.model.remat = True  # the memory knobs end to end: remat, and 2 microbatches per step
    c.diffusion.loss_reduction = "mean"
    c.optimizer.update(dict(base_learning_rate=3e-3, scale_lr=False, warmup_steps=0))
    c.train.update(
        dict(
            num_steps=40,
            log_every=5,
            save_every=40,
            ema_rate=0.9,
            grad_accum_steps=2,
            eval_every=20,
            eval_clips=10,  # two batches of 4 and one of 2 (padded)
            keep_best=1,
            preview_every=40,
            preview_clips=PREVIEW_CLIPS,
        )
    )
    c.eval.pred_frames = PREVIEW_FRAMES
    c.sampling.steps = 4
    return config_lib.finalize(c)


def _tiny_run(tmp_path):
    """Two smooth latent videos to overfit (noise prediction on them gets easier with
    training) as a latent cache, test frames for the previews, a VQ file and the config;
    returns ``(config, model, vq_params, test_videos)``."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 1, LATENT, LATENT, 3)).astype(np.float32)
    videos = [np.repeat(b, 8, axis=0) + 0.1 * np.arange(8)[:, None, None, None] for b in base]
    writer = hdf5.ShardWriter(hdf5.shard_path(str(tmp_path / "latents"), 1), kind="latents")
    for video in videos:
        writer.add_video(video.astype(np.float16))
    writer.close()
    test_videos = [rng.integers(0, 256, (8, 16, 16), dtype=np.uint8) for _ in range(PREVIEW_CLIPS)]
    hdf5.write_split(str(tmp_path / "frames_test"), test_videos)
    config = _config(tmp_path)
    model = LatentDiffusion.from_config(config)
    vq_params = random_params_from_init(model.init_vq)
    save_params_safetensors(config.vq_params, vq_params)
    # the cache stands for the test frames' latents (the previews read the frames)
    info = latent_cache.cache_info(config, str(tmp_path / "frames_test"), "float16", vq_params)
    with open(tmp_path / "latents" / latent_cache.CACHE_INFO, "w") as f:
        json.dump(info, f, default=list)
    return config, model, vq_params, test_videos


def test_loss_decreases_and_bundle_predicts_like_its_checkpoint(tmp_path):
    config, model, vq_params, test_videos = _tiny_run(tmp_path)

    # Validation of the untrained denoiser, whose zero-initialised output conv predicts ε = 0:
    # its mean-reduced loss is the mean over the 10 clips of the mean of ε² of clip i's fixed
    # noise, whatever the batch size (the padding of the last batch is masked out).
    stream = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    expected = np.mean(
        [
            np.mean(
                np.square(jax.random.normal(jax.random.fold_in(stream, i), (K, LATENT, LATENT, 3)))
            )
            for i in range(10)
        ]
    )
    mesh = mesh_lib.make_mesh(1, 1)
    fresh = jax.device_get(model.init_denoiser(jax.random.PRNGKey(0)))
    wider = config.copy_and_resolve_references()
    wider.data.batch_size = 8
    for batch_config, shapes in ((config, [4, 4, 4]), (wider, [8, 8])):
        batches = diffusion_trainer.load_validation_batches(batch_config)
        assert [b["latents"].shape[0] for b in batches] == shapes
        validation_fn = diffusion_trainer.make_validation_fn(
            model, None, batches, mesh, config.seed
        )
        untrained = validation_fn(types.SimpleNamespace(params=fresh, ema_params=fresh))
        assert untrained["val/loss"] == pytest.approx(expected, rel=1e-5), untrained
        assert untrained["val/loss_ema"] == untrained["val/loss"]

    workdir = str(tmp_path / "run")
    state = diffusion_trainer.train(config, workdir)
    assert int(state.step) == 40
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 8
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    validation = [row for row in rows if "val/loss" in row]
    assert [row["step"] for row in validation] == [20, 40]
    assert validation[-1]["val/loss"] < 0.7 * untrained["val/loss"], validation
    again = validation_fn(state)  # fixed clips, timesteps and noise: the logged value again
    assert again["val/loss_ema"] == pytest.approx(validation[-1]["val/loss_ema"], rel=1e-6)
    best_step, best_value = min(
        ((r["step"], r["val/loss_ema"]) for r in validation), key=lambda r: r[1]
    )
    assert sorted(os.listdir(os.path.join(workdir, "best"))) == [f"step_{best_step:08d}"]
    best = bundle_lib.load_bundle(os.path.join(workdir, "best", f"step_{best_step:08d}"))
    assert best.source == bundle_lib.BundleSource("run", os.path.abspath(workdir), "EMA", 40, 40)
    with open(os.path.join(workdir, "best", f"step_{best_step:08d}", "metric.json")) as f:
        assert json.load(f)["value"] == pytest.approx(best_value, rel=1e-6)
    assert best_step == 40  # the EMA weights keep improving on this overfit
    jax.tree.map(
        np.testing.assert_array_equal, best.params, jax.tree.map(np.asarray, state.ema_params)
    )

    _check_preview(config, model, state, workdir, rows, test_videos)

    # Back to PredVDM's format: the PyTorch checkpoint holds the run's raw and EMA weights.
    # An earlier export (found by the config it records, not by its suffix) is replaced.
    for exported in (tmp_path / "run.ckpt", tmp_path / "run.safetensors"):
        for _ in range(2):
            step, exported_config = checkpoint.export_latent_diffusion_checkpoint(
                workdir, str(exported)
            )
            assert step == 40 and exported_config.to_dict() == config.to_dict()
        back = predvdm_ckpt.load_predvdm_checkpoint(exported, model.denoiser)
        for got, want in ((back.params, state.params), (back.ema_params, state.ema_params)):
            jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, want))
        assert back.ema_num_updates == 40 and back.ema_decay == pytest.approx(0.9)

    from_checkpoint = checkpoint.load_from_checkpoint(workdir)
    np.testing.assert_array_equal(
        jax.tree.leaves(jax.device_get(from_checkpoint.params))[0],
        jax.tree.leaves(jax.device_get(state.ema_params))[0],
    )
    bundle_lib.save_bundle(str(tmp_path / "bundle"), from_checkpoint)
    loaded = bundle_lib.load_bundle(str(tmp_path / "bundle"))
    assert loaded.config.to_dict() == config.to_dict()
    assert loaded.source == best.source  # step 40 of the run, EMA weights
    _, source = checkpoint.load_model(str(tmp_path / "bundle"))
    assert (source.step, source.weights) == (40, "EMA")
    assert "opt_state" not in os.listdir(tmp_path / "bundle")
    predict = LatentDiffusion.from_config(loaded.config).make_predict_fn(3)
    cond = np.random.default_rng(1).uniform(-1, 1, (2, COND, 16, 16, 1)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    want = predict(from_checkpoint.params, from_checkpoint.vq_params, cond, key)["frames"]
    got = predict(loaded.params, loaded.vq_params, cond, key)["frames"]
    assert got.shape == (2, 3, 16, 16, 1)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # The VQ file moved since training: named before the restore, and found where it is now.
    moved = str(tmp_path / "moved_vq.safetensors")
    os.rename(config.vq_params, moved)
    with pytest.raises(FileNotFoundError, match=r"recorded are not there.*--config\.vq_params="):
        checkpoint.load_from_checkpoint(workdir)
    relocated, source = checkpoint.load_model(workdir=workdir, overrides={"vq_params": moved})
    assert source == f"checkpoint {workdir} step 40 (EMA weights)"  # the report's model source
    assert (source.step, source.weights) == (40, "EMA")  # what sample.json records
    assert relocated.config.vq_params == moved
    jax.tree.map(np.testing.assert_array_equal, relocated.vq_params, from_checkpoint.vq_params)
    checkpoint.export_bundle(workdir, str(tmp_path / "bundle"), vq_params=moved)
    assert bundle_lib.load_bundle(str(tmp_path / "bundle")).config.vq_params == moved
    with pytest.raises(ValueError, match=r"bundle is an inference bundle .*take it as --bundle="):
        checkpoint.load_model(workdir=str(tmp_path / "bundle"))
    with pytest.raises(config_lib.ConfigError, match=r"no effect with bundle .*holds its own VQ"):
        checkpoint.load_model(bundle=str(tmp_path / "bundle"), overrides={"vq_params": moved})


def _check_preview(config, model, state, workdir, rows, test_videos):
    """The logged preview image shows the test clips and the EMA weights' rollout of them,
    and its scores are scikit-image's PSNR and SSIM of that rollout."""
    num_frames = COND + PREVIEW_FRAMES
    windows = loader.eval_windows(
        np.array([len(v) for v in test_videos]), PREVIEW_CLIPS, num_frames, config.eval.seed
    )
    real = np.stack([test_videos[v][s : s + num_frames] for v, s in windows])
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 4)
    vq_params = load_vq_params(config.vq_params)
    cond = real[:, :COND, :, :, None] / 127.5 - 1.0
    predicted = model.make_predict_fn(PREVIEW_FRAMES)(state.ema_params, vq_params, cond, key)
    fake = np.round((np.clip(np.asarray(predicted["frames"])[..., 0], -1, 1) + 1) * 127.5)

    image = np.asarray(Image.open(os.path.join(workdir, "images", "preview_rollout_00000040.png")))
    gap = 2  # the grid's white separator
    tiles = [
        [
            image[r * (16 + gap) : r * (16 + gap) + 16, t * (16 + gap) : t * (16 + gap) + 16]
            for t in range(num_frames)
        ]
        for r in range(2 * PREVIEW_CLIPS)
    ]
    assert image.shape == (2 * PREVIEW_CLIPS * (16 + gap) - gap, num_frames * (16 + gap) - gap)
    for clip in range(PREVIEW_CLIPS):
        np.testing.assert_array_equal(np.stack(tiles[2 * clip]), real[clip])
        np.testing.assert_array_equal(np.stack(tiles[2 * clip + 1][:COND]), real[clip, :COND])
        # The preview's program and this one may round a pixel near .5 apart.
        np.testing.assert_allclose(np.stack(tiles[2 * clip + 1][COND:]), fake[clip], atol=1)

    (logged,) = [row for row in rows if "preview/psnr" in row]
    assert logged["step"] == 40
    real01 = real[:, COND:] / 255.0
    fake01 = (np.clip(np.asarray(predicted["frames"], np.float64)[..., 0], -1, 1) + 1) / 2
    pairs = [
        (real01[c, t], fake01[c, t]) for c in range(PREVIEW_CLIPS) for t in range(PREVIEW_FRAMES)
    ]
    psnr = np.mean([peak_signal_noise_ratio(a, b, data_range=1) for a, b in pairs])
    ssim = np.mean(
        [
            structural_similarity(
                a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
            )
            for a, b in pairs
        ]
    )
    assert logged["preview/psnr"] == pytest.approx(psnr, rel=1e-4)
    assert logged["preview/ssim"] == pytest.approx(ssim, abs=1e-4)


def _write_cache(split_dir, made_with, vq_params, source=None):
    """A one-video latent split with the ``cache_info.json`` of config ``made_with``, encoded
    from ``source`` (default: its test frames)."""
    writer = hdf5.ShardWriter(hdf5.shard_path(str(split_dir), 1), kind="latents")
    writer.add_video(np.zeros((8, LATENT, LATENT, 3), np.float16))
    writer.close()
    source = str(source or made_with.data.test_dir)
    info = latent_cache.cache_info(made_with, source, "float16", vq_params)
    with open(os.path.join(split_dir, latent_cache.CACHE_INFO), "w") as f:
        json.dump(info, f, default=list)


def test_training_refuses_a_cache_of_another_scale_factor_or_vq(tmp_path, monkeypatch):
    config = _config(tmp_path)
    assert config.scale_factor == 1.0 and config.vq.n_embed == 16
    scaled = config.copy_and_resolve_references()
    scaled.scale_factor = 4.0
    other_vq = config.copy_and_resolve_references()
    other_vq.vq.n_embed = 32
    workdir = str(tmp_path / "run")
    vq_params = random_params_from_init(LatentDiffusion.from_config(config).init_vq)

    # The VQ file the run records is needed even when every batch is a cached latent (for
    # sampling, evaluation and export later): a wrong path fails before training.
    _write_cache(tmp_path / "latents", config, vq_params)
    with pytest.raises(FileNotFoundError, match=r"vq\.safetensors' \(config\.vq_params\) not"):
        diffusion_trainer.train(config, workdir)
    save_params_safetensors(config.vq_params, vq_params)

    _write_cache(tmp_path / "latents", scaled, vq_params)
    with pytest.raises(
        config_lib.ConfigError,
        match=r"scale_factor 4\.0 but config\.scale_factor is 1\.0.*--config\.scale_factor=4\.0",
    ):
        diffusion_trainer.train(config, workdir)

    _write_cache(tmp_path / "latents", other_vq, vq_params)
    with pytest.raises(config_lib.ConfigError, match=r"vq\.n_embed 32 \(config: 16\)"):
        diffusion_trainer.train(config, workdir)

    # The validation cache (train.eval_every > 0) is checked too.
    _write_cache(tmp_path / "latents", config, vq_params)
    config.data.latent_test_dir = str(tmp_path / "test_latents")
    _write_cache(tmp_path / "test_latents", scaled, vq_params)
    with pytest.raises(config_lib.ConfigError, match=r"test_latents holds latents encoded"):
        diffusion_trainer.train(config, workdir)
    assert not os.path.exists(workdir)

    # A validation cache of other frames than data.test_dir, which the previews read: the run
    # would validate on one dataset and preview another.
    mine = tmp_path / "mine_test"
    hdf5.write_split(str(mine), [np.zeros((8, 16, 16), np.uint8)])
    _write_cache(tmp_path / "test_latents", config, vq_params, source=tmp_path / "digits_test")
    config.data.test_dir = str(mine)
    with pytest.raises(
        config_lib.ConfigError,
        match=rf"data\.latent_test_dir={tmp_path}/test_latents was encoded from "
        rf"{tmp_path}/digits_test, but data\.test_dir is {mine}: the run would mix two "
        r"datasets\. .*--config\.data\.latent_test_dir= to read the frames, or point "
        rf"--config\.data\.test_dir at {tmp_path}/digits_test\.$",
    ):
        diffusion_trainer.train(config, workdir)
    # The same frames moved since the encode (equal fingerprints) are the same data; without
    # previews, frames that are not there are not read beside the cache.
    monkeypatch.setattr(diffusion_trainer.loop, "train_loop", lambda *args, **kwargs: "trained")
    _write_cache(tmp_path / "test_latents", config, vq_params, source=mine)
    os.rename(mine, tmp_path / "moved_test")
    config.data.test_dir = str(tmp_path / "moved_test")
    assert diffusion_trainer.train(config, workdir) == "trained"
    config.data.test_dir = str(tmp_path / "not_there")
    config.train.preview_every = 0
    assert diffusion_trainer.train(config, workdir) == "trained"
    config.data.latent_test_dir = str(tmp_path / "latents")

    # A matching cache trains; shards without cache_info.json are refused, naming the fix.
    config.train.update(dict(eval_every=0, preview_every=0, keep_best=0))
    assert diffusion_trainer.train(config, workdir) == "trained"
    os.remove(os.path.join(tmp_path / "latents", latent_cache.CACHE_INFO))
    with pytest.raises(
        hdf5.DatasetError,
        match=r"latents has no cache_info\.json, so it is not a latent cache made by "
        r"scripts/encode_dataset\.py; re-run scripts/encode_dataset\.py to make it",
    ):
        diffusion_trainer.train(config, workdir)
    assert not os.path.exists(workdir)


def test_init_from_a_bundle_starts_the_weights_and_ema_from_its_weights(tmp_path, monkeypatch):
    """Fine-tuning: a new run with train.init_from starts from the bundle's EMA weights (Adam
    moves a weight by about lr per step, so after 2 steps of lr 1e-7 they are within 1e-6 of
    them, far from a fresh initialisation); a bundle of another model is one ConfigError.
    Paths given relative to the working directory are recorded absolute, so the run loads
    from anywhere."""
    config, model, vq_params, _ = _tiny_run(tmp_path)
    start = random_params_from_init(model.init_denoiser, 11)
    bundle_lib.save_bundle(str(tmp_path / "start"), bundle_lib.Bundle(config, start, vq_params))
    run = config.copy_and_resolve_references()
    monkeypatch.chdir(tmp_path)
    run.train.update(dict(init_from="start", num_steps=2, save_every=2, log_every=1))
    run.train.update(dict(eval_every=0, keep_best=0, preview_every=0))
    relative = {
        field: os.path.relpath(config_lib.field_value(run, field), tmp_path)
        for field in ("vq_params", "data.latent_train_dir", "data.test_dir")
    }
    run = config_lib.with_overrides(run, relative)
    run.optimizer.base_learning_rate = 1e-7
    state = jax.device_get(diffusion_trainer.train(run, "run"))
    monkeypatch.chdir(tmp_path / "start")
    recorded, _ = checkpoint.load_model(workdir=str(tmp_path / "run"))
    for field, path in (
        ("vq_params", config.vq_params),
        ("data.latent_train_dir", config.data.latent_train_dir),
        ("data.test_dir", config.data.test_dir),
        ("train.init_from", str(tmp_path / "start")),
    ):
        assert config_lib.field_value(recorded.config, field) == path, field
    jax.tree.map(np.testing.assert_array_equal, recorded.vq_params, vq_params)
    monkeypatch.chdir(tmp_path)
    fresh = jax.device_get(nn.unbox(model.init_denoiser(jax.random.PRNGKey(run.seed))))
    for weights in (state.params, state.ema_params):
        moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), weights, start)
        assert max(jax.tree.leaves(moved)) < 1e-6
    assert int(state.step) == 2
    far = jax.tree.map(lambda a, b: np.abs(a - np.asarray(b)).max(), fresh, start)
    assert max(jax.tree.leaves(far)) > 1e-2

    wider = config.copy_and_resolve_references()
    wider.unet.model_channels = 64
    other = random_params_from_init(LatentDiffusion.from_config(wider).init_denoiser, 1)
    bundle_lib.save_bundle(str(tmp_path / "wider"), bundle_lib.Bundle(wider, other, vq_params))
    run.train.init_from = str(tmp_path / "wider")
    with pytest.raises(config_lib.ConfigError) as error:
        diffusion_trainer.train(run, str(tmp_path / "another_run"))
    message = str(error.value)
    assert "holds another model: unet.model_channels 64 in " in message and "32 now" in message
    assert not os.path.exists(tmp_path / "another_run" / "checkpoints")
    # The run's VQ params missing: the bundle's own VQ is named.
    no_vq = config_lib.with_overrides(
        run, {"train.init_from": str(tmp_path / "start"), "vq_params": str(tmp_path / "gone")}
    )
    with pytest.raises(FileNotFoundError) as error:
        diffusion_trainer.train(no_vq, str(tmp_path / "another_run"))
    assert str(error.value).endswith(
        f"to fine-tune with the VQ of the bundle train.init_from names: "
        f"--config.vq_params={tmp_path / 'start' / 'vq.safetensors'}"
    )
    run.train.init_from = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"^train\.init_from: .*missing' does not exist"):
        diffusion_trainer.train(run, str(tmp_path / "another_run"))

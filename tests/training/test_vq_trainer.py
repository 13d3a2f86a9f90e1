"""VQ training on the engine: loss goes down, resume, discriminator schedule, adaptive weight,
codebook usage and dead-code restarts. A tiny VQ (ch 32, one level, so f = 1: the trainer does
not depend on the depth, and compiles stay short) on 16×16 frames; the demo config trains f = 4."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from jax.experimental.compilation_cache import compilation_cache
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from predvdm_jax import config as config_lib
from predvdm_jax.data.hdf5 import DatasetError, write_split
from predvdm_jax.interop.torch_checkpoint import load_params_safetensors
from predvdm_jax.models.vq_losses import PatchDiscriminator
from predvdm_jax.training import checkpoint, vq_trainer
from random_params import random_params_from_init

SIZE = 16


def _moving_square_videos(rng, num_videos, num_frames):
    videos = []
    for _ in range(num_videos):
        video = np.zeros((num_frames, SIZE, SIZE), np.uint8)
        y, x = rng.integers(0, SIZE - 6, size=2)
        dy, dx = rng.integers(-1, 2, size=2)
        level = rng.integers(120, 256)
        for t in range(num_frames):
            yy, xx = np.clip(y + t * dy, 0, SIZE - 6), np.clip(x + t * dx, 0, SIZE - 6)
            video[t, yy : yy + 6, xx : xx + 6] = level
        videos.append(video)
    return videos


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """Persistent compilation cache for this module, so the resumed run reuses the first run's
    compiled programs (the settings are restored afterwards)."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    write_split(str(root / "train"), _moving_square_videos(rng, 8, 5))
    write_split(str(root / "test"), _moving_square_videos(rng, 4, 5))
    return root


def tiny_config(dataset, **vq_train):
    c = config_lib.default_config()
    c.data.train_dir = str(dataset / "train")
    c.data.test_dir = str(dataset / "test")
    c.data.image_size = SIZE
    c.data.channels = 1
    c.data.num_threads = 1
    c.data.prefetch = 1
    c.vq.update(ch=32, ch_mult=(1,), num_res_blocks=1, resolution=SIZE, n_embed=16)
    c.vq_chunk = 8
    c.train.grad_accum_steps = 2  # the denoiser's setting: VQ training must not take it
    c.vq_train.update(
        batch_size=4,
        num_steps=24,
        learning_rate=2e-3,
        scale_lr=False,
        lr_end_fraction=0.5,
        disc_weight=0.0,
        dead_code_restart_every=8,
        log_every=4,
        save_every=12,
        eval_every=12,
        eval_clips=4,
        eval_frames=2,
        max_to_keep=3,
    )
    c.vq_train.update(vq_train)
    return config_lib.finalize(c)


def read_logs(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_trains_with_disc_schedule_logs_usage_and_resumes_exactly(dataset, tmp_path, capfd):
    config = tiny_config(dataset, disc_weight=0.8, disc_start=12, disc_layers=1, disc_channels=8)
    workdir = str(tmp_path / "run")
    final = vq_trainer.train_vq(config, workdir, show_progress=False)
    assert "step/s" not in capfd.readouterr().err  # no tqdm bar (demo.py --noprogress)
    logs = read_logs(workdir)
    train = {r["step"]: r for r in logs if "rec_loss" in r}
    assert sorted(train) == [4, 8, 12, 16, 20, 24]
    assert min(train[8]["rec_loss"], train[12]["rec_loss"]) < 0.7 * train[4]["rec_loss"]
    for n, r in train.items():
        # perplexity exp(H) of the batch's code frequencies lies in [1, number of codes used]
        assert 0 <= r["dead_codes"] <= 16 and r["dead_codes"] == int(r["dead_codes"])
        assert 1.0 <= r["perplexity"] <= 16.0 - r["dead_codes"] + 1e-4
        # lr decays linearly from 2e-3 to 1e-3 at step 24; logged lr is the one of update n-1
        assert r["lr"] == pytest.approx(2e-3 * (1 - 0.5 * (n - 1) / 24), rel=1e-5)
        # dead-code restarts (every 8 updates) only revive codes unused since the last one, so
        # none of this batch's codes: at most its dead codes; none between restarts
        assert r["restarted_codes"] == int(r["restarted_codes"])
        assert 0 <= r["restarted_codes"] <= (r["dead_codes"] if n % 8 == 0 else 0)
        # update n is made at state.step n-1: the discriminator is off while n-1 < disc_start
        if n <= 12:
            assert all(r[name] == 0.0 for name in vq_trainer.DISC_METRICS), r
            assert r["loss"] == pytest.approx(r["nll_loss"] + r["quant_loss"], rel=1e-6)
        else:
            assert r["disc_factor"] == 1.0 and r["d_weight"] > 0.0 and r["disc_loss"] > 0.0
            assert r["loss"] == pytest.approx(
                r["nll_loss"] + r["d_weight"] * r["g_loss"] + r["quant_loss"], rel=1e-5, abs=1e-6
            )
    # A restart does happen: 16 codes for these few shapes leave some unused in updates 1-8
    # (9 here, 10 in update 8's batch); with restarts a no-op this fails.
    assert train[8]["restarted_codes"] >= 1
    eval_logs = [r for r in logs if "test_psnr" in r]
    assert [r["step"] for r in eval_logs] == [12, 24]
    assert final["step"] == 24
    assert json.load(open(os.path.join(workdir, vq_trainer.VQ_EVAL_FILE)))["step"] == 24

    # The run records the file it wrote as config.vq_params (not the config's own path).
    assert config.vq_params != vq_trainer.params_path(workdir)
    assert checkpoint.saved_config(workdir).vq_params == vq_trainer.params_path(workdir)
    params = load_params_safetensors(vq_trainer.params_path(workdir))
    expected = jax.eval_shape(
        lambda: vq_trainer.VQObjective.from_config(config).init_params(jax.random.PRNGKey(0), SIZE)
    )
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, expected)

    # The step-24 test metrics are those of the final params on the fixed test frames, each
    # frame's quantized reconstruction clamped to [-1, 1], its RGB mean taken, both mapped to
    # [0, 1]: PSNR / SSIM are scikit-image's (PredVDM's SSIM: Gaussian σ 1.5, population
    # covariance, data range 1) averaged over the 4 × 2 frames; perplexity is exp(entropy) of
    # the frequencies of the code indices of all their latent positions.
    clips = vq_trainer.load_eval_frames(config.data.test_dir, 4, 2, config.eval.seed)
    model = vq_trainer.VQObjective.from_config(config).model
    frames = jnp.asarray(clips.reshape((-1, SIZE, SIZE, 1)))

    def reconstruct(p):
        output = model.apply({"params": p}, jnp.repeat(frames, 3, axis=-1))
        recon = np.asarray(jnp.clip(output.reconstruction, -1, 1).mean(-1))
        return recon.reshape(4, 2, SIZE, SIZE), np.asarray(output.indices)

    recon, indices = reconstruct(params)
    target = (clips[..., 0].reshape(-1, SIZE, SIZE).astype(np.float64) + 1) / 2
    rebuilt = (recon.reshape(-1, SIZE, SIZE).astype(np.float64) + 1) / 2
    assert len(target) == len(rebuilt) == 8
    psnr = np.mean([peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(target, rebuilt)])
    ssim = np.mean(
        [
            structural_similarity(
                a,
                b,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for a, b in zip(target, rebuilt)
        ]
    )
    counts = np.bincount(indices.reshape(-1), minlength=16)
    assert indices.size == 8 * SIZE * SIZE and counts.size == 16  # f = 1: a code per pixel
    probs = counts[counts > 0] / counts.sum()
    perplexity = np.exp(-np.sum(probs * np.log(probs)))
    for logged in (eval_logs[-1], final):
        assert logged["test_psnr"] == pytest.approx(psnr, rel=1e-5)
        assert logged["test_ssim"] == pytest.approx(ssim, abs=1e-5)
        assert logged["test_perplexity"] == pytest.approx(perplexity, rel=1e-5)
        assert logged["test_dead_codes"] == np.sum(counts == 0)

    # Interrupted after step 12 (the step-24 checkpoint never finished): the rerun resumes from
    # step 12, with the discriminator's state, and ends with the uninterrupted run's params.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "24"))
    assert vq_trainer.train_vq(config, workdir)["step"] == 24
    assert [r["step"] for r in read_logs(workdir) if "rec_loss" in r] == [4, 8, 12, 16, 20, 24]
    resumed = load_params_safetensors(os.path.join(workdir, vq_trainer.VQ_PARAMS_FILE))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), resumed, params
    )

    # The logged image: per test clip its frames, then the final params' reconstructions.
    image = np.asarray(
        Image.open(os.path.join(workdir, "images", "test_reconstruction_00000024.png"))
    )
    recon, _ = reconstruct(resumed)
    tile = lambda row, t: image[row * (SIZE + 2) : row * (SIZE + 2) + SIZE, t * (SIZE + 2) :][
        :, :SIZE
    ]
    for clip in range(4):
        for t in range(2):
            np.testing.assert_array_equal(
                tile(2 * clip, t), np.round((clips[clip, t, ..., 0] + 1) * 127.5)
            )
            np.testing.assert_allclose(
                tile(2 * clip + 1, t), (recon[clip, t] + 1) * 127.5, atol=1.01
            )


def test_adaptive_weight_matches_closed_form():
    """d_weight = clip(|∇_W nll| / (|∇_W g| + 1e-4), 0, 1e4) · disc_weight, W = decoder conv_out kernel.

    rec = conv(F, W) + b, so ∇_W L[k, l, i, o] = Σ_{b,y,x} ∇_rec L[b, y, x, o] · F_pad[b, y+k, x+l, i]
    with F the conv_out input (checked: the reconstruction is that convolution of the returned
    decoder features). With x far below every reconstruction ∇_rec nll = 1/N everywhere; ∇_rec g
    is the discriminator's input gradient. Both sums are taken here in float64.
    """
    c = config_lib.default_config()
    c.data.image_size = SIZE
    c.vq.update(ch=32, ch_mult=(1,), num_res_blocks=1, resolution=SIZE, n_embed=16)
    c.vq_train.update(disc_weight=0.8, disc_start=0, disc_layers=1, disc_channels=8)
    objective = vq_trainer.VQObjective.from_config(config_lib.finalize(c))
    params = jax.jit(objective.init_params, static_argnums=1)(jax.random.PRNGKey(0), SIZE)
    disc_params = jax.jit(objective.init_discriminator, static_argnums=1)(
        jax.random.PRNGKey(1), SIZE
    )
    x = jnp.full((2, SIZE, SIZE, 3), -3.0)
    rng = jax.random.PRNGKey(2)
    _, metrics, output = jax.jit(objective.adversarial_terms)(
        params, disc_params, x, rng, jnp.int32(5)
    )
    assert float(jnp.min(output.reconstruction)) > -3.0

    features = np.asarray(output.decoder_features, np.float64)
    padded = np.pad(features, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = np.stack(
        [
            np.stack([padded[:, i : i + SIZE, j : j + SIZE] for j in range(3)], axis=3)
            for i in range(3)
        ],
        axis=3,
    )  # (B, H, W, 3, 3, Cin): F_pad[b, y + k, x + l, i]
    # The features are conv_out's input: the reconstruction is that 3x3 convolution of them.
    conv_out = {k: np.asarray(v, np.float64) for k, v in params["decoder"]["conv_out"].items()}
    rec = np.einsum("bhwkli,klio->bhwo", patches, conv_out["kernel"]) + conv_out["bias"]
    np.testing.assert_allclose(output.reconstruction, rec, rtol=0, atol=1e-5)

    num = x.size
    patch_sums = patches.sum(axis=(0, 1, 2))  # (3, 3, Cin)
    nll_grad = np.repeat(patch_sums[..., None], 3, axis=-1) / num  # identical for each output

    disc = PatchDiscriminator(ndf=8, n_layers=1)
    g_of_rec = lambda rec: -jnp.mean(disc.apply({"params": disc_params}, rec))
    g_rec_grad = np.asarray(jax.jit(jax.grad(g_of_rec))(output.reconstruction), np.float64)
    g_grad = np.einsum("bhwo,bhwkli->klio", g_rec_grad, patches)
    expected = min(np.linalg.norm(nll_grad) / (np.linalg.norm(g_grad) + 1e-4), 1e4) * 0.8
    assert float(metrics["d_weight"]) == pytest.approx(expected, rel=2e-4)


def test_disc_loss_and_disc_factor_reach_both_sides_of_the_objective():
    """vq_train.disc_loss="vanilla", disc_factor=0.5: the discriminator loss is
    0.5 · ½(mean softplus(−D(x)) + mean softplus(D(x_rec))) from disc_start on, 0 before; the
    generator's adversarial term is scaled by 0.5 from then on too."""
    c = config_lib.default_config()
    c.data.image_size = SIZE
    c.vq.update(ch=32, ch_mult=(1,), num_res_blocks=1, resolution=SIZE, n_embed=16)
    c.vq_train.update(disc_weight=0.8, disc_start=10, disc_layers=1, disc_channels=8)
    c.vq_train.update(disc_loss="vanilla", disc_factor=0.5)
    objective = vq_trainer.VQObjective.from_config(config_lib.finalize(c))
    disc_params = objective.init_discriminator(jax.random.PRNGKey(1), SIZE)
    # logits of order 1 (the init's are ~0.01), so softplus and hinge differ clearly
    disc_params["conv_2"]["kernel"] = disc_params["conv_2"]["kernel"] * 300.0
    frames, reconstruction = jax.random.uniform(jax.random.PRNGKey(2), (2, 2, SIZE, SIZE, 3))
    logit = lambda images: np.asarray(
        objective.discriminator.apply({"params": disc_params}, images), np.float64
    )
    real, fake = logit(frames), logit(reconstruction)
    assert np.abs(real).max() > 0.5 and np.abs(fake).max() > 0.5
    expected = 0.5 * 0.5 * (np.mean(np.logaddexp(0.0, -real)) + np.mean(np.logaddexp(0.0, fake)))
    d_loss = jax.jit(objective.discriminator_loss)
    before, _ = d_loss(disc_params, frames, reconstruction, jnp.int32(9))
    after, metrics = d_loss(disc_params, frames, reconstruction, jnp.int32(10))
    assert float(before) == 0.0
    assert float(after) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["disc_loss"]) == float(after)

    params = jax.jit(objective.init_params, static_argnums=1)(jax.random.PRNGKey(0), SIZE)
    adversarial = jax.jit(objective.adversarial_terms)
    for step, factor in ((9, 0.0), (10, 0.5)):
        loss, m, _ = adversarial(
            params, disc_params, frames, jax.random.PRNGKey(3), jnp.int32(step)
        )
        assert float(m["disc_factor"]) == factor
        assert float(loss) == pytest.approx(
            float(m["nll_loss"] + factor * m["d_weight"] * m["g_loss"] + m["quant_loss"]),
            rel=1e-5,
        )


def test_eval_frames_longer_than_the_test_videos_name_vq_train_eval_frames(dataset):
    with pytest.raises(DatasetError) as err:
        vq_trainer.load_eval_frames(str(dataset / "test"), 4, 6, seed=0)
    assert str(err.value) == (
        f"{dataset / 'test'} has videos of 5 frames, shorter than vq_train.eval_frames 6; "
        "set --config.vq_train.eval_frames=5 or less."
    )


def test_engine_config_maps_vq_train_onto_engine_fields(dataset):
    config = tiny_config(dataset, batch_size=6, num_steps=50, learning_rate=1e-4, scale_lr=True)
    derived = vq_trainer.engine_config(config)
    assert derived.data.batch_size == 6 and derived.train.num_steps == 50
    assert config.train.grad_accum_steps == 2 and derived.train.grad_accum_steps == 1
    assert derived.optimizer.base_learning_rate == 1e-4 and derived.optimizer.scale_lr
    assert (derived.optimizer.b1, derived.optimizer.b2, derived.optimizer.grad_clip) == (
        0.5,
        0.9,
        0.0,
    )
    assert config.data.batch_size == config_lib.default_config().data.batch_size


def test_perceptual_term_adds_weighted_lpips_and_needs_weights(tmp_path):
    from safetensors.numpy import save_file

    from predvdm_jax.models.lpips import LPIPS_PARAM_SHAPES, MIN_INPUT_SIZE, lpips_distance

    size = 32
    assert size >= MIN_INPUT_SIZE
    rng = np.random.default_rng(0)
    weights = {
        k: (np.abs(rng.normal(size=s)) if "lin" in k else 0.05 * rng.normal(size=s)).astype(
            np.float32
        )
        for k, s in LPIPS_PARAM_SHAPES.items()
    }
    path = str(tmp_path / "lpips.safetensors")
    save_file(weights, path)
    c = config_lib.default_config()
    c.data.image_size = size
    c.vq.update(ch=32, ch_mult=(1,), num_res_blocks=1, resolution=size, n_embed=16)
    c.vq_train.update(perceptual_weight=0.7, disc_weight=0.0)
    c.eval.lpips_params = path
    config = config_lib.finalize(c)
    objective = vq_trainer.VQObjective.from_config(config)
    params = jax.jit(objective.init_params, static_argnums=1)(jax.random.PRNGKey(0), size)
    x = jnp.asarray(rng.uniform(-1, 1, (2, size, size, 3)), jnp.float32)
    loss, metrics, output = jax.jit(objective.reconstruction_terms)(
        params, x, jax.random.PRNGKey(1)
    )
    rec = output.reconstruction
    lpips = lpips_distance(objective.lpips_params, x, rec, spatial=False)  # taming's average
    assert float(jnp.mean(lpips)) > 0
    expected_nll = float(jnp.mean(jnp.abs(x - rec)) + 0.7 * jnp.mean(lpips))
    assert float(metrics["nll_loss"]) == pytest.approx(expected_nll, rel=1e-5)
    assert float(metrics["rec_loss"]) == pytest.approx(float(jnp.mean(jnp.abs(x - rec))), rel=1e-6)
    assert float(loss) == pytest.approx(expected_nll + float(metrics["quant_loss"]), rel=1e-5)

    with config.unlocked():
        config.eval.lpips_params = str(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors' \(eval\.lpips_params\)"):
        vq_trainer.VQObjective.from_config(config)
    with config.unlocked():
        config.eval.lpips_params = ""
    with pytest.raises(ValueError, match="vq_train.lpips_params and eval.lpips_params are unset"):
        vq_trainer.VQObjective.from_config(config)


def test_vq_train_lpips_params_are_used_over_eval_lpips_params(tmp_path, caplog):
    """The perceptual term takes vq_train.lpips_params (here LPIPS-VGG16, taming's) over
    eval.lpips_params (AlexNet), which stays the fallback; the log names the trunk."""
    from predvdm_jax.interop.torch_checkpoint import save_params_safetensors
    from predvdm_jax.models import lpips

    rng = np.random.default_rng(0)

    def write(name, shapes):
        flat = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
        save_params_safetensors(tmp_path / name, flat)
        return str(tmp_path / name), flat

    vgg_path, vgg_flat = write("vgg.safetensors", lpips.VGG16_PARAM_SHAPES)
    alex_path, _ = write("alex.safetensors", lpips.LPIPS_PARAM_SHAPES)
    size = 16  # VGG16's smallest input; AlexNet would refuse it
    c = config_lib.default_config()
    c.data.image_size = size
    c.vq.update(ch=32, ch_mult=(1,), num_res_blocks=1, resolution=size, n_embed=16)
    c.vq_train.update(perceptual_weight=1.0, disc_weight=0.0, lpips_params=vgg_path)
    config = config_lib.finalize(c)  # valid without eval.lpips_params
    caplog.set_level("INFO")
    objective = vq_trainer.VQObjective.from_config(config)
    assert f"VQ perceptual loss: LPIPS-VGG16, from vq_train.lpips_params={vgg_path}" in caplog.text
    kernel = objective.lpips_params["net"]["features_28"]["kernel"]
    np.testing.assert_array_equal(np.asarray(kernel), vgg_flat["net/features_28/kernel"])

    with config.unlocked():
        config.eval.lpips_params = alex_path
    assert vq_trainer.VQObjective.from_config(config).lpips_params["net"].keys() == {
        f"features_{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    }
    with config.unlocked():
        config.vq_train.lpips_params = ""
    caplog.clear()
    fallback = vq_trainer.VQObjective.from_config(config)
    assert lpips.lpips_trunk(fallback.lpips_params) == lpips.ALEXNET
    assert "LPIPS-AlexNet, from eval.lpips_params" in caplog.text
    with config.unlocked():
        config.vq_train.lpips_params = str(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors' \(vq_train\.lpips_params\)"):
        vq_trainer.VQObjective.from_config(config)


# The PatchGAN's logit map side, by hand: a 4x4 convolution with padding 1 maps n to
# (n + 2 - 4) // stride + 1, i.e. n // 2 at stride 2 and n - 1 at stride 1; `layers` of stride 2
# then two of stride 1 give size // 2**layers - 2 (no output when < 1, so it needs frames of at
# least 3 * 2**layers).
@pytest.mark.parametrize(
    "size, layers, logit_side",
    [(16, 3, 0), (23, 3, 0), (24, 3, 1), (16, 2, 2), (8, 1, 2), (7, 1, 1), (5, 1, 0)],
)
def test_a_discriminator_too_deep_for_the_frames_is_refused_before_training(
    size, layers, logit_side
):
    """Refused exactly when the PatchGAN built for those frames has no output (it crashed in
    XLA's verifier instead); the error names the smallest frames and the deepest fit. A
    config that trains no discriminator, or no VQ, is not concerned."""
    from predvdm_jax import config as config_lib
    from predvdm_jax.models.vq_losses import PatchDiscriminator

    config = config_lib.default_config()
    config.data.image_size = size
    config.vq_train.disc_layers = layers
    config.vq_train.disc_weight = 0.8
    if logit_side >= 1:
        assert vq_trainer.VQObjective.from_config(config).discriminator.n_layers == layers
        out = jax.eval_shape(
            lambda: PatchDiscriminator(ndf=4, n_layers=layers).init_with_output(
                jax.random.key(0), jnp.zeros((1, size, size, 3))
            )[0]
        )
        assert out.shape == (1, logit_side, logit_side, 1)
    else:
        with pytest.raises(config_lib.ConfigError) as error:
            vq_trainer.VQObjective.from_config(config)
        message = str(error.value)
        smallest = 3 * 2**layers
        assert f"disc_layers={layers} needs frames of at least {smallest}x{smallest} " in message
        assert "vq_train.disc_weight=0" in message and "\n" not in message
        if layers > 1:  # 16 // 4 - 2 and 23 // 4 - 2 are >= 1: two layers fit
            assert f"set vq_train.disc_layers={layers - 1}" in message
        else:
            assert "use larger frames" in message
    config.vq_train.disc_weight = 0.0  # no discriminator: any size
    assert vq_trainer.VQObjective.from_config(config).discriminator is None


def test_init_from_starts_a_new_run_from_vq_params_and_names_a_bad_file(dataset, tmp_path):
    """Fine-tuning: vq_train.init_from's params start the weights (Adam moves each by about
    lr per step: within 1e-6 after 2 steps of lr 1e-7, far from a fresh initialisation); a
    file of another VQ is one error naming the field."""
    config = tiny_config(dataset, num_steps=2, save_every=2, eval_every=2, learning_rate=1e-7)
    objective = vq_trainer.VQObjective.from_config(config)
    start = random_params_from_init(lambda key: objective.init_params(key, SIZE), 3)
    start_file = str(tmp_path / "start.safetensors")
    vq_trainer.save_vq_params(start_file, start, config)
    run = config.copy_and_resolve_references()
    run.vq_train.init_from = start_file
    vq_trainer.train_vq(run, str(tmp_path / "run"))
    trained = load_params_safetensors(str(tmp_path / "run" / vq_trainer.VQ_PARAMS_FILE))
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), trained, start)
    assert max(jax.tree.leaves(moved)) < 1e-6
    fresh = jax.device_get(objective.init_params(jax.random.PRNGKey(run.seed), SIZE))
    far = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), fresh, start)
    assert max(jax.tree.leaves(far)) > 1e-2

    wider = config.copy_and_resolve_references()
    wider.vq.ch = 64
    other = vq_trainer.VQObjective.from_config(wider)
    other_file = str(tmp_path / "wider.safetensors")
    vq_trainer.save_vq_params(
        other_file, random_params_from_init(lambda key: other.init_params(key, SIZE), 1), wider
    )
    run.vq_train.init_from = other_file
    with pytest.raises(ValueError, match=r"^vq_train\.init_from: "):
        vq_trainer.train_vq(run, str(tmp_path / "another_run"))


def test_train_vq_py_ends_naming_the_written_params_and_the_flags_that_use_them(tmp_path):
    """The script's last line: where the VQ went and how the next scripts take it (training
    stubbed: train_vq's run is tested above)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    workdir = tmp_path / "vq"
    code = (
        "import runpy, sys; from predvdm_jax.training import vq_trainer; "
        "vq_trainer.train_vq = lambda config, workdir: {'test_psnr': 30.0, 'step': 60}; "
        f"sys.argv = ['train_vq.py', '--config=configs/vq_digits_demo.py', '--workdir={workdir}']; "
        "runpy.run_path('scripts/train_vq.py', run_name='__main__')"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=repo)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    path = workdir / vq_trainer.VQ_PARAMS_FILE
    assert done.stdout.splitlines()[-2:] == [
        "test_psnr=30 step=60",
        f"VQ params written to {path}; use them with --config.vq_params={path} (train.py) or "
        f"--vq_params={path} (encode_dataset.py, evaluate.py)",
    ]

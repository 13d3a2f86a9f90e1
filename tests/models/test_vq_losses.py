"""VQGAN objective against closed-form values and an independent autodiff / PyTorch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predvdm_jax.models import vq_losses as vl
from predvdm_jax.models.autoencoder import VQModel, quantize_with_codebook
from random_params import random_params

BETA = 0.25


def _codebook_case():
    codebook = jnp.array([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]])
    z = jnp.array([[0.9, 1.2], [0.1, -0.1], [-1.5, 0.4], [1.2, 0.7]])  # codes 1, 0, 2, 1
    return z, codebook


@pytest.mark.parametrize("legacy", [True, False])
def test_codebook_loss_beta_placement(legacy):
    z, codebook = _codebook_case()

    def loss(z, codebook):
        return vl.codebook_loss(quantize_with_codebook(z, codebook)[2], BETA, legacy)

    value = float(loss(z, codebook))
    grad_z, grad_codebook = jax.grad(loss, argnums=(0, 1))(z, codebook)
    z_np, e_np = np.asarray(z), np.asarray(codebook)
    assigned = e_np[[1, 0, 2, 1]]
    n = z_np.size
    np.testing.assert_allclose(value, (1 + BETA) * np.mean((assigned - z_np) ** 2), rtol=1e-6)
    # legacy (LDM): weight 1 on the commitment (encoder) side, beta on the codebook side; else swapped.
    w_z, w_e = (1.0, BETA) if legacy else (BETA, 1.0)
    np.testing.assert_allclose(
        np.asarray(grad_z), w_z * 2 * (z_np - assigned) / n, rtol=1e-6, atol=1e-7
    )
    expected_e = np.zeros_like(e_np)
    for i, k in enumerate([1, 0, 2, 1]):
        expected_e[k] += w_e * 2 * (e_np[k] - z_np[i]) / n
    np.testing.assert_allclose(np.asarray(grad_codebook), expected_e, rtol=1e-6, atol=1e-7)


def test_hinge_vanilla_generator_and_gate_values():
    real = jnp.array([2.0, 0.5, -1.0])
    fake = jnp.array([-2.0, 0.0, 1.0])
    np.testing.assert_allclose(
        float(vl.hinge_d_loss(real, fake)), 0.5 * (2.5 / 3 + 3.0 / 3), rtol=1e-6
    )
    softplus = lambda v: np.log1p(np.exp(v))
    ref_vanilla = 0.5 * (np.mean(softplus(-np.asarray(real))) + np.mean(softplus(np.asarray(fake))))
    np.testing.assert_allclose(float(vl.vanilla_d_loss(real, fake)), ref_vanilla, rtol=1e-6)
    np.testing.assert_allclose(float(vl.generator_adversarial_loss(fake)), 1.0 / 3, rtol=1e-6)
    assert float(vl.disc_factor_at(99, disc_start=100, disc_factor=0.7)) == 0.0
    np.testing.assert_allclose(float(vl.disc_factor_at(100, disc_start=100, disc_factor=0.7)), 0.7)
    loss, _ = vl.vqgan_discriminator_loss(real, fake, 5, disc_start=10)
    assert float(loss) == 0.0
    with pytest.raises(ValueError, match="hinge"):
        vl.vqgan_discriminator_loss(real, fake, 5, disc_start=10, loss_type="wgan")


def test_adaptive_weight_closed_form_and_clamp():
    nll_grad = jnp.array([[3.0, 0.0]])
    g_grad = jnp.array([[0.0, 4.0]])
    np.testing.assert_allclose(
        float(vl.adaptive_disc_weight(nll_grad, g_grad, 0.8)), 0.8 * 3 / (4 + 1e-4), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(vl.adaptive_disc_weight(nll_grad, jnp.zeros((1, 2)), 0.5)), 0.5 * 1e4
    )


def test_reconstruction_loss_l1_plus_perceptual():
    x = jnp.array([[[[0.5]], [[-1.0]]], [[[0.0]], [[1.0]]]])  # (2, 2, 1, 1)
    rec = jnp.zeros_like(x)
    np.testing.assert_allclose(float(vl.reconstruction_loss(x, rec)), 2.5 / 4, rtol=1e-6)
    per_image = lambda a, b: jnp.array([1.0, 3.0]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(
        float(vl.reconstruction_loss(x, rec, per_image, 0.5)), 2.5 / 4 + 0.5 * 2.0, rtol=1e-6
    )


def test_codebook_usage():
    uniform = jnp.tile(jnp.arange(8), 5)
    stats = vl.codebook_usage(uniform, 8)
    np.testing.assert_allclose(float(stats["perplexity"]), 8.0, rtol=1e-6)
    assert int(stats["dead_codes"]) == 0
    stats = vl.codebook_usage(jnp.array([[2, 2], [2, 5]]), 8)
    p = np.array([0.75, 0.25])
    np.testing.assert_allclose(
        float(stats["perplexity"]), np.exp(-(p * np.log(p)).sum()), rtol=1e-6
    )
    assert int(stats["dead_codes"]) == 6 and float(stats["usage"]) == 0.25
    np.testing.assert_allclose(
        float(vl.codebook_usage(jnp.zeros(10, jnp.int32), 4)["perplexity"]), 1.0
    )


def test_restart_replaces_only_unused_codes_with_encoder_outputs():
    codebook = jnp.arange(8.0).reshape(4, 2)
    counts = jnp.array([3, 0, 1, 0])
    latents = jnp.array([[[10.0, 11.0], [20.0, 21.0]], [[30.0, 31.0], [40.0, 41.0]]])
    new, restarted = vl.restart_dead_codes(codebook, counts, latents, jax.random.key(0))
    assert int(restarted) == 2
    new = np.asarray(new)
    np.testing.assert_array_equal(new[[0, 2]], np.asarray(codebook)[[0, 2]])
    pool = {tuple(r) for r in np.asarray(latents).reshape(-1, 2)}
    assert tuple(new[1]) in pool and tuple(new[3]) in pool


def test_patch_discriminator_matches_torch_layers_and_param_count():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    disc = vl.PatchDiscriminator(ndf=8, n_layers=2, norm="none")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    params = random_params(disc, x.shape)
    layers = [
        tnn.Conv2d(3, 8, 4, 2, 1),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(8, 16, 4, 2, 1),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(16, 32, 4, 1, 1),
        tnn.LeakyReLU(0.2),
        tnn.Conv2d(32, 1, 4, 1, 1),
    ]
    with torch.no_grad():
        for i, layer in enumerate(layers[::2]):
            p = params[f"conv_{i}"]
            layer.weight.copy_(
                torch.from_numpy(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy())
            )
            layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
        ref = tnn.Sequential(*layers)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    out = np.asarray(jax.jit(disc.apply)({"params": params}, jnp.asarray(x)))
    assert out.shape == (2, 6, 6, 1)
    np.testing.assert_allclose(out, ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)

    # Default (GroupNorm, no bias before a norm) has exactly taming's NLayerDiscriminator parameter count.
    shapes = jax.eval_shape(
        vl.PatchDiscriminator().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert count == (64 * 3 * 16 + 64) + (128 * 64 * 16 + 256) + (256 * 128 * 16 + 512) + (
        512 * 256 * 16 + 1024
    ) + (512 * 16 + 1)


def test_generator_loss_terms_and_disc_gate_equal_float64_values():
    """The generator-side loss's metrics against float64 values of the same forward pass, and
    its sum before and after disc_start. The adaptive weight's value is checked in closed form
    by test_adaptive_weight_closed_form_and_clamp (the ratio) and
    tests/training/test_vq_trainer.py::test_adaptive_weight_matches_closed_form (the last-layer
    gradients, through the trainer)."""
    model = VQModel(ch=32, ch_mult=(1, 2), num_res_blocks=1, n_embed=16)
    disc = vl.PatchDiscriminator(ndf=8, n_layers=1)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
    params = random_params(model, x.shape, seed=2)
    d_params = random_params(disc, x.shape, seed=3)

    @jax.jit
    def run(params, d_params, x):
        disc_fn = lambda images: disc.apply({"params": d_params}, images)
        out = model.apply({"params": params}, x, return_features=True)
        kw = dict(disc_start=10, disc_weight=0.8, codebook_weight=1.0)
        before = vl.vqgan_generator_loss(x, out, params["decoder"]["conv_out"], disc_fn, 9, **kw)
        after = vl.vqgan_generator_loss(x, out, params["decoder"]["conv_out"], disc_fn, 10, **kw)
        return before, after, out, disc_fn(out.reconstruction)

    (loss0, m0), (loss1, m1), out, logits = run(params, d_params, x)
    weight = float(m1["d_weight"])
    assert 0.0 < weight <= 0.8 * 1e4 and float(m0["d_weight"]) == weight
    # nll (L1 only: no perceptual_fn), g_loss and the legacy codebook loss in float64 from the
    # same forward pass: (1 + beta) * mean((z_q - z)^2), z_q's values being the assigned codes.
    f64 = lambda a: np.asarray(a, np.float64)
    nll = np.mean(np.abs(f64(x) - f64(out.reconstruction)))
    g = -np.mean(f64(logits))
    q = (1 + BETA) * np.mean((f64(out.z_q) - f64(out.z)) ** 2)
    assert float(m0["disc_factor"]) == 0.0 and float(m1["disc_factor"]) == 1.0
    for metrics in (m0, m1):
        np.testing.assert_allclose(float(metrics["nll_loss"]), nll, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["rec_loss"]), nll, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["g_loss"]), g, rtol=1e-5)
        np.testing.assert_allclose(float(metrics["quant_loss"]), q, rtol=1e-5)
    np.testing.assert_allclose(float(loss0), nll + q, rtol=1e-5)
    np.testing.assert_allclose(float(loss1), nll + weight * g + q, rtol=1e-5)
    with pytest.raises(ValueError, match="return_features=True"):
        vl.vqgan_generator_loss(
            x, vl.VQOutput(x, None, None, None, None), {}, lambda r: r, 0, disc_start=0
        )

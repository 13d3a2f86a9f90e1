"""The VQGAN objective used to train LDM's VQ-f4 (taming's `VQLPIPSWithDiscriminator`), as pure functions.

Generator side:  loss = nll + d_weight * disc_factor * g_loss + codebook_weight * codebook_loss, where
  nll          = mean|x - x_rec| + perceptual_weight * mean(perceptual(x, x_rec))   (perceptual optional)
  g_loss       = -mean(D(x_rec))
  d_weight     = clip(|grad_W nll| / (|grad_W g_loss| + 1e-4), 0, 1e4) * disc_weight, W = decoder/conv_out
                 kernel, treated as a constant (stop-gradient)
  disc_factor  = disc_factor if step >= disc_start else 0.
Discriminator side: disc_factor * d_loss(D(x), D(sg(x_rec))), d_loss = hinge (default) or vanilla
  (softplus), taming's `disc_loss`; g_loss is -mean(D(x_rec)) with either, as in taming.

Also codebook-usage statistics and a dead-code restart.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from predvdm_jax.models.autoencoder import CodebookLossTerms, VQOutput
from predvdm_jax.models.conv import conv_general_dilated

Array = jax.Array

ADAPTIVE_WEIGHT_EPS = 1e-4
ADAPTIVE_WEIGHT_MAX = 1e4
DISC_LOSSES = ("hinge", "vanilla")  # `vqgan_discriminator_loss`'s loss_type (vq_train.disc_loss)


def l1_loss(x: Array, reconstruction: Array) -> Array:
    """mean |x - x_rec| over all elements."""
    return jnp.mean(jnp.abs(x - reconstruction))


def reconstruction_loss(
    x: Array,
    reconstruction: Array,
    perceptual_fn: Callable[[Array, Array], Array] | None = None,
    perceptual_weight: float = 1.0,
) -> Array:
    """taming's `nll_loss`: mean(|x - x_rec| + perceptual_weight * p(x, x_rec)).

    `perceptual_fn(x, x_rec)` returns one distance per image (any shape broadcastable to (B, 1, 1, 1), e.g.
    LPIPS from `predvdm_jax.models.lpips`); its mean over the batch is added. None (default) = pure L1.
    """
    loss = l1_loss(x, reconstruction)
    if perceptual_fn is not None and perceptual_weight:
        loss = loss + perceptual_weight * jnp.mean(perceptual_fn(x, reconstruction))
    return loss


def codebook_loss(terms: CodebookLossTerms, beta: float = 0.25, legacy: bool = True) -> Array:
    """VQ loss from `CodebookLossTerms` (returned by `VQModel.quantize` / `VQModel.__call__`).

    legacy=True (LDM's VQ-f4, taming's `VectorQuantizer2(legacy=True)` default):
        mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)
      i.e. beta weighs the codebook update, not the commitment. This is the placement the released
      weights were trained with, although the VQ-VAE paper puts beta on the commitment term.
    legacy=False (VQ-VAE paper): mean((z_q - sg(z))^2) + beta * mean((sg(z_q) - z)^2).
    The two have the same value; only the gradients (encoder vs codebook) are weighted differently.
    """
    if legacy:
        return terms.commitment + beta * terms.codebook
    return terms.codebook + beta * terms.commitment


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec))))."""
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))
    )


def vanilla_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """0.5 * (mean(softplus(-D(x))) + mean(softplus(D(x_rec)))), taming's non-hinge option."""
    return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


def generator_adversarial_loss(logits_fake: Array) -> Array:
    """-mean(D(x_rec))."""
    return -jnp.mean(logits_fake)


def disc_factor_at(step: Array | int, disc_start: int, disc_factor: float = 1.0) -> Array:
    """taming's `adopt_weight`: 0 before `disc_start`, `disc_factor` from then on (jit-friendly)."""
    return jnp.where(jnp.asarray(step) < disc_start, 0.0, disc_factor)


def adaptive_disc_weight(nll_grad: Array, g_grad: Array, disc_weight: float = 1.0) -> Array:
    """clip(|nll_grad| / (|g_grad| + 1e-4), 0, 1e4) * disc_weight, with gradients stopped."""
    ratio = jnp.linalg.norm(nll_grad.ravel()) / (
        jnp.linalg.norm(g_grad.ravel()) + ADAPTIVE_WEIGHT_EPS
    )
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, ADAPTIVE_WEIGHT_MAX) * disc_weight)


def _conv_out(features: Array, kernel: Array, bias: Array) -> Array:
    pad = kernel.shape[0] // 2
    out = jax.lax.conv_general_dilated(
        features,
        kernel.astype(features.dtype),
        (1, 1),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return (out + bias).astype(jnp.float32)


def last_layer_adaptive_weight(
    decoder_features: Array,
    conv_out_params: dict[str, Array],
    nll_fn: Callable[[Array], Array],
    g_fn: Callable[[Array], Array],
    disc_weight: float = 1.0,
) -> Array:
    """Adaptive weight with the gradients taken w.r.t. the decoder's last layer (`decoder/conv_out/kernel`).

    The reconstruction is affine in that kernel, so it is recomputed from the (stop-gradient) input of
    conv_out (`VQOutput.decoder_features`) instead of back-propagating through the whole decoder twice.
    `nll_fn` / `g_fn` map a reconstruction to the scalar nll / generator loss.
    """
    features = jax.lax.stop_gradient(decoder_features)
    kernel = jax.lax.stop_gradient(conv_out_params["kernel"])
    bias = jax.lax.stop_gradient(conv_out_params["bias"])
    nll_grad = jax.grad(lambda k: nll_fn(_conv_out(features, k, bias)))(kernel)
    g_grad = jax.grad(lambda k: g_fn(_conv_out(features, k, bias)))(kernel)
    return adaptive_disc_weight(nll_grad, g_grad, disc_weight)


def vqgan_generator_loss(
    x: Array,
    output: VQOutput,
    conv_out_params: dict[str, Array],
    discriminator_fn: Callable[[Array], Array],
    step: Array | int,
    *,
    disc_start: int,
    codebook_weight: float = 1.0,
    beta: float = 0.25,
    legacy_beta: bool = True,
    disc_weight: float = 1.0,
    disc_factor: float = 1.0,
    perceptual_fn: Callable[[Array, Array], Array] | None = None,
    perceptual_weight: float = 1.0,
) -> tuple[Array, dict[str, Array]]:
    """Autoencoder-side VQGAN loss (taming `VQLPIPSWithDiscriminator`, optimizer_idx 0).

    `output` comes from `VQModel.apply(..., return_features=True)`; `conv_out_params` is
    `params['decoder']['conv_out']`; `discriminator_fn(images) -> logits` closes over the discriminator
    params. Returns (loss, metrics).
    """
    if output.decoder_features is None:
        raise ValueError(
            "the adaptive weight needs decoder features: call VQModel with return_features=True."
        )
    reconstruction = output.reconstruction
    nll = lambda rec: reconstruction_loss(x, rec, perceptual_fn, perceptual_weight)
    g = lambda rec: generator_adversarial_loss(discriminator_fn(rec))
    nll_loss = nll(reconstruction)
    g_loss = g(reconstruction)
    d_weight = last_layer_adaptive_weight(
        output.decoder_features, conv_out_params, nll, g, disc_weight
    )
    factor = disc_factor_at(step, disc_start, disc_factor)
    q_loss = codebook_loss(output.loss_terms, beta, legacy_beta)
    loss = nll_loss + d_weight * factor * g_loss + codebook_weight * q_loss
    metrics = {
        "total_loss": loss,
        "quant_loss": q_loss,
        "nll_loss": nll_loss,
        "rec_loss": l1_loss(x, reconstruction),
        "d_weight": d_weight,
        "disc_factor": factor,
        "g_loss": g_loss,
    }
    return loss, metrics


def vqgan_discriminator_loss(
    logits_real: Array,
    logits_fake: Array,
    step: Array | int,
    *,
    disc_start: int,
    disc_factor: float = 1.0,
    loss_type: str = "hinge",
) -> tuple[Array, dict[str, Array]]:
    """Discriminator-side loss (optimizer_idx 1); `logits_fake` must come from stop-gradient reconstructions."""
    if loss_type not in DISC_LOSSES:
        raise ValueError(f"loss_type must be 'hinge' or 'vanilla'; got {loss_type!r}.")
    loss_fn = hinge_d_loss if loss_type == "hinge" else vanilla_d_loss
    loss = disc_factor_at(step, disc_start, disc_factor) * loss_fn(logits_real, logits_fake)
    return loss, {
        "disc_loss": loss,
        "logits_real": jnp.mean(logits_real),
        "logits_fake": jnp.mean(logits_fake),
    }


def _normal_init(mean: float, std: float):
    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator (PatchGAN): (B, H, W, C) images -> (B, H', W', 1) patch logits.

    conv 4x4 s2 + LeakyReLU(0.2); (n_layers - 1) x [conv 4x4 s2 (no bias) + norm + LeakyReLU];
    conv 4x4 s1 (no bias) + norm + LeakyReLU; conv 4x4 s1 -> 1. Widths ndf * min(2**n, 8); padding 1.
    Init as taming's `weights_init`: conv N(0, 0.02), norm scale N(1, 0.02).

    Normalisation: taming uses BatchNorm. Here `norm="group"` (default) uses GroupNorm with 32 groups
    (gcd(32, C) for narrow layers): it keeps the discriminator a pure function of its params, with no
    batch statistics to thread through the train step or to sync across devices. `norm="none"` drops it
    (then convs keep their bias).
    """

    ndf: int = 64
    n_layers: int = 3
    norm: str = "group"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.norm not in ("group", "none"):
            raise ValueError(
                f"PatchDiscriminator norm must be 'group' or 'none'; got {self.norm!r}."
            )
        conv_init = _normal_init(0.0, 0.02)

        def conv(features, stride, use_bias, name):
            return nn.Conv(
                features,
                (4, 4),
                strides=(stride, stride),
                padding=((1, 1), (1, 1)),
                use_bias=use_bias,
                kernel_init=conv_init,
                conv_general_dilated=conv_general_dilated,
                name=name,
            )

        def normed(h, name):
            if self.norm == "none":
                return h
            groups = math.gcd(32, h.shape[-1])
            return nn.GroupNorm(
                num_groups=groups, epsilon=1e-5, scale_init=_normal_init(1.0, 0.02), name=name
            )(h)

        with_bias = self.norm == "none"
        h = nn.leaky_relu(conv(self.ndf, 2, True, "conv_0")(x), 0.2)
        for n in range(1, self.n_layers + 1):
            stride = 2 if n < self.n_layers else 1
            h = conv(self.ndf * min(2**n, 8), stride, with_bias, f"conv_{n}")(h)
            h = nn.leaky_relu(normed(h, f"norm_{n}"), 0.2)
        return conv(1, 1, True, f"conv_{self.n_layers + 1}")(h)


def patch_discriminator_output_size(image_size: int, n_layers: int) -> int:
    """The side of ``PatchDiscriminator``'s logit map for ``image_size`` frames: 4x4
    convolutions with padding 1, ``n_layers`` of stride 2, then two of stride 1 (< 1: none)."""
    size = image_size
    for _ in range(n_layers):
        size = (size + 2 - 4) // 2 + 1
    return size - 2


def codebook_usage(indices: Array, n_codes: int) -> dict[str, Array]:
    """Usage statistics of integer code indices (any shape).

    perplexity = exp(-sum_k p_k log p_k) with p_k the frequency of code k (n_codes for uniform usage,
    1 if a single code is used); dead_codes = number of codes never used; usage = fraction used.
    """
    counts = jnp.bincount(indices.reshape(-1), length=n_codes)
    probs = counts / jnp.maximum(counts.sum(), 1)
    perplexity = jnp.exp(-jnp.sum(jax.scipy.special.xlogy(probs, probs)))
    dead = jnp.sum(counts == 0)
    return {"perplexity": perplexity, "dead_codes": dead, "usage": 1.0 - dead / n_codes}


def restart_dead_codes(
    codebook: Array, counts: Array, latents: Array, key: Array
) -> tuple[Array, Array]:
    """Codes of count 0 in ``counts`` (n_codes,) become random encoder outputs.

    ``latents`` (..., D) are continuous pre-quantization latents (``VQOutput.z``); each dead
    code gets one of them, drawn uniformly with replacement. Returns (new codebook, number of
    restarted codes). Use on the step's global batch so all replicas agree.
    """
    flat = latents.reshape(-1, codebook.shape[1])
    dead = counts == 0
    picks = flat[jax.random.randint(key, (codebook.shape[0],), 0, flat.shape[0])]
    return jnp.where(dead[:, None], picks.astype(codebook.dtype), codebook), jnp.sum(dead)

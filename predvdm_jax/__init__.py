"""predvdm_jax: PredVDM latent video diffusion for video prediction, in JAX/Flax."""

__version__ = "0.1.0"

"""The smallest latent-diffusion config the model programs accept: 16×16 grayscale frames,
a two-level VQ of 16 codes and a one-level UNet without attention."""

from predvdm_jax import config as config_lib

SIZE = 16


def tiny_config(cond: int = 2, k: int = 2, **eval_fields):
    """``cond`` conditioning frames, ``k`` frames per block; ``eval_fields`` update ``eval``."""
    c = config_lib.default_config()
    c.data.image_size, c.data.channels = SIZE, 1
    c.data.cond_frames, c.data.pred_frames, c.data.frames_per_sample = cond, k, cond + k
    c.vq.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, n_embed=16, resolution=SIZE))
    c.unet.update(
        dict(model_channels=32, channel_mult=(1,), num_res_blocks=1, attention_resolutions=())
    )
    c.sampling.steps = 2
    c.eval.update(eval_fields)
    return config_lib.finalize(c)

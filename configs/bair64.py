"""PredVDM on BAIR robot pushing 64×64 RGB, 2 → 14 / 2 → 28 (the ExtDM protocol).

The original ships a BAIR converter but no config (spec §A.6); this one takes the KTH UNet
with 2 conditioning frames (in 21 channels), lr 2e-4 at global batch 128, DDIM-100 η = 1.
"""

from predvdm_jax import config as config_lib


def get_config():
    c = config_lib.default_config()
    c.name = "bair64"
    c.data.train_dir = "data/BAIR_h5/train"
    c.data.test_dir = "data/BAIR_h5/test"
    c.data.image_size = 64
    c.data.channels = 3
    c.data.cond_frames = 2
    c.data.pred_frames = 5
    c.data.frames_per_sample = 7
    c.data.batch_size = 128
    c.data.num_workers = 8  # the split is too large to preload: read it in 8 processes
    c.vq_params = "checkpoints/vq-f4.safetensors"
    c.model.mode = "tc"
    c.sampling.sampler = "ddim"
    c.sampling.steps = 100
    c.eval.pred_frames = 28
    c.eval.num_clips = 256
    c.train.eval_every = 1000  # this project's choice: PredVDM has no BAIR config
    c.train.keep_best = 3  # bundles of the 3 lowest val/loss_ema, as PredVDM's save_top_k
    c.train.preview_every = 5000  # a rollout of 4 test clips, logged as an image with PSNR/SSIM
    return config_lib.finalize(c)

"""PredVDM on Stochastic Moving MNIST 64×64 (spec §A.5): 10 → 5 per block, 10 → 10 at test.

Same UNet as KTH (259 M params), mode `tc`, DDIM-10 with η = 1, lr 2e-4 at global batch 128.
"""

from predvdm_jax import config as config_lib


def get_config():
    c = config_lib.default_config()
    c.name = "smmnist64"
    c.data.train_dir = "data/SMMNIST_h5/train"
    c.data.test_dir = "data/SMMNIST_h5/test"
    c.data.image_size = 64
    c.data.channels = 1
    c.data.cond_frames = 10
    c.data.pred_frames = 5
    c.data.frames_per_sample = 15
    c.data.batch_size = 128
    c.vq_params = "checkpoints/vq-f4.safetensors"
    c.model.mode = "tc"
    c.sampling.sampler = "ddim"
    c.sampling.steps = 10
    c.eval.pred_frames = 10
    c.eval.num_clips = 256
    c.eval.mcvd_style = "mcvd_mnist"  # --protocol=mcvd: SSIM of frames rounded to 0/1, as MCVD
    c.train.eval_every = 938  # PredVDM validates every 2 epochs of 469 steps
    c.train.keep_best = 3  # bundles of the 3 lowest val/loss_ema, as PredVDM's save_top_k
    c.train.preview_every = 5000  # a rollout of 4 test clips, logged as an image with PSNR/SSIM
    return config_lib.finalize(c)

"""PredVDM on Cityscapes 128×128 (spec §A.8, §C.3): 2 → 5 per block, 2 → 28 at test.

UNet channel_mult (1,2,4,4), attention at ds (2,4,8): 329,728,015 params; latent 32×32×3.
lr 7.8125e-7 × global batch 128 = 1e-4, DDIM-20 with η = 1, horizontal flip for training
(the original also jitters colour by 0.1; not reproduced). Validation losses, the best bundles
and previews use the ``val`` split, evaluation the ``test`` split, as in the original.
"""

from predvdm_jax import config as config_lib


def get_config():
    c = config_lib.default_config()
    c.name = "cityscapes128"
    c.data.train_dir = "data/Cityscapes_h5/train"
    c.data.test_dir = "data/Cityscapes_h5/test"
    c.data.val_dir = "data/Cityscapes_h5/val"  # PredVDM validates (and keeps its best) on val
    c.data.image_size = 128
    c.data.channels = 3
    c.data.cond_frames = 2
    c.data.pred_frames = 5
    c.data.frames_per_sample = 7
    c.data.batch_size = 128
    c.data.num_workers = 8  # the split is too large to preload: read it in 8 processes
    c.data.horizontal_flip = True
    c.vq_params = "checkpoints/vq-f4.safetensors"
    c.vq_chunk = 32
    c.unet.channel_mult = (1, 2, 4, 4)
    c.unet.attention_resolutions = (2, 4, 8)
    c.model.mode = "tcct_para_attn"
    c.optimizer.base_learning_rate = 7.8125e-7
    c.sampling.sampler = "ddim"
    c.sampling.steps = 20
    c.eval.pred_frames = 28
    c.eval.num_clips = 256
    c.train.eval_every = 720  # PredVDM validates every 30 epochs of 24 steps (2975 clips / 128)
    c.train.keep_best = 3  # bundles of the 3 lowest val/loss_ema, as PredVDM's save_top_k
    c.train.preview_every = 5000  # a rollout of 4 test clips, logged as an image with PSNR/SSIM
    return config_lib.finalize(c)

"""The embedded default: PredVDM on moving digits, CPU-sized (scripts/demo.py runs it all).

Starts from configs/vq_digits_demo.py (the same small VQ-f4, 16×16×3 latents) and adds a
small denoiser trained on the cached latents: 10 → 5 frames per block, predicted
10 → 10 and 10 → 30 at test with stochastic DDIM (η = 1) as PredVDM evaluates.

The denoiser predicts x0, not PredVDM's ε: with a few thousand CPU steps an
ε-model's small errors at high noise become x̂0 errors of several σ (x̂0 = (z − σ ε̂)/α
amplifies them by σ/α ≈ 84 at t = 999, 53 at DDIM-20's first step) and its samples are
blobs. On the demo's cached latents, 2000 steps gave mean SSIM 0.129 with ε, 0.413 with v
and 0.460 with x0; 4000 steps of x0 gave 0.502 with the current code (copy-last-frame: 0.444).

  python scripts/train.py --config=configs/digits_demo.py --workdir=runs/digits_demo

scripts/demo.py sets scale_factor to 1 / std of the trained VQ's latents (LDM's
scale_by_std; ≈ 4 for this VQ) before caching; by hand, scripts/encode_dataset.py --unit_std
measures it and prints the value to train with.
"""

import os


def get_config():
    from predvdm_jax import config as config_lib

    c = config_lib.load_config_file(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "vq_digits_demo.py")
    )
    c.name = "digits_demo"
    c.data.latent_train_dir = "data/moving_digits_latents/train"
    c.data.latent_test_dir = "data/moving_digits_latents/test"
    c.data.cond_frames = 10
    c.data.pred_frames = 5
    c.data.frames_per_sample = 15
    c.data.batch_size = 16
    c.unet.model_channels = 32
    c.unet.channel_mult = (1, 2, 2)
    c.unet.num_res_blocks = 1
    c.unet.attention_resolutions = (4,)
    c.unet.num_head_channels = 32
    c.unet.dropout = 0.0
    c.model.mode = "tc"
    c.diffusion.parameterization = "x0"
    c.optimizer.base_learning_rate = 5e-4
    c.optimizer.scale_lr = False
    c.optimizer.warmup_steps = 100
    c.train.num_steps = 4000
    c.train.log_every = 50
    c.train.save_every = 1000
    c.train.max_to_keep = 1
    c.train.ema_rate = 0.995
    c.sampling.sampler = "ddim"
    c.sampling.steps = 20
    c.sampling.eta = 1.0
    c.eval.num_clips = 64
    c.eval.pred_frames = 10
    c.eval.batch_size = 64
    return config_lib.finalize(c)

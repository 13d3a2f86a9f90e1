"""PredVDM on BAIR robot pushing 64×64 RGB, 1 → 15 (the common BAIR setting: MCVD c1t5p15,
RaMViD, FitVid, MAGVIT; FVD on 16 frames, docs/evaluation.md).

``bair64.py`` (the KTH UNet in mode ``tc``, RGB, lr 2e-4 at global batch 128, DDIM-100
η = 1) with 1 conditioning frame and 5 predicted per block (15 at test: three blocks).
"""

import os

from predvdm_jax import config as config_lib


def get_config():
    c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "bair64.py"))
    c.name = "bair64_c1"
    c.data.cond_frames = 1
    c.data.frames_per_sample = 6
    c.eval.pred_frames = 15
    return config_lib.finalize(c)

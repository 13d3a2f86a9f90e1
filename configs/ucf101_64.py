"""PredVDM on UCF-101 64×64 RGB (split 1), 4 → 12 (ExtDM Table 7, ExtDM protocol).

The original has no UCF-101 config; this one is ``bair64.py`` (the KTH UNet in mode ``tc``,
RGB, lr 2e-4 at global batch 128, DDIM-100 η = 1) with 4 conditioning frames and 5
predicted per block (12 at test: three blocks, the last trimmed), on the split that
``scripts/prepare_data.py --dataset=ucf101`` writes (docs/data.md).
"""

import os

from predvdm_jax import config as config_lib


def get_config():
    c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "bair64.py"))
    c.name = "ucf101_64"
    c.data.train_dir = "data/UCF101_h5/train"
    c.data.test_dir = "data/UCF101_h5/test"
    c.data.cond_frames = 4
    c.data.frames_per_sample = 9
    c.eval.pred_frames = 12
    return config_lib.finalize(c)

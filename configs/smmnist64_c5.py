"""PredVDM on Stochastic Moving MNIST 64×64, 5 → 10 (MCVD's official SMMNIST setting,
``smmnist_big_5c5_unetm_b2``, and probably the MCVD rows of ExtDM's Table 6).

``smmnist64.py`` (the KTH UNet in mode ``tc``, DDIM-10 η = 1, lr 2e-4 at global batch 128)
with 5 conditioning frames and 5 predicted per block (10 at test: two blocks), on MCVD's
2-digit videos (PredVDM's converter draws 3): ``scripts/prepare_data.py --dataset=smmnist
--num_digits=2 --out=data/SMMNIST2_h5``. Score it with ``--protocol=mcvd`` for MCVD's numbers
(``eval.mcvd_style`` ``mcvd_mnist``, from ``smmnist64.py``: SSIM of the frames rounded to 0/1).
"""

import os

from predvdm_jax import config as config_lib


def get_config():
    c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "smmnist64.py"))
    c.name = "smmnist64_c5"
    c.data.train_dir = "data/SMMNIST2_h5/train"
    c.data.test_dir = "data/SMMNIST2_h5/test"
    c.data.cond_frames = 5
    c.data.frames_per_sample = 10
    return config_lib.finalize(c)

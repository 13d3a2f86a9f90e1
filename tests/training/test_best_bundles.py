"""train.keep_best: bundles of the k lowest validation values, correct across a resume."""

import json
import os
import shutil

import numpy as np

from predvdm_jax import config as config_lib
from predvdm_jax.interop.bundle import (
    METRIC_FILE,
    BundleSource,
    read_bundle_files,
    resolve_bundle_path,
)
from predvdm_jax.training.best_bundles import BestBundles


def _params(step):
    return {"out": {"kernel": np.full((2, 3), float(step), np.float32)}}


def test_keeps_the_k_lowest_and_forgets_steps_a_resumed_run_has_not_reached(tmp_path):
    config = config_lib.finalize(config_lib.default_config())
    vq = {"decoder": {"bias": np.ones(4, np.float32)}}
    best = BestBundles(str(tmp_path / "best"), 2, "val/loss_ema", config, vq)

    history = [(1, 3.0), (2, 1.0), (3, 2.0), (4, 0.5), (5, float("nan")), (6, 1.5)]
    entered = [best.keep(step, _params(step), value, step + 1) for step, value in history]
    assert entered == [True, True, True, True, False, False]
    assert best.kept() == {2: 1.0, 4: 0.5}
    bundle = read_bundle_files(str(tmp_path / "best" / "step_00000004"))  # params of no model
    assert bundle.source == BundleSource("run", str(tmp_path), "EMA", 4, 5)
    np.testing.assert_array_equal(bundle.params["out"]["kernel"], _params(4)["out"]["kernel"])
    np.testing.assert_array_equal(bundle.vq_params["decoder"]["bias"], vq["decoder"]["bias"])
    assert bundle.config.to_dict() == config.to_dict()
    with open(tmp_path / "best" / "step_00000004" / METRIC_FILE) as f:
        assert json.load(f) == {"metric": "val/loss_ema", "value": 0.5, "step": 4}
    best_params = read_bundle_files(resolve_bundle_path(str(tmp_path / "best"))).params
    np.testing.assert_array_equal(best_params["out"]["kernel"], _params(4)["out"]["kernel"])

    # A run resumed from step 2 validates step 3 again: step 4 (from the run that died) goes,
    # and so do the temporaries of a bundle write it was killed in (the bundle it replaced,
    # with its metric, is no candidate for the best).
    os.makedirs(tmp_path / "best" / "step_00000009")  # a bundle whose metric never landed
    stale = tmp_path / "best" / ".bundle-old-x1"
    shutil.copytree(tmp_path / "best" / "step_00000004", stale)
    (stale / METRIC_FILE).write_text(json.dumps({"metric": "val/loss_ema", "value": 0.1}))
    os.makedirs(tmp_path / "best" / ".bundle-y2")
    assert resolve_bundle_path(str(tmp_path / "best")).endswith("step_00000004")
    assert best.keep(3, _params(3), 2.5)
    assert best.kept() == {2: 1.0, 3: 2.5}
    assert sorted(os.listdir(tmp_path / "best")) == ["step_00000002", "step_00000003"]


def test_a_k_lowered_on_resume_keeps_the_best_and_drops_the_worst(tmp_path):
    config = config_lib.finalize(config_lib.default_config())
    vq = {"decoder": {"bias": np.ones(4, np.float32)}}
    three = BestBundles(str(tmp_path / "best"), 3, "val/loss_ema", config, vq)
    for step, value in ((10, 1.0), (20, 2.0), (30, 3.0)):
        assert three.keep(step, _params(step), value)
    one = BestBundles(str(tmp_path / "best"), 1, "val/loss_ema", config, vq)
    assert not one.keep(40, _params(40), 2.5)  # worse than the best (1.0): not kept
    assert one.kept() == {10: 1.0}  # and the bundles beyond k = 1 are gone
    assert one.keep(50, _params(50), 0.5)
    assert one.kept() == {50: 0.5}

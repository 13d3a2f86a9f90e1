"""PSNR / SSIM / pixel MSE against float64 references: scikit-image and PredVDM's formula in scipy."""

import dm_pix
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from predvdm_jax.evaluation import metrics


def _predvdm_ssim_reference(frame_a: np.ndarray, frame_b: np.ndarray) -> float:
    """PredVDM's calculate_ssim1 in float64: reflect-101 filtering, [5:-5, 5:-5] crop, mean over channels."""
    offsets = np.arange(11) - 5
    taps = np.exp(-(offsets**2) / (2 * 1.5**2))
    taps /= taps.sum()
    window = np.outer(taps, taps)

    def blur(image):
        return scipy.ndimage.correlate(image, window, mode="mirror")[5:-5, 5:-5]

    per_channel = []
    for channel in range(frame_a.shape[-1]):
        x = frame_a[..., channel].astype(np.float64)
        y = frame_b[..., channel].astype(np.float64)
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        c1, c2 = 0.01**2, 0.03**2
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
            (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        )
        per_channel.append(ssim_map.mean())
    return float(np.mean(per_channel))


def _skimage_ssim(frame_a: np.ndarray, frame_b: np.ndarray) -> float:
    return structural_similarity(
        frame_a.astype(np.float64),
        frame_b.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )


def _video_pair(channels: int, height: int = 32, width: int = 40):
    """Two (2, 2, H, W, C) float32 videos: noise, smooth, near-flat bright, and two-level flat frames."""
    rng = np.random.default_rng(0)
    shape = (height, width, channels)
    noise = rng.random(shape)
    smooth = scipy.ndimage.gaussian_filter(rng.random(shape), sigma=(3, 3, 0))
    flat_bright = 0.9 + 0.001 * rng.random(shape)
    two_level = np.where(
        np.arange(width)[None, :, None] < width // 2, 0.05, 0.9
    ) + 0.001 * rng.random(shape)
    frames_a = np.stack([noise, smooth, flat_bright, two_level])
    frames_b = np.stack(
        [
            np.clip(noise + 0.1 * rng.standard_normal(shape), 0, 1),
            np.clip(smooth + 0.01 * rng.standard_normal(shape), 0, 1),
            flat_bright + 0.0005 * rng.random(shape),
            two_level + 0.0005 * rng.random(shape),
        ]
    )
    to_video = lambda frames: frames.reshape((2, 2) + shape).astype(np.float32)
    return to_video(frames_a), to_video(frames_b)


def _per_frame(function, video_a, video_b):
    return np.array(
        [
            [function(video_a[i, t], video_b[i, t]) for t in range(video_a.shape[1])]
            for i in range(video_a.shape[0])
        ]
    )


@pytest.mark.parametrize("channels", [3, 1])
def test_ssim_matches_predvdm_formula_and_skimage(channels):
    video_a, video_b = _video_pair(channels)
    predvdm_reference = _per_frame(_predvdm_ssim_reference, video_a, video_b)
    skimage_reference = _per_frame(_skimage_ssim, video_a, video_b)
    # skimage's gaussian filter uses a different border mode but crops the same 5 pixels: identical.
    np.testing.assert_allclose(skimage_reference, predvdm_reference, rtol=0, atol=1e-12)

    ours = np.asarray(metrics.ssim(jnp.asarray(video_a), jnp.asarray(video_b)))
    assert ours.shape == (2, 2) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, predvdm_reference, rtol=0, atol=1e-5)


def test_ssim_is_precise_on_flat_frames():
    """Near-flat frames (video 1: a bright frame and a two-level one, noise of 1e-3) make the
    variances tiny differences of large means: ours stays within 1e-6 of the float64 formula."""
    video_a, video_b = _video_pair(3)
    reference = _per_frame(_predvdm_ssim_reference, video_a[1:], video_b[1:])[0]
    ours = np.asarray(metrics.ssim(jnp.asarray(video_a), jnp.asarray(video_b))[1], np.float64)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_psnr_matches_skimage_and_dm_pix():
    video_a, video_b = _video_pair(3)
    ours = np.asarray(metrics.psnr(jnp.asarray(video_a), jnp.asarray(video_b)))
    reference = _per_frame(
        lambda x, y: peak_signal_noise_ratio(
            x.astype(np.float64), y.astype(np.float64), data_range=1.0
        ),
        video_a,
        video_b,
    )
    np.testing.assert_allclose(ours, reference, rtol=1e-5)
    dm_pix_value = np.asarray(dm_pix.psnr(jnp.asarray(video_a[0]), jnp.asarray(video_b[0])))
    np.testing.assert_allclose(ours[0], dm_pix_value, rtol=1e-6)


def test_identical_frames_give_ssim_one_and_psnr_100():
    video_a, _ = _video_pair(3)
    video_b = video_a.copy()
    video_b[1, 1] = np.clip(video_b[1, 1] + 0.05, 0, 1)
    ssim_values = np.asarray(metrics.ssim(jnp.asarray(video_a), jnp.asarray(video_b)))
    psnr_values = np.asarray(metrics.psnr(jnp.asarray(video_a), jnp.asarray(video_b)))
    np.testing.assert_allclose(ssim_values.ravel()[:3], 1.0, atol=1e-6)
    np.testing.assert_array_equal(psnr_values.ravel()[:3], 100.0)
    assert ssim_values[1, 1] < 0.999
    expected_psnr = -10 * np.log10(np.mean((video_a[1, 1].astype(np.float64) - video_b[1, 1]) ** 2))
    np.testing.assert_allclose(psnr_values[1, 1], expected_psnr, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    video = np.full((1, 1, 16, 16, 3), 0.5, np.float32)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(jnp.asarray(video), jnp.asarray(video[:, :, :8]))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        metrics.psnr(jnp.asarray(video[0]), jnp.asarray(video[0]))
    small = jnp.zeros((1, 1, 8, 8, 3))
    with pytest.raises(ValueError, match="SSIM window"):
        metrics.ssim(small, small)

"""PSNR / SSIM / pixel MSE against float64 references: scikit-image and PredVDM's formula in scipy."""

import dm_pix
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image
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


def _mcvd_gray_reference(frame):
    """MCVD's grey image: torchvision ToPILImage (float mul(255).byte(), truncation), then PIL
    .convert("RGB").convert("L")."""
    quantised = (frame * np.float32(255)).astype(np.uint8)
    image = Image.fromarray(quantised[..., 0] if quantised.shape[-1] == 1 else quantised)
    return np.asarray(image.convert("RGB").convert("L"))


def _mcvd_ssim_reference(a, b):
    out = np.zeros(a.shape[:2])
    for i, t in np.ndindex(*a.shape[:2]):
        out[i, t] = structural_similarity(
            _mcvd_gray_reference(a[i, t]),
            _mcvd_gray_reference(b[i, t]),
            data_range=255,
            gaussian_weights=True,
            use_sample_covariance=False,
        )
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_mcvd_ssim_matches_skimage_on_pil_gray_uint8(channels):
    rng = np.random.default_rng(channels)
    shape = (2, 3, 24, 32, channels)
    noise = rng.random(shape).astype(np.float32)
    yy, xx = np.mgrid[:24, :32]
    pattern = (0.5 + 0.4 * np.sin(xx / 4.0) * np.cos(yy / 6.0))[None, None, :, :, None]
    structured = np.clip(pattern + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    pairs = [
        (noise, np.clip(noise + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)),
        (structured, np.clip(0.9 * structured + 0.05, 0, 1).astype(np.float32)),
        (np.full(shape, 0.93, np.float32), np.full(shape, 0.941, np.float32)),
    ]
    for a, b in pairs:
        got = np.asarray(metrics.mcvd_ssim(jnp.asarray(a), jnp.asarray(b)))
        np.testing.assert_allclose(got, _mcvd_ssim_reference(a, b), atol=1e-5)
    if channels == 3:  # grey conversion of colour frames is not the per-channel SSIM
        a, b = pairs[0]
        gray = np.asarray(metrics.mcvd_ssim(jnp.asarray(a), jnp.asarray(b)))
        assert np.abs(gray - np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b)))).max() > 1e-3


def test_pil_gray_uint8_matches_pil_exactly():
    rng = np.random.default_rng(0)
    video = rng.random((1, 2, 16, 16, 3)).astype(np.float32)
    video[0, 0, 0, :4] = [[1, 1, 1], [0, 0, 0], [0.5, 0.25, 1], [254.9 / 255, 0.999, 0.002]]
    got = np.asarray(metrics.pil_gray_uint8(jnp.asarray(video)))[..., 0]
    expected = np.stack([_mcvd_gray_reference(f) for f in video[0]])[None]
    np.testing.assert_array_equal(got, expected)


def test_video_psnr_is_10log10_of_the_mean_frame_mse():
    rng = np.random.default_rng(1)
    a = rng.random((3, 4, 8, 8, 3)).astype(np.float32)
    scales = np.array([0.01, 0.1, 0.3, 0.05], np.float32)[None, :, None, None, None]
    b = np.clip(a + scales * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    frame_mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(2, 3, 4))
    expected = 10 * np.log10(1 / frame_mse.mean(axis=1))
    got = np.asarray(metrics.video_psnr(jnp.asarray(a), jnp.asarray(b)))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # Not the mean of the per-frame PSNRs (frames of different errors differ).
    per_frame = np.asarray(metrics.psnr(jnp.asarray(a), jnp.asarray(b))).mean(axis=1)
    assert np.abs(got - per_frame).min() > 0.5
    assert np.asarray(metrics.video_psnr(jnp.asarray(a), jnp.asarray(a))).tolist() == [100.0] * 3


@pytest.mark.parametrize(
    "shape, size", [((64, 64), (128, 128)), ((48, 40), (128, 128)), ((200, 300), (128, 96))]
)
def test_pil_resize_bilinear_equals_pillow_exactly(shape, size):
    """Up-, non-integer and down-scaling, both passes rounded to uint8 as Pillow does."""
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    images[0, :, :, 0] = 255  # saturated and
    images[0, :, :, 1] = np.arange(shape[1]) % 2 * 255  # alternating columns
    got = np.asarray(metrics.pil_resize_bilinear(jnp.asarray(images), size))
    for image, ours in zip(images, got):
        expected = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_mcvd_lpips_frames_are_torchvisions_resize_of_the_pil_rgb_frames(channels):
    """MCVD: ToPILImage (truncation) .convert("RGB"), Resize((128, 128)), ToTensor."""
    rng = np.random.default_rng(channels)
    video = rng.random((1, 2, 64, 64, channels)).astype(np.float32)
    got = np.asarray(metrics.mcvd_lpips_frames(jnp.asarray(video)))
    assert got.shape == (1, 2, 128, 128, 3)
    for t in range(2):
        quantised = (video[0, t] * np.float32(255)).astype(np.uint8)
        image = Image.fromarray(quantised[..., 0] if channels == 1 else quantised).convert("RGB")
        resized = np.asarray(image.resize((128, 128), Image.BILINEAR))
        np.testing.assert_array_equal(np.round(got[0, t] * 255), resized)  # the same levels
        np.testing.assert_allclose(got[0, t], resized.astype(np.float32) / 255, atol=1e-7)


def test_mcvd_mnist_ssim_rounds_frames_to_black_and_white_first():
    """MCVD on (Stochastic) Moving MNIST: SSIM of torch.round(frame) (half to even)."""
    rng = np.random.default_rng(5)
    a = rng.random((1, 2, 24, 24, 1)).astype(np.float32)
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    b[0, 0, 0, :3, 0] = [0.5, 0.49, 0.51]
    got = np.asarray(metrics.mcvd_ssim(jnp.asarray(a), jnp.asarray(b), binary=True))
    expected = _mcvd_ssim_reference(np.round(a), np.round(b))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    grey = np.asarray(metrics.mcvd_ssim(jnp.asarray(a), jnp.asarray(b)))
    assert np.abs(got - grey).min() > 1e-2

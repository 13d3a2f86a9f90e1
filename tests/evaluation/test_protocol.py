import dataclasses
import os
import math
import statistics

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
from PIL import Image

from predvdm_jax.evaluation import fvd as fvd_lib
from predvdm_jax.evaluation import protocol as protocol_lib

COND, PRED, SIZE = 3, 10, 16
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _moving_clips(num_clips, size=SIZE, channels=1, seed=0):
    """Clips in [-1, 1] whose frame t is a fixed random image shifted right by t pixels."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-1, 1, (num_clips, size, size, channels)).astype(np.float32)
    return np.stack([np.roll(base, t, axis=2) for t in range(COND + PRED)], axis=1)


@jax.jit
def _perfect_predict(cond, key):
    del key
    return jnp.stack([jnp.roll(cond[:, -1], t, axis=2) for t in range(1, PRED + 1)], axis=1)


@jax.jit
def _noisy_predict(cond, keys):
    """The perfect prediction plus noise, clip ``i``'s drawn from ``keys[i]``."""
    noise = jax.vmap(lambda key: jax.random.normal(key, (PRED,) + cond.shape[2:]))(keys)
    return _perfect_predict(cond, keys) + 0.2 * noise


def _features(videos):
    """A cheap stand-in for I3D: per video mean, std and last-frame mean, shape (N, 3)."""
    videos = np.asarray(videos, np.float64)
    return np.stack(
        [
            videos.mean(axis=(1, 2, 3, 4)),
            videos.std(axis=(1, 2, 3, 4)),
            videos[:, -1].mean(axis=(1, 2, 3)),
        ],
        axis=1,
    )


def _batches(clips, batch_size):
    for start in range(0, len(clips), batch_size):
        yield {"video": jnp.asarray(clips[start : start + batch_size])}


HAND_VALUES = np.array(
    [
        [[0.5, 0.7], [0.9, 0.9], [0.1, 0.3]],  # clip 0: sample means 0.6, 0.9, 0.2
        [[0.4, 0.4], [0.2, 0.0], [0.8, 0.6]],  # clip 1: sample means 0.4, 0.1, 0.7
    ]
)


def test_aggregate_mean_and_best_of_n_higher_is_better():
    summary = protocol_lib.aggregate_metric(HAND_VALUES, higher_is_better=True)
    flat = HAND_VALUES.ravel().tolist()
    assert summary["mean"]["value"] == pytest.approx(sum(flat) / 12)
    assert summary["mean"]["std"] == pytest.approx(statistics.pstdev(flat))
    assert summary["best_sample"] == [1, 2]
    best = summary["best_of_3"]
    assert best["value"] == pytest.approx((0.9 + 0.7) / 2)
    assert best["std"] == pytest.approx(0.1)
    # MCVD's conf95: mean - norm.interval(0.95, loc=mean, scale=sem(best values))[0]
    best_values = [0.9, 0.7]
    low, _ = scipy.stats.norm.interval(0.95, loc=0.8, scale=scipy.stats.sem(best_values))
    assert best["ci95"] == pytest.approx(0.8 - low, rel=1e-9)
    one_clip = protocol_lib.aggregate_metric(HAND_VALUES[:1], higher_is_better=True)
    assert one_clip["best_of_3"]["ci95"] is None  # no spread of one value (MCVD: NaN)
    np.testing.assert_allclose(
        summary["per_frame"]["best_of_3"], [(0.9 + 0.8) / 2, (0.9 + 0.6) / 2]
    )
    np.testing.assert_allclose(
        summary["per_frame"]["mean"],
        [(0.5 + 0.9 + 0.1 + 0.4 + 0.2 + 0.8) / 6, (0.7 + 0.9 + 0.3 + 0.4 + 0.0 + 0.6) / 6],
    )


def test_aggregate_best_of_n_lower_is_better_and_mean_only():
    summary = protocol_lib.aggregate_metric(HAND_VALUES, higher_is_better=False)
    assert summary["best_sample"] == [2, 1]
    assert summary["best_of_3"]["value"] == pytest.approx((0.2 + 0.1) / 2)
    assert summary["best_of_3"]["std"] == pytest.approx(0.05)
    mean_only = protocol_lib.aggregate_metric(HAND_VALUES, higher_is_better=True, best_of_n=False)
    assert set(mean_only) == {"mean", "per_frame"}
    with pytest.raises(ValueError, match="clips, samples, frames"):
        protocol_lib.aggregate_metric(HAND_VALUES[0], higher_is_better=True)


def test_presets_and_overrides():
    assert protocol_lib.resolve_protocol("predvdm").aggregations == ("mean",)
    assert protocol_lib.resolve_protocol("predvdm").num_samples == 1
    mcvd = protocol_lib.resolve_protocol("mcvd")
    assert (mcvd.num_samples, mcvd.num_clips, mcvd.aggregations) == (
        10,
        256,
        ("mean", "best_of_10"),
    )
    extdm = protocol_lib.resolve_protocol("extdm", num_clips=8, num_samples=4)
    assert (extdm.num_samples, extdm.num_clips, extdm.best_of_n) == (4, 8, True)
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        protocol_lib.resolve_protocol("fitvid")


def test_protocol_from_config_takes_eval_num_samples_when_above_1_or_overridden():
    def counts(overrides=None, config_samples=1, **flags):
        config = ml_collections.ConfigDict(
            {"eval": dict(protocol="mcvd", num_clips=64, num_samples=config_samples)}
        )
        protocol = protocol_lib.protocol_from_config(config, overrides, **flags)
        return protocol.name, protocol.num_clips, protocol.num_samples

    assert counts() == ("mcvd", 64, 10)  # eval.num_samples=1, its default: the preset's
    assert counts(config_samples=3) == ("mcvd", 64, 3)
    assert counts({"eval.num_samples": 1}) == ("mcvd", 64, 1)
    flags = dict(name="predvdm", num_clips=8, num_samples=2)
    assert counts(config_samples=3, **flags) == ("predvdm", 8, 2)


def test_fvd_from_features_closed_forms():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 3))
    shift = np.array([1.0, -2.0, 0.5])
    # Sample 0 equals the reals, sample 1 is shifted: per-trajectory FVDs 0 and |shift|^2.
    fake = np.stack([real, real + shift], axis=1)
    result = protocol_lib.fvd_from_features(real, fake)
    assert result["trajectory_mean"] == pytest.approx(np.sum(shift**2) / 2, rel=1e-6)
    assert result["trajectory_std"] == pytest.approx(np.sum(shift**2) / 2, rel=1e-6)
    assert (result["real_videos"], result["fake_videos"]) == (40, 80)
    # Every sample equals the reals: the pooled set has the same mean and covariance
    # a·Σ with a = 2(C-1)/(2C-1), so FVD = (1 - √a)² tr Σ.
    same = protocol_lib.fvd_from_features(real, np.stack([real, real], axis=1))
    a = 2 * 39 / 79
    assert same["all_samples"] == pytest.approx(
        (1 - math.sqrt(a)) ** 2 * np.trace(np.cov(real, rowvar=False)), rel=1e-5
    )
    assert same["trajectory_mean"] == pytest.approx(0.0, abs=1e-8)


def test_perfect_predictor_and_baselines_by_hand():
    clips = _moving_clips(4)
    protocol = protocol_lib.resolve_protocol(
        "mcvd", num_clips=4, num_samples=2, metric_style="predvdm"
    )
    result = protocol_lib.evaluate(
        _batches(clips, 2),
        _perfect_predict,
        lambda video: 0.5 * video,
        protocol,
        cond_frames=COND,
        pred_frames=PRED,
        key=jax.random.key(0),
        feature_fn=_features,
    )
    metrics = protocol_lib.summarize(result, protocol, cond_frames=COND, pred_frames=PRED)

    model = metrics["model"]
    assert model["ssim"]["mean"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert model["psnr"]["mean"]["value"] == 100.0
    assert model["psnr"]["best_of_2"]["value"] == 100.0
    for variant in ("cond+pred", "pred-only"):
        assert model["fvd"][variant]["trajectory_mean"] == pytest.approx(0.0, abs=1e-6)
    assert model["fvd"]["cond+pred"]["frames"] == COND + PRED
    assert isinstance(model["lpips"], str) and "unavailable" in model["lpips"]

    unit = (clips + 1.0) / 2.0
    future = unit[:, COND:]
    copy_mse = ((unit[:, COND - 1 : COND] - future) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(
        result.per_frame["copy_last_frame"]["psnr"][:, 0], 10 * np.log10(1 / copy_mse), rtol=1e-4
    )
    half = (0.5 * clips[:, COND:] + 1.0) / 2.0
    vq_mse = ((half - future) ** 2).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(
        result.per_frame["vq_reconstruction"]["psnr"][:, 0], 10 * np.log10(1 / vq_mse), rtol=1e-4
    )
    baselines = metrics["baselines"]
    # PredVDM's pixel MSE: per video the sum of squared errors over frames, channels, pixels.
    assert model["pixel_mse"]["mean"]["value"] == 0.0
    copy_sums = ((unit[:, COND - 1 : COND] - future) ** 2).sum(axis=(1, 2, 3, 4))
    copy_pixel_mse = baselines["copy_last_frame"]["pixel_mse"]
    assert copy_pixel_mse["mean"]["value"] == pytest.approx(copy_sums.mean(), rel=1e-5)
    assert copy_pixel_mse["mean"]["std"] == pytest.approx(copy_sums.std(), rel=1e-4)
    assert baselines["vq_reconstruction"]["pixel_mse"]["per_frame"]["mean"] == pytest.approx(
        ((half - future) ** 2).sum(axis=(2, 3, 4)).mean(axis=0), rel=1e-5
    )
    assert baselines["copy_last_frame"]["psnr"]["mean"]["value"] == pytest.approx(
        np.mean(10 * np.log10(1 / copy_mse)), rel=1e-5
    )
    assert "best_of_2" not in baselines["copy_last_frame"]["psnr"]
    assert baselines["copy_last_frame"]["num_samples"] == 1
    real_pred_only = _features(future)
    expected = fvd_lib.frechet_distance(real_pred_only, _features(half))
    assert baselines["vq_reconstruction"]["fvd"]["pred-only"]["all_samples"] == pytest.approx(
        expected, rel=1e-6
    )
    # PredVDM's fvd-condXpredY: the fakes' cond frames are the VQ's (here 0.5 × cond), the
    # reals' the real ones, so even the perfect predictor is not at 0.
    half_cond = (0.5 * clips[:, :COND] + 1.0) / 2.0
    real_cond_pred = _features(unit)
    vq_cond = model["fvd"]["vq-cond+pred"]
    perfect = fvd_lib.frechet_distance(
        real_cond_pred, _features(np.concatenate([half_cond, future], axis=1))
    )
    assert perfect > 1e-4  # while cond+pred is 0 (above)
    assert vq_cond["trajectory_mean"] == pytest.approx(perfect, rel=1e-6)
    assert vq_cond["frames"] == COND + PRED
    assert baselines["vq_reconstruction"]["fvd"]["vq-cond+pred"]["all_samples"] == pytest.approx(
        fvd_lib.frechet_distance(real_cond_pred, _features((0.5 * clips + 1.0) / 2.0)), rel=1e-6
    )


def test_fvd_variants_and_sample_keys_are_wired():
    clips = _moving_clips(6, seed=1)
    key = jax.random.key(3)
    protocol = protocol_lib.resolve_protocol("extdm", num_clips=6, num_samples=2)
    result = protocol_lib.evaluate(
        _batches(clips, 2),
        _noisy_predict,
        None,
        protocol,
        cond_frames=COND,
        pred_frames=PRED,
        key=key,
        feature_fn=_features,
    )
    metrics = protocol_lib.summarize(result, protocol, cond_frames=COND, pred_frames=PRED)
    assert "vq_reconstruction" not in metrics["baselines"]
    assert metrics["model"]["fvd"]["vq-cond+pred"] == "skipped: no VQ (reconstruct_fn)"

    # Rebuild every prediction by hand, clip by clip, with the documented key scheme
    # fold_in(fold_in(key, s), i) for sample s of clip i.
    fakes = np.zeros((6, 2, PRED) + clips.shape[2:], np.float32)
    for i in range(6):
        for s in range(2):
            k = jax.random.fold_in(jax.random.fold_in(key, s), i)
            fakes[i, s] = np.asarray(_noisy_predict(jnp.asarray(clips[i : i + 1, :COND]), k[None]))[
                0
            ]
    unit = lambda v: (np.clip(v, -1, 1) + 1) / 2
    cond, future = unit(clips[:, :COND]), unit(clips[:, COND:])
    for variant, make in (
        ("cond+pred", lambda f: np.concatenate([cond, f], axis=1)),
        ("pred-only", lambda f: f),
    ):
        real = _features(make(future))
        per_sample = [_features(make(unit(fakes[:, s]))) for s in range(2)]
        fvd = metrics["model"]["fvd"][variant]
        assert fvd["all_samples"] == pytest.approx(
            fvd_lib.frechet_distance(real, np.concatenate(per_sample)), rel=1e-5
        )
        assert fvd["trajectory_mean"] == pytest.approx(
            np.mean([fvd_lib.frechet_distance(real, f) for f in per_sample]), rel=1e-5
        )
        assert fvd["fake_videos"] == 12
    mse = ((unit(fakes) - future[:, None]) ** 2).mean(axis=(3, 4, 5))
    np.testing.assert_allclose(result.per_frame["model"]["psnr"], 10 * np.log10(1 / mse), rtol=1e-4)


def test_fvd_skipped_with_a_note_and_padding_ignored():
    clips = _moving_clips(1)
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=1)
    padded = {"video": jnp.asarray(np.concatenate([clips, clips])), "mask": jnp.asarray([1.0, 0.0])}
    result = protocol_lib.evaluate(
        [padded],
        _perfect_predict,
        None,
        protocol,
        cond_frames=COND,
        pred_frames=PRED,
        key=jax.random.key(0),
        feature_fn=_features,
    )
    assert result.per_frame["model"]["ssim"].shape == (1, 1, PRED)
    metrics = protocol_lib.summarize(result, protocol, cond_frames=COND, pred_frames=PRED)
    assert "at least 2" in metrics["model"]["fvd"]["cond+pred"]
    reasons = protocol_lib.fvd_skip_reasons(8, 5, 5, None)
    assert reasons["cond+pred"] is None and "at least 10" in reasons["pred-only"]
    reasons = protocol_lib.fvd_skip_reasons(8, 5, 10, "I3D weights unavailable (x)")
    assert all("I3D weights unavailable" in note for note in reasons.values())


def test_lpips_wired_when_weights_given_and_never_a_number_without(monkeypatch):
    # A closed-form stand-in for LPIPS-AlexNet (whose compile is too slow for a unit test):
    # weight × mean |a − b| per frame.
    def fake_lpips_video(params, a, b):
        return params["weight"] * jnp.mean(jnp.abs(a - b), axis=(2, 3, 4))

    monkeypatch.setattr(protocol_lib.lpips_lib, "lpips_video", fake_lpips_video)
    clips = _moving_clips(2, size=32)
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=2)
    params = {"weight": jnp.asarray(2.0)}
    result = protocol_lib.evaluate(
        _batches(clips, 2),
        _perfect_predict,
        None,
        protocol,
        cond_frames=COND,
        pred_frames=PRED,
        key=jax.random.key(0),
        lpips_params=params,
    )
    metrics = protocol_lib.summarize(result, protocol, cond_frames=COND, pred_frames=PRED)
    assert metrics["model"]["lpips"]["mean"]["value"] == pytest.approx(0.0, abs=1e-7)
    unit = (clips + 1.0) / 2.0
    expected = 2.0 * np.abs(unit[:, COND - 1 : COND] - unit[:, COND:]).mean(axis=(2, 3, 4))
    np.testing.assert_allclose(
        result.per_frame["copy_last_frame"]["lpips"][:, 0], expected, rtol=1e-5
    )
    assert "I3D" in metrics["model"]["fvd"]["pred-only"]
    assert "31x31" in protocol_lib.lpips_unavailable_reason(params, 16, 16)
    assert "convert_lpips" in protocol_lib.lpips_unavailable_reason(None, 64, 64)


def test_video_sets_score_the_frames_after_cond():
    real = _moving_clips(3, seed=2)
    fake = real.copy()
    fake[:, :COND] = 0.0  # the cond frames are not scored
    fake[:, -1] = np.clip(fake[:, -1] + 0.1, -1, 1)
    metrics = protocol_lib.evaluate_video_sets(
        [{"real": real, "fake": fake}], cond_frames=COND, feature_fn=_features
    )
    per_frame = metrics["model"]["psnr"]["per_frame"]["mean"]
    assert len(per_frame) == PRED and per_frame[:-1] == [100.0] * (PRED - 1)
    unit_real, unit_fake = (real[:, -1] + 1) / 2, (fake[:, -1] + 1) / 2
    expected = np.mean(10 * np.log10(1 / ((unit_real - unit_fake) ** 2).mean(axis=(1, 2, 3))))
    assert per_frame[-1] == pytest.approx(expected, rel=1e-5)
    assert metrics["model"]["fvd"]["pred-only"]["real_videos"] == 3
    assert "no VQ" in metrics["model"]["fvd"]["vq-cond+pred"]
    assert metrics["baselines"] == {}
    with pytest.raises(ValueError, match="same shape"):
        protocol_lib.evaluate_video_sets([{"real": real, "fake": fake[:, 1:]}])


@jax.jit
def _copy_last_predict(cond, key):
    del key
    return jnp.repeat(cond[:, -1:], PRED, axis=1)


def test_several_models_share_clips_reals_and_baselines():
    clips = _moving_clips(4, seed=2)
    protocol = protocol_lib.resolve_protocol("mcvd", num_clips=4, num_samples=2)
    calls = []

    def counted_features(videos):
        calls.append(len(videos))
        return _features(videos)

    result = protocol_lib.evaluate(
        _batches(clips, 2),
        {"perfect": _perfect_predict, "copy": _copy_last_predict},
        lambda video: 0.5 * video,
        protocol,
        cond_frames=COND,
        pred_frames=PRED,
        key=jax.random.key(0),
        feature_fn=counted_features,
        keep_videos=3,
    )
    # Per batch: the reals once per video kind (cond+pred serves vq-cond+pred too), and per
    # FVD variant both models, copy-last and the VQ baseline.
    assert len(calls) == 2 * (2 + 3 * (2 * protocol.num_samples + 1 + 1))
    assert result.models == ["perfect", "copy"]
    np.testing.assert_array_equal(
        result.per_frame["copy"]["psnr"][:, 0], result.per_frame["copy_last_frame"]["psnr"][:, 0]
    )

    perfect = protocol_lib.summarize(
        result, protocol, cond_frames=COND, pred_frames=PRED, model="perfect"
    )
    copy = protocol_lib.summarize(
        result, protocol, cond_frames=COND, pred_frames=PRED, model="copy"
    )
    assert perfect["model"]["psnr"]["mean"]["value"] == 100.0
    assert (
        set(perfect["baselines"])
        == set(copy["baselines"])
        == {
            "copy_last_frame",
            "vq_reconstruction",
        }
    )
    baseline_fvd = copy["baselines"]["copy_last_frame"]["fvd"]["pred-only"]["all_samples"]
    assert copy["model"]["fvd"]["pred-only"]["trajectory_mean"] == pytest.approx(baseline_fvd)
    assert perfect["seconds"]["predict"] == pytest.approx(
        result.predict_seconds["perfect"], abs=1e-3
    )

    np.testing.assert_allclose(result.model_videos("perfect")["fake"], clips[:3, COND:])
    np.testing.assert_allclose(
        result.model_videos("copy")["fake"], np.repeat(clips[:3, COND - 1 : COND], PRED, 1)
    )
    with pytest.raises(ValueError, match="named like a baseline"):
        protocol_lib.evaluate(
            _batches(clips, 2),
            {"copy_last_frame": _copy_last_predict},
            None,
            protocol,
            cond_frames=COND,
            pred_frames=PRED,
            key=jax.random.key(0),
        )


def test_non_finite_predictions_are_one_clear_error():
    clips = _moving_clips(2)

    def nan_predict(cond, key):
        return _perfect_predict(cond, key).at[0, 0, 0, 0, 0].set(jnp.nan)

    with pytest.raises(ValueError, match="predict_fn of model returned NaN or Inf frames"):
        protocol_lib.evaluate(
            _batches(clips, 2),
            nan_predict,
            None,
            protocol_lib.resolve_protocol("predvdm", num_clips=2),
            cond_frames=COND,
            pred_frames=PRED,
            key=jax.random.key(0),
        )


def test_predict_fn_sees_only_the_conditioning_frames_never_the_future():
    """Two clip sets with the same cond frames and different futures: predict_fn is handed
    exactly the cond frames, so the predictions and their (ground-truth-free) FVD features
    are identical, while everything that does read the future differs."""
    clips = _moving_clips(4, seed=5)
    altered = clips.copy()
    altered[:, COND:] = _moving_clips(4, seed=6)[:, COND:]
    protocol = protocol_lib.resolve_protocol("mcvd", num_clips=4, num_samples=2)

    def run(video):
        seen = []

        def spy(cond, key):
            seen.append(np.asarray(cond))
            # Reads every frame it is given, so a future frame handed over would show.
            return _noisy_predict(cond, key) + 0.1 * jnp.mean(cond, axis=1, keepdims=True)

        result = protocol_lib.evaluate(
            _batches(video, 2),
            spy,
            lambda future: 0.5 * future,
            protocol,
            cond_frames=COND,
            pred_frames=PRED,
            key=jax.random.key(0),
            feature_fn=_features,
            keep_videos=4,
        )
        return seen, result

    seen, result = run(clips)
    seen_altered, result_altered = run(altered)
    # Per batch b, per sample: the batch's cond frames and nothing else.
    for got in (seen, seen_altered):
        assert len(got) == 2 * protocol.num_samples
        for call, cond in enumerate(got):
            b = call // protocol.num_samples
            np.testing.assert_array_equal(cond, clips[2 * b : 2 * b + 2, :COND])
    np.testing.assert_array_equal(
        result.model_videos()["fake"], result_altered.model_videos()["fake"]
    )
    for variant in protocol_lib.FVD_VARIANTS:
        np.testing.assert_array_equal(
            result.features[variant]["fake"]["model"],
            result_altered.features[variant]["fake"]["model"],
        )
        # The real clips' features see the future: they differ, so the futures did.
        assert not np.allclose(
            result.features[variant]["real"], result_altered.features[variant]["real"]
        )
    # Scores against the truth and the VQ baseline (which reconstructs the future) differ too.
    for system in ("model", "vq_reconstruction"):
        assert not np.allclose(
            result.per_frame[system]["psnr"], result_altered.per_frame[system]["psnr"]
        )


class _FakeClock:
    """``time.perf_counter`` that only moves when a fake predict function advances it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_predicted_frames_per_second_leaves_out_the_first_call_and_padding(monkeypatch):
    """5 clips in batches of 2 (the last padded), 2 samples: 6 predict calls; the first
    "compiles" for 100 s, the others take 0.5 s each."""
    clock = _FakeClock()
    monkeypatch.setattr(protocol_lib, "time", clock)
    calls = []

    def predict(cond, key):
        clock.now += 100.0 if not calls else 0.5
        calls.append(cond.shape[0])
        return _perfect_predict(cond, key)

    clips = _moving_clips(5, seed=4)
    batches = [
        {"video": jnp.asarray(clips[:2])},
        {"video": jnp.asarray(clips[2:4])},
        {"video": jnp.asarray(clips[[4, 0]]), "mask": jnp.asarray([1.0, 0.0])},
    ]
    protocol = protocol_lib.resolve_protocol("mcvd", num_clips=5, num_samples=2)
    result = protocol_lib.evaluate(
        batches, predict, None, protocol, cond_frames=COND, pred_frames=PRED, key=jax.random.key(0)
    )
    metrics = protocol_lib.summarize(
        result, protocol, cond_frames=COND, pred_frames=PRED, device="1 x test chip"
    )
    assert calls == [2] * 6
    # Timed: batch 0's sample 1 (2 clips), batch 1's two samples (2 + 2), batch 2's two
    # samples (1 real clip each): 8 clips of PRED frames in 5 x 0.5 s.
    throughput = metrics["throughput"]
    assert throughput["predicted_frames_per_second"] == pytest.approx(8 * PRED / 2.5)
    assert (
        "2..6 of 6" in throughput["measured"]
        and f"{8 * PRED} predicted frames" in (throughput["measured"])
    )
    assert throughput["device"] == "1 x test chip"
    assert metrics["seconds"]["predict"] == pytest.approx(102.5)  # compilation included

    clock.now, calls[:] = 0.0, []
    one = protocol_lib.resolve_protocol("predvdm", num_clips=2)
    result = protocol_lib.evaluate(
        batches[:1], predict, None, one, cond_frames=COND, pred_frames=PRED, key=jax.random.key(0)
    )
    alone = protocol_lib.summarize(result, one, cond_frames=COND, pred_frames=PRED)["throughput"]
    assert alone["predicted_frames_per_second"] is None
    assert alone["measured"].startswith("not measured: 1 predict call(s)")


def test_metric_style_config_field_is_validated_and_implied_by_the_mcvd_preset():
    from predvdm_jax import config as config_lib

    config = config_lib.default_config()
    assert config.eval.metric_style == "predvdm"
    raw = config.to_dict()
    raw["eval"]["metric_style"] = "extdm"
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(ml_collections.ConfigDict(raw))
    lines = [line for line in str(error.value).splitlines() if "metric_style" in line]
    assert len(lines) == 1 and "eval.metric_style 'extdm' is not one of" in lines[0]

    def style(protocol, metric_style="predvdm", overrides=None, mcvd_style="mcvd"):
        config = ml_collections.ConfigDict(
            {
                "eval": dict(
                    protocol=protocol,
                    num_clips=8,
                    num_samples=1,
                    metric_style=metric_style,
                    mcvd_style=mcvd_style,
                )
            }
        )
        return protocol_lib.protocol_from_config(config, overrides).metric_style

    assert style("mcvd") == "mcvd"  # the default: the preset's
    assert style("predvdm") == "predvdm"
    assert style("predvdm", "mcvd") == "mcvd"
    assert style("mcvd", "predvdm", {"eval.metric_style": "predvdm"}) == "predvdm"
    # MCVD scores SMMNIST's black-and-white frames rounded to 0 / 1: the SMMNIST configs say
    # so with eval.mcvd_style, which only the mcvd preset reads.
    assert style("mcvd", mcvd_style="mcvd_mnist") == "mcvd_mnist"
    assert style("predvdm", mcvd_style="mcvd_mnist") == "predvdm"
    assert style("mcvd", "mcvd", {"eval.metric_style": "mcvd"}, "mcvd_mnist") == "mcvd"
    for name in ("smmnist64", "smmnist64_c5"):
        config = config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
        assert protocol_lib.protocol_from_config(config, name="mcvd").metric_style == "mcvd_mnist"
    raw = config.to_dict()
    raw["eval"]["mcvd_style"] = "predvdm"
    with pytest.raises(config_lib.ConfigError, match="eval.mcvd_style 'predvdm' is not one of"):
        config_lib.validate(ml_collections.ConfigDict(raw))
    with pytest.raises(ValueError, match="unknown metric style"):
        protocol_lib.resolve_protocol("predvdm", metric_style="extdm")


def test_mcvd_metric_style_video_level_psnr_and_gray_ssim_reach_metrics_json(tmp_path):
    import json

    from skimage.metrics import structural_similarity

    from predvdm_jax.evaluation import report

    clips = _moving_clips(3, channels=3, seed=4)
    protocol = protocol_lib.resolve_protocol("predvdm", num_clips=3, num_samples=3)
    protocol = dataclasses.replace(protocol, best_of_n=True, metric_style="mcvd")

    @jax.jit
    def predict(cond, key):  # error growing with the horizon, so video and frame PSNR differ
        noise = jax.vmap(lambda k: jax.random.normal(k, (PRED,) + cond.shape[2:]))(key)
        return (
            _perfect_predict(cond, key)
            + 0.05 * jnp.arange(1, PRED + 1)[:, None, None, None] * noise
        )

    result = protocol_lib.evaluate(
        _batches(clips, 2),
        predict,
        None,
        protocol,
        cond_frames=COND,
        pred_frames=PRED,
        key=jax.random.key(1),
    )
    metrics = protocol_lib.summarize(result, protocol, cond_frames=COND, pred_frames=PRED)
    path = report.write_metrics_json(str(tmp_path / "metrics.json"), metrics)
    written = json.loads(open(path).read())
    assert written["protocol"]["metric_style"] == "mcvd"
    assert "video" in written["protocol"]["psnr"] and "PIL" in written["protocol"]["ssim"]
    assert "video-level PSNR" in written["protocol"]["best_of_n"]

    # numpy / skimage references from the same predictions (sample keys as evaluate's).
    real = (clips[:, COND : COND + PRED] + 1) / 2
    fakes = []
    for sample in range(3):
        sample_key = jax.random.fold_in(jax.random.key(1), sample)
        keys = jax.vmap(lambda clip: jax.random.fold_in(sample_key, clip))(jnp.arange(3))
        frames = np.asarray(predict(jnp.asarray(clips[:, :COND]), keys))
        fakes.append((np.clip(frames, -1, 1) + 1) / 2)
    fakes = np.stack(fakes, axis=1).astype(np.float32)  # (clips, samples, frames, H, W, C)
    frame_mse = ((fakes - real[:, None].astype(np.float32)) ** 2).mean(axis=(3, 4, 5))
    video_psnr = 10 * np.log10(1 / frame_mse.mean(axis=2))  # (clips, samples)
    frame_psnr = 10 * np.log10(1 / frame_mse)

    def gray(frame):
        rgb = (frame * np.float32(255)).astype(np.uint8)
        return np.asarray(Image.fromarray(rgb).convert("L"))

    ssim = np.zeros(frame_mse.shape)
    for c, s, t in np.ndindex(*ssim.shape):
        ssim[c, s, t] = structural_similarity(
            gray(fakes[c, s, t]),
            gray(real[c, t].astype(np.float32)),
            data_range=255,
            gaussian_weights=True,
            use_sample_covariance=False,
        )
    psnr = written["model"]["psnr"]
    assert psnr["mean"]["value"] == pytest.approx(video_psnr.mean(), abs=1e-3)
    assert psnr["best_of_3"]["value"] == pytest.approx(video_psnr.max(axis=1).mean(), abs=1e-3)
    np.testing.assert_allclose(psnr["per_frame"]["mean"], frame_psnr.mean(axis=(0, 1)), atol=1e-3)
    assert abs(video_psnr.mean() - frame_psnr.mean()) > 0.1  # the two definitions differ here
    best = video_psnr.argmax(axis=1)
    np.testing.assert_allclose(
        psnr["per_frame"]["best_of_3"], frame_psnr[np.arange(3), best].mean(axis=0), atol=1e-3
    )
    assert written["model"]["ssim"]["mean"]["value"] == pytest.approx(ssim.mean(), abs=1e-5)
    best_ssim = ssim.mean(axis=2).max(axis=1).mean()
    assert written["model"]["ssim"]["best_of_3"]["value"] == pytest.approx(best_ssim, abs=1e-5)
    # The baselines follow the style too.
    copy_last = written["baselines"][protocol_lib.COPY_LAST]["psnr"]
    assert copy_last["mean"]["count"] == 3


def test_a_resumed_evaluation_scores_only_the_rest_and_equals_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    """5 clips in batches of 2 (the last padded), two models x 2 samples, baselines, FVD and
    kept videos spanning batches. A run stopped by an error in batch 2's second sample of
    "noisy" leaves in OUT/progress the records of batches 0 and 1 and of batch 2's first
    sample; the rerun predicts the rest alone, and its results are the uninterrupted run's, to
    the bit. Throughput leaves out the first call of each run."""
    from predvdm_jax.evaluation import progress as progress_lib

    clock = _FakeClock()
    monkeypatch.setattr(protocol_lib, "time", clock)
    clips = _moving_clips(5, seed=8)
    batches = [
        {"video": jnp.asarray(clips[:2])},
        {"video": jnp.asarray(clips[2:4])},
        {"video": jnp.asarray(clips[[4, 0]]), "mask": jnp.asarray([1.0, 0.0])},
    ]
    seen = []

    def timed(predict, fail_at=None):
        calls = []

        def run(cond, key):
            batch = next(
                i for i, b in enumerate(batches) if np.array_equal(b["video"][:, :COND], cond)
            )
            if (batch, calls.count(batch)) == fail_at:  # (batch, this function's call in it)
                raise RuntimeError("preempted")
            calls.append(batch)
            clock.now += 0.5 if seen else 100.0
            seen.append(batch)
            return predict(cond, key)

        return run

    protocol = protocol_lib.resolve_protocol("mcvd", num_clips=5, num_samples=2)
    fingerprint = {"model": "test", "batch_size": 2}

    def evaluate(out, fail_at=None):
        seen.clear()
        progress = progress_lib.Progress(str(tmp_path / out), fingerprint)
        return protocol_lib.evaluate(
            batches,
            {"noisy": timed(_noisy_predict, fail_at), "copy": timed(_copy_last_predict)},
            lambda video: jnp.clip(0.9 * video, -1, 1),
            protocol,
            cond_frames=COND,
            pred_frames=PRED,
            key=jax.random.key(3),
            feature_fn=_features,
            keep_videos=3,
            resume=progress.load(),
            on_batch=progress.add,
            on_sample=progress.add_sample,
        )

    straight = evaluate("straight")
    clock.now = 0.0
    with pytest.raises(RuntimeError, match="preempted"):
        evaluate("resumed", fail_at=(2, 1))  # batch 2, its second call of "noisy"
    saved = sorted(os.listdir(tmp_path / "resumed" / "progress"))
    assert saved[:2] == ["batch_00000.npz", "batch_00001.npz"] and saved[-1] == "run.json"
    assert len(saved) == 4 and saved[2].startswith("batch_00002.sample_00000.")
    resumed = evaluate("resumed")
    assert seen == [2, 2, 2]  # noisy's sample 1 and copy's two: batches 0, 1 and one sample kept

    for system, by_metric in straight.per_frame.items():
        for metric, values in by_metric.items():
            np.testing.assert_array_equal(resumed.per_frame[system][metric], values)
    for system, by_metric in straight.per_clip.items():
        np.testing.assert_array_equal(resumed.per_clip[system]["psnr"], by_metric["psnr"])
    assert straight.features.keys() == resumed.features.keys() and straight.features
    for variant, features in straight.features.items():
        np.testing.assert_array_equal(resumed.features[variant]["real"], features["real"])
        for system, fake in features["fake"].items():
            np.testing.assert_array_equal(resumed.features[variant]["fake"][system], fake)
    for name in ("cond", "real"):
        np.testing.assert_array_equal(resumed.videos[name], straight.videos[name])
        assert len(straight.videos[name]) == 3
    for system in ("noisy", "copy"):
        np.testing.assert_array_equal(
            resumed.videos["fake"][system], straight.videos["fake"][system]
        )
        summary = [
            protocol_lib.summarize(r, protocol, cond_frames=COND, pred_frames=PRED, model=system)
            for r in (straight, resumed)
        ]
        assert summary[0]["model"] == summary[1]["model"]
        assert summary[0]["baselines"] == summary[1]["baselines"]
    # "noisy": 6 calls in all; the first run's first (batch 0 sample 0) and the second run's
    # first (batch 2 sample 1) compile; timed: 0.5 s each for batch 0 sample 1, batch 1's two
    # and batch 2 sample 0 (one real clip).
    throughput = resumed.throughput["noisy"]
    assert (throughput.calls, throughput.timed_calls) == (6, 4)
    assert throughput.frames == (2 + 4 + 1) * PRED
    assert throughput.seconds == pytest.approx(4 * 0.5)
    measured = throughput.summary()["measured"]
    assert measured.startswith("4 of 6 predict calls") and "2 runs" in measured

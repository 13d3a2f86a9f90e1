import json

import pytest

from predvdm_jax import config as config_lib
from predvdm_jax.evaluation import sweep as sweep_lib


def _config():
    return config_lib.finalize(config_lib.default_config())


def test_parse_sweep_overrides_only_the_named_fields():
    config = _config()
    samplings = sweep_lib.parse_sweep(
        " steps=10 ; eta=0,steps=20;sampler=dpm_solver_pp,steps=20,order=3,skip_type=logSNR;"
        "sampler=ddpm,clip_x0=1,reencode=true;",
        config,
    )
    assert list(samplings) == [
        "ddim_10_eta1",
        "ddim_20_eta0",
        "dpm_solver_pp_20_order3_logSNR",
        "ddpm_clip1_reencode",
    ]
    dpm = samplings["dpm_solver_pp_20_order3_logSNR"]
    assert (dpm.sampler, dpm.steps, dpm.order, dpm.skip_type, dpm.eta) == (
        "dpm_solver_pp",
        20,
        3,
        "logSNR",
        config.sampling.eta,
    )
    ddpm = samplings["ddpm_clip1_reencode"]
    assert (ddpm.clip_x0, ddpm.reencode, ddpm.steps) == (1.0, True, config.sampling.steps)
    assert isinstance(samplings["ddim_20_eta0"].eta, float)
    assert config.sampling.steps == 100  # the config itself is untouched
    assert sweep_lib.sampler_description(dpm) == "dpm_solver_pp, 20 steps, order 3, logSNR"
    assert sweep_lib.sampler_description(ddpm) == (
        "ddpm, every timestep, x0 clipped to ±1, re-encoded conditioning"
    )


def test_every_time_grid_and_x0_setting_gets_its_own_label():
    samplings = sweep_lib.parse_sweep(
        "sampler=dpm_solver_pp,steps=20;sampler=dpm_solver_pp,steps=20,skip_type=time_quadratic;"
        "clip_x0=2;dynamic_threshold=0.995;dynamic_threshold=0.995,clip_x0=2",
        _config(),
    )
    assert list(samplings) == [
        "dpm_solver_pp_20_order2",
        "dpm_solver_pp_20_order2_time_quadratic",
        "ddim_100_eta1_clip2",
        "ddim_100_eta1_thresh0.995",
        "ddim_100_eta1_thresh0.995_clip2",
    ]
    assert samplings["ddim_100_eta1_thresh0.995"].dynamic_threshold == 0.995
    describe = lambda label: sweep_lib.sampler_description(samplings[label])
    assert describe("dpm_solver_pp_20_order2_time_quadratic").endswith("order 2, time_quadratic")
    assert describe("ddim_100_eta1_clip2").endswith("x0 clipped to ±2")
    assert describe("ddim_100_eta1_thresh0.995").endswith(
        "x0 thresholded at quantile 0.995 of |x0| into ±1"
    )
    assert describe("ddim_100_eta1_thresh0.995_clip2").endswith("of |x0| into ±2")


def test_settings_that_differ_get_labels_that_differ():
    samplings = sweep_lib.parse_sweep(
        "eta=0.1234567;eta=0.1234568;sampler=dpm_solver_pp,steps=5;"
        "sampler=dpm_solver_pp,steps=5,lower_order_final=false",
        _config(),
    )
    assert list(samplings) == [
        "ddim_100_eta0.1234567",
        "ddim_100_eta0.1234568",
        "dpm_solver_pp_5_order2",
        "dpm_solver_pp_5_order2_no_lower_order_final",
    ]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "sweep is empty"),
        ("steps=10;stepz=20", r"'stepz=20' is not field=value"),
        ("steps", r"'steps' is not field=value"),
        ("steps=ten", r"sweep entry 'steps=ten', steps: 'ten' is not of type int"),
        ("reencode=maybe", "'maybe' is not of type bool"),
        ("sampler=dpm_solver_pp,order=4", r"sweep entry .*order must be 1, 2 or 3"),
        ("steps=0", "sampling.steps must be in"),
        ("dynamic_threshold=1.5", r"sampling.dynamic_threshold must be 0 \(off\) or a quantile"),
        ("sampler=dpm_solver_pp,eta=0;sampler=dpm_solver_pp,eta=1", "same sampler"),
        ("steps=3,steps=5", r"sweep entry 'steps=3,steps=5' sets steps twice"),
        (  # lower_order_final acts only below 10 steps: 20 steps run the same sampler twice
            "sampler=dpm_solver_pp,steps=20;sampler=dpm_solver_pp,steps=20,lower_order_final=false",
            "same sampler",
        ),
    ],
)
def test_parse_sweep_rejects_bad_entries_naming_them(spec, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        sweep_lib.parse_sweep(spec, _config())


def _metrics(sampler, ssim, fvd, seconds, frames_per_second=None):
    return {
        "protocol": {
            "name": "predvdm",
            "num_clips": 4,
            "num_samples": 1,
            "cond_frames": 2,
            "pred_frames": 3,
            "sampler": sampler,
        },
        "model": {
            "ssim": {"mean": {"value": ssim, "std": 0.1}},
            "psnr": {"mean": {"value": 20.0, "std": 1.0}},
            "lpips": "LPIPS unavailable",
            "fvd": {
                "cond+pred": {"trajectory_mean": fvd},
                "pred-only": "skipped",
                "vq-cond+pred": {"trajectory_mean": fvd + 1},
            },
        },
        "baselines": {
            "copy_last_frame": {
                "ssim": {"mean": {"value": 0.25, "std": 0.1}},
                "psnr": {"mean": {"value": 10.0, "std": 1.0}},
                "lpips": "LPIPS unavailable",
                "fvd": {"cond+pred": {"trajectory_mean": 300.0}, "pred-only": "skipped"},
            }
        },
        "seconds": {"predict": seconds, "reconstruct": 0.5},
        "throughput": {"predicted_frames_per_second": frames_per_second, "measured": "..."},
    }


def test_sweep_table_rows_and_files(tmp_path):
    all_metrics = {
        "ddim_10_eta1": _metrics("ddim, 10 steps, eta 1.0", 0.5, 123.45, 3.21, 56.78),
        "ddim_100_eta1": _metrics("ddim, 100 steps, eta 1.0", 0.625, 99.0, 30.0),
    }
    lines = sweep_lib.sweep_table(all_metrics).splitlines()
    assert lines[0] == (
        "Protocol `predvdm`: 4 clips × 1 samples, 2 → 3 frames; mean over predicted frames; "
        "FVD trajectory mean."
    )
    # pred-only FVD, skipped for every system, gets a note, not a column of n/a
    assert lines[2].endswith("| FVD cond+pred | FVD vq-cond+pred | predict s | frames/s |")
    assert lines[4] == (
        "| ddim, 10 steps, eta 1.0 | 0.5000 | 20.00 | n/a | 123.5 | 124.5 | 3.2 | 56.8 |"
    )
    assert lines[5] == (
        "| ddim, 100 steps, eta 1.0 | 0.6250 | 20.00 | n/a | 99.0 | 100.0 | 30.0 | n/a |"
    )
    assert lines[6] == "| copy last frame | 0.2500 | 10.00 | n/a | 300.0 | n/a |  |  |"
    assert lines[7:] == [
        "",
        "- LPIPS: LPIPS unavailable",
        "- FVD pred-only: skipped",
        "- frames/s of ddim, 100 steps, eta 1.0: ...",
    ]
    without_fvd = {
        label: dict(m, model=dict(m["model"], fvd={})) for label, m in all_metrics.items()
    }
    for m in without_fvd.values():
        m["baselines"] = {"copy_last_frame": dict(m["baselines"]["copy_last_frame"], fvd={})}
    lines = sweep_lib.sweep_table(without_fvd).splitlines()
    assert lines[0].endswith("2 → 3 frames; mean over predicted frames.")
    assert lines[2] == "| system | SSIM | PSNR | LPIPS | predict s | frames/s |"
    paths = sweep_lib.write_sweep(str(tmp_path / "out"), all_metrics)
    assert open(paths["table"]).read() == sweep_lib.sweep_table(all_metrics)
    assert json.load(open(paths["metrics"]))["ddim_100_eta1"]["model"]["ssim"]["mean"] == {
        "value": 0.625,
        "std": 0.1,
    }

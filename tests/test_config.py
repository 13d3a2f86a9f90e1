import math
import pathlib
import re

import ml_collections
import pytest

from predvdm_jax import config as config_lib
from predvdm_jax.diffusion import latent_diffusion, loss, parameterization, samplers, schedule
from predvdm_jax.evaluation import fvd
from predvdm_jax.models import predictor, vq_losses

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def load(name):
    return config_lib.load_config_file(CONFIGS / f"{name}.py")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.py")))
def test_every_config_file_is_valid(name):
    config = load(name)
    config_lib.validate(config)
    with pytest.raises(AttributeError):
        config.unet.model_chanels = 3  # locked: a typo cannot create a field


def test_published_settings():
    kth = load("kth64")
    assert (kth.data.cond_frames, kth.data.pred_frames, kth.eval.pred_frames) == (10, 5, 30)
    assert kth.optimizer.base_learning_rate * kth.data.batch_size == pytest.approx(2e-4)
    assert (kth.sampling.steps, kth.sampling.eta) == (100, 1.0)
    for name, frames in (("bair64_c1", (1, 5, 15, 6)), ("smmnist64_c5", (5, 5, 10, 10))):
        c = load(name)  # BAIR's common 1 -> 15, MCVD's SMMNIST 5 -> 10
        d = c.data
        assert (d.cond_frames, d.pred_frames, c.eval.pred_frames, d.frames_per_sample) == frames
    ucf = load("ucf101_64")  # ExtDM Table 7's 4 -> 12, in 5-frame blocks
    assert (ucf.data.cond_frames, ucf.data.pred_frames, ucf.eval.pred_frames) == (4, 5, 12)
    assert (ucf.data.frames_per_sample, ucf.data.channels, ucf.data.image_size) == (9, 3, 64)
    assert ucf.optimizer.base_learning_rate * ucf.data.batch_size == pytest.approx(2e-4)
    assert load("smmnist64_c5").data.test_dir == "data/SMMNIST2_h5/test"  # MCVD's 2 digits
    city = load("cityscapes128")
    assert city.optimizer.base_learning_rate * city.data.batch_size == pytest.approx(1e-4)
    # PredVDM validates every check_val_every_n_epoch epochs of ceil(train clips / 128) steps.
    for name, epochs, clips in (
        ("kth64", 200, 479),
        ("smmnist64", 2, 60000),
        ("cityscapes128", 30, 2975),
    ):
        assert load(name).train.eval_every == epochs * math.ceil(clips / 128), name
    assert (city.data.cond_frames, city.eval.pred_frames, city.unet.channel_mult) == (
        2,
        28,
        (1, 2, 4, 4),
    )


@pytest.mark.parametrize(
    "given, split, frames",
    [
        ({"test_dir": "T"}, ("test_dir", "T"), ("test_dir", "T")),
        ({"test_dir": "T", "latent_test_dir": "LT"}, ("latent_test_dir", "LT"), ("test_dir", "T")),
        (
            {"test_dir": "T", "latent_test_dir": "LT", "val_dir": "V"},
            ("val_dir", "V"),
            ("val_dir", "V"),
        ),
        ({"test_dir": "T", "latent_val_dir": "LV"}, ("latent_val_dir", "LV"), ("", "")),
        ({"val_dir": "V", "latent_val_dir": "LV"}, ("latent_val_dir", "LV"), ("val_dir", "V")),
        ({}, ("", ""), ("", "")),
    ],
)
def test_validation_split_is_the_val_split_when_given_else_the_test_split(given, split, frames):
    config = config_lib.default_config()
    config.data.update(given)
    assert config_lib.validation_split(config) == split
    assert config_lib.validation_split(config, frames_only=True) == frames


def test_validation_with_only_a_val_split_is_valid_and_with_none_is_refused():
    config = config_lib.default_config()
    config.train.eval_every = 10
    config.data.update(val_dir="V", batch_size=4)
    config.train.eval_clips = 4
    config_lib.validate(config)
    config.data.val_dir = ""
    with pytest.raises(config_lib.ConfigError, match="needs a split to validate on"):
        config_lib.validate(config)


def _bad(**changes):
    """A config built from a plain dict (as a hand-written file might), bypassing the
    type-safe assignment of ``default_config()``."""
    raw = config_lib.default_config().to_dict()
    for path, value in changes.items():
        section, _, field = path.rpartition("__")
        (raw[section] if section else raw)[field] = value
    return ml_collections.ConfigDict(raw)


def test_type_safe_assignment_names_the_field():
    config = config_lib.default_config()
    with pytest.raises(TypeError, match="model_channels"):
        config.unet.model_channels = "224"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(data__frame_per_sample=15), "unknown config field 'data.frame_per_sample'"),
        (dict(unet__model_channels="224"), "'unet.model_channels' must be an int"),
        (dict(data__horizontal_flip=1), "'data.horizontal_flip' must be a bool"),
        (dict(data__cond_frames=12), "longer than the training clip data.frames_per_sample"),
        (dict(model__mode="tcct"), "model.mode 'tcct' is not one of"),
        (dict(model__mode="tc_attn", model__attn_heads_tc=0), "needs LinearAttention settings"),
        (dict(sampling__order=4), "sampling.order must be 1, 2 or 3"),
        (dict(unet__model_channels=48), "divisible by 32"),
        (
            dict(data__image_size=66),
            "data.image_size 66 is not a positive multiple of 32: the VQ downsamples by 4 "
            "(vq.ch_mult has 3 levels), the UNet its latents by 8 (unet.channel_mult has 4 "
            "levels); nearest valid: 64 or 96",
        ),
        (dict(data__image_size=48), "data.image_size 48 is not a positive multiple of 32"),
        (dict(data__image_size=0), "the UNet its latents by 8 (unet.channel_mult has 4 levels); "),
        (dict(data__image_size=-8), "nearest valid: 32"),
        (dict(vq__n_embed=0), "vq.n_embed must be >= 1, got 0"),
        (dict(vq__ch=0), "vq.ch must be >= 1, got 0"),
        (dict(vq__z_channels=0), "vq.z_channels must be >= 1, got 0"),
        (dict(vq__embed_dim=-3), "vq.embed_dim must be >= 1, got -3"),
        (dict(vq__num_res_blocks=-1), "vq.num_res_blocks must be >= 0, got -1"),
        (dict(vq__ch_mult=()), "vq.ch_mult must be one or more multipliers >= 1, got ()"),
        (dict(unet__model_channels=0), "unet.model_channels must be >= 1, got 0"),
        (dict(unet__model_channels=-32), "unet.model_channels must be >= 1, got -32"),
        (dict(unet__num_res_blocks=-1), "unet.num_res_blocks must be >= 0, got -1"),
        (dict(unet__channel_mult=(1, 0, 2)), "multipliers >= 1, got (1, 0, 2)"),
        (dict(unet__model_channels=16, unet__channel_mult=(2, 4)), "divisible by 32"),
        (dict(unet__num_head_channels=0), "unet.num_head_channels must be >= 1"),
        (dict(unet__num_head_channels=-1), "unet.num_head_channels must be >= 1"),
        (dict(unet__num_head_channels=64), "must divide every level width"),
        (
            dict(unet__attention_resolutions=(1, 2, 16)),
            "unet.attention_resolutions (1, 2, 16): no level reaches (16,); they are downsampling "
            "factors, one of (1, 2, 4, 8) for unet.channel_mult with 4 levels",
        ),
        (dict(vq__in_channels=1), "vq.in_channels must be 3, got 1"),
        (dict(vq_train__eval_every=-1), "vq_train.eval_every must be >= 0 (0: no validation)"),
        (dict(diffusion__timesteps=1), "diffusion.timesteps must be >= 2, got 1"),
        (dict(diffusion__timesteps=0), "diffusion.timesteps must be >= 2, got 0"),
        (dict(vq_chunk=0), "vq_chunk must be >= 1 (frames per VQ encode/decode call), got 0"),
        (
            dict(sampling__steps=300),
            "sampling.steps 300 does not divide diffusion.timesteps 1000: the DDIM grid "
            "arange(0, T, T // steps) + 1 would run 334 steps, not 300; use a divisor of 1000, "
            "such as 250 or 500",
        ),
        (
            dict(sampling__steps=501),
            "would run 1000 steps, not 501; use a divisor of 1000, such as 500 or 1000",
        ),
        (
            dict(sampling__steps=3),
            "would run 4 steps, not 3; use a divisor of 1000, such as 2 or 4",
        ),
        (
            dict(sampling__steps=7, diffusion__timesteps=10),
            "sampling.steps 7 does not divide diffusion.timesteps 10: the DDIM grid arange(0, T, "
            "T // steps) + 1 would run 10 steps, not 7; use a divisor of 10, such as 5 or 10",
        ),
        (
            dict(sampling__steps=10, sampling__eta=1.1),
            "sampling.eta 1.1 exceeds 1.007, the largest DDIM with 10 steps allows on this "
            "schedule; use at most 1.006",
        ),
        (  # the η limit is not computed on an invalid schedule
            dict(sampling__eta=1.5, diffusion__linear_end=1.5),
            "invalid config: diffusion.linear_start < diffusion.linear_end must both lie in (0, 1)",
        ),
        (dict(vq__out_ch=4), "got vq.out_ch=4, data.channels=1"),
        (dict(vq__out_ch=1, data__channels=3), "got vq.out_ch=1, data.channels=3"),
        (dict(vq__out_ch=1, eval__gray_as_rgb=True), "eval.gray_as_rgb=True"),
        (dict(vq_train__perceptual_weight=1.0), "needs LPIPS weights"),
        (
            dict(vq_train__disc_loss="wgan"),
            "vq_train.disc_loss 'wgan' is not one of ('hinge', 'vanilla')",
        ),
        (dict(vq_train__disc_factor=-0.5), "vq_train.disc_factor must be a finite number >= 0"),
        (dict(diffusion__parameterization="score"), "diffusion.parameterization must be one of"),
        (dict(data__preload_max_gb=-1.0), "data.preload_max_gb must be >= 0"),
        (dict(sampling__eta=float("nan")), "sampling.eta must be a finite number >= 0, got nan"),
        (dict(unet__dropout=1.0), "unet.dropout must be in [0, 1), got 1.0"),
        (dict(optimizer__b2=float("nan")), "optimizer.b2 must be in [0, 1), got nan"),
        (dict(optimizer__b1=1.0), "optimizer.b1 must be in [0, 1), got 1.0"),
        (dict(optimizer__b2=1.5), "optimizer.b2 must be in [0, 1), got 1.5"),
        (dict(optimizer__b1=-0.1), "optimizer.b1 must be in [0, 1), got -0.1"),
        (dict(vq_train__b1=1.0), "vq_train.b1 must be in [0, 1), got 1.0"),
        (dict(vq_train__b2=-0.5), "vq_train.b2 must be in [0, 1), got -0.5"),
        (dict(optimizer__eps=0.0), "optimizer.eps must be a finite number > 0, got 0.0"),
        (dict(optimizer__eps=-1e-8), "optimizer.eps must be a finite number > 0, got -1e-08"),
        (dict(optimizer__cycle_length=0.0), "optimizer.cycle_length must be a finite number > 0"),
        (
            dict(optimizer__weight_decay=-0.01),
            "optimizer.weight_decay must be a finite number >= 0",
        ),
        (dict(optimizer__f_start=-1e-6), "optimizer.f_start must be a finite number >= 0"),
        (dict(optimizer__f_min=-0.5), "got f_min=-0.5, f_max=1.0"),
        (dict(optimizer__f_min=2.0), "must satisfy 0 <= f_min <= f_max (the lr multiplier"),
        (
            dict(optimizer__f_min=0.0, optimizer__cycle_length=1000.0, train__num_steps=2000),
            "optimizer.cycle_length 1000 is shorter than train.num_steps 2000: the lr multiplier "
            "falls past optimizer.f_min=0.0 after step 1000, to -0.999 at the last step; raise "
            "optimizer.cycle_length to at least train.num_steps",
        ),
        (dict(optimizer__warmup_steps=-1), "optimizer.warmup_steps must be >= 0"),
        (dict(vq_train__warmup_steps=-5), "vq_train.warmup_steps must be >= 0"),
        (
            dict(vq_train__lr_end_fraction=1.5),
            "vq_train.lr_end_fraction must be in [0, 1], got 1.5",
        ),
        (dict(vq_train__lr_end_fraction=-0.1), "vq_train.lr_end_fraction must be in [0, 1]"),
        (dict(seed=-1), "seed must be an int in [0, 2**63), got -1"),
        (dict(eval__seed=-3), "eval.seed must be an int in [0, 2**63), got -3"),
        (dict(eval__seed=2**63), "eval.seed must be an int in [0, 2**63), got 9223372036854775808"),
        (
            dict(vq_train__beta=-float("inf")),
            "vq_train.beta must be a finite number >= 0, got -inf",
        ),
        (
            dict(vq_train__codebook_weight=-1.0),
            "vq_train.codebook_weight must be a finite number >= 0",
        ),
        (dict(vq_train__disc_weight=-0.8), "vq_train.disc_weight must be a finite number >= 0"),
        (dict(vq_train__perceptual_weight=-1.0), "vq_train.perceptual_weight must be a finite"),
        (dict(vq_train__dead_code_restart_every=-3), "vq_train.dead_code_restart_every must be a"),
        (dict(vq_train__disc_layers=0), "vq_train.disc_layers must be >= 1, got 0"),
        (dict(vq_train__disc_channels=0), "vq_train.disc_channels must be >= 1, got 0"),
        (dict(model__attention="flash"), "model.attention 'flash' is not one of"),
        (dict(train__grad_accum_steps=3), "train.grad_accum_steps must be >= 1 and divide"),
        (dict(model__remat="blocks"), "'model.remat' must be a bool"),
        (dict(train__eval_every=100), "train.eval_every > 0 needs a split to validate on"),
        (
            dict(train__preview_every=100, data__test_dir=""),
            "preview_every > 0 needs frames to show",
        ),
        (
            dict(train__preview_every=100, data__test_dir="T", data__latent_val_dir="LV"),
            "needs frames to show: set data.val_dir (the frames of data.latent_val_dir)",
        ),
        (dict(train__preview_clips=0), "train.preview_clips >= 1"),
        (dict(train__profile_steps=0), "train.profile_steps >= 1"),
        (dict(train__keep_best=3), "train.keep_best > 0 ranks models by val/loss_ema"),
        (dict(train__save_every=0), "train.save_every must be >= 1, got 0"),
        (dict(train__log_every=0), "train.log_every must be >= 1, got 0"),
        (dict(train__num_steps=0), "train.num_steps must be >= 1, got 0"),
        (dict(train__max_to_keep=0), "train.max_to_keep must be >= 1, got 0"),
        (dict(vq_train__save_every=0), "vq_train.save_every must be >= 1, got 0"),
        (dict(vq_train__eval_clips=0), "vq_train.eval_clips must be >= 1, got 0"),
        (dict(vq_train__eval_frames=0), "vq_train.eval_frames must be >= 1, got 0"),
        (dict(train__ema_rate=float("nan")), "train.ema_rate must be in [0, 1), got nan"),
        (dict(train__ema_rate=1.0), "train.ema_rate must be in [0, 1), got 1.0"),
        (dict(scale_factor=0.0), "scale_factor must be a finite number > 0, got 0.0"),
        (dict(scale_factor=float("nan")), "scale_factor must be a finite number > 0, got nan"),
        (dict(optimizer__base_learning_rate=float("nan")), "base_learning_rate must be a finite"),
        (dict(optimizer__base_learning_rate=-1e-4), "base_learning_rate must be a finite"),
        (dict(vq_train__learning_rate=float("inf")), "vq_train.learning_rate must be a finite"),
        (dict(optimizer__grad_clip=-1.0), "optimizer.grad_clip must be a finite number >= 0"),
        (dict(data__preload_max_gb=float("nan")), "data.preload_max_gb must be >= 0"),
        (dict(mesh__data=0), "mesh.data and mesh.fsdp must be >= 1, or -1"),
        (dict(mesh__fsdp=-2), "got data=-1, fsdp=-2"),
        (dict(mesh__data=-1, mesh__fsdp=-1), "got data=-1, fsdp=-1"),
        (dict(mesh__slices=0), "mesh.slices must be >= 1, got 0"),
        (dict(mesh__min_shard_size=-1), "mesh.min_shard_size must be >= 0, got -1"),
        (dict(optimizer__learning_rte=1e-3), "unknown config field 'optimizer.learning_rte'"),
        (dict(sampling__skip_type="uniform"), "sampling.skip_type 'uniform' is not one of"),
        (dict(sampling__clip_x0=-1.0), "sampling.clip_x0 must be >= 0"),
        (dict(sampling__dynamic_threshold=1.0), "sampling.dynamic_threshold must be 0 (off) or"),
        (dict(sampling__dynamic_threshold=-0.5), "sampling.dynamic_threshold must be 0 (off) or"),
        (dict(diffusion__beta_schedule="sigmoid"), "diffusion.beta_schedule 'sigmoid' is not one"),
        (dict(diffusion__loss_reduction="max"), "diffusion.loss_reduction 'max' is not one of"),
        (dict(eval__fvd_resize="area"), "eval.fvd_resize 'area' is not one of"),
        (
            dict(data__latent_train_dir="latents/train", data__horizontal_flip=True),
            "data.horizontal_flip cannot apply to cached latents",
        ),
    ],
)
def test_validation_names_the_field(changes, message):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.validate(_bad(**changes))


def test_saved_config_from_before_a_field_existed_loads_with_its_default():
    raw = load("kth64").to_dict()
    del raw["diffusion"]["parameterization"], raw["data"]["preload_max_gb"]
    restored = config_lib.config_from_dict(raw)
    assert restored.diffusion.parameterization == "eps"
    assert restored.data.preload_max_gb == 2.0
    assert restored.unet.channel_mult == (1, 2, 3, 4)
    raw["diffusion"]["parametrisation"] = "v"
    with pytest.raises(config_lib.ConfigError, match="diffusion.parametrisation"):
        config_lib.config_from_dict(raw)


def test_overrides_apply_even_when_they_equal_the_schema_default():
    """A bundle sampling with DDIM-20 can be scored with PredVDM's DDIM-100, the default."""
    saved = config_lib.default_config()
    saved.sampling.steps, saved.sampling.sampler, saved.model.dtype = (
        20,
        "dpm_solver_pp",
        "bfloat16",
    )
    saved = config_lib.finalize(saved)
    overrides = {"sampling.steps": 100, "sampling.sampler": "ddim", "model.dtype": "float32"}
    config = config_lib.with_overrides(saved, overrides)
    assert (config.sampling.steps, config.sampling.sampler, config.model.dtype) == (
        100,
        "ddim",
        "float32",
    )
    assert saved.sampling.steps == 20  # the saved config is untouched
    with pytest.raises(config_lib.ConfigError, match="sampling.steps must be in"):
        config_lib.with_overrides(saved, {"sampling.steps": 0})


@pytest.mark.parametrize(
    "field, values",
    [
        ("model.mode", predictor.MODES),
        ("sampling.sampler", samplers.SAMPLERS),
        ("sampling.skip_type", samplers.SKIP_TYPES),
        ("diffusion.beta_schedule", schedule.BETA_SCHEDULES),
        ("diffusion.loss_reduction", loss.REDUCTIONS),
        ("diffusion.parameterization", parameterization.PARAMETERIZATIONS),
        ("vq_train.disc_loss", vq_losses.DISC_LOSSES),
        ("eval.fvd_resize", fvd.RESIZE_METHODS),
    ],
)
def test_the_config_accepts_every_value_the_implementation_has(field, values):
    for value in values:
        config_lib.validate(_bad(**{field.replace(".", "__"): value}))


def test_sampling_fields_reach_the_sampler():
    config = config_lib.default_config()
    config.sampling.update(
        dict(
            sampler="dpm_solver_pp",
            steps=7,
            order=3,
            skip_type="time_quadratic",
            lower_order_final=False,
            clip_x0=2.0,
            dynamic_threshold=0.995,
        )
    )
    settings = latent_diffusion.sampler_settings(config_lib.finalize(config).sampling)
    assert settings == samplers.SamplerSettings(
        "dpm_solver_pp",
        steps=7,
        eta=1.0,
        order=3,
        skip_type="time_quadratic",
        lower_order_final=False,
        clip_x0=2.0,
        dynamic_threshold=0.995,
    )
    off = latent_diffusion.sampler_settings(config_lib.default_config().sampling)
    assert (off.clip_x0, off.dynamic_threshold) == (None, None)  # 0 in the config: off


REPO = pathlib.Path(__file__).resolve().parent.parent
BAD_CONFIG_FILES = {
    "syntax": ("def get_config(:\n    pass\n", r"has a syntax error at line 1"),
    "import": (
        "import nonexistent_module_xyz\n\ndef get_config():\n    pass\n",
        r"failed to load at line 1: ModuleNotFoundError: No module named 'nonexistent_module_xyz'",
    ),
    "raise": (
        "def get_config():\n    raise RuntimeError('boom')\n",
        r"failed to load at line 2: RuntimeError: boom",
    ),
    "value_error": (
        "def get_config():\n    return int('x')\n",
        r"failed to load at line 2: ValueError: invalid literal",
    ),
    "returns_5": (
        "def get_config():\n    return 5\n",
        r"get_config\(\) returned int, not a ConfigDict",
    ),
    "no_get_config": ("x = 1\n", r"defines no get_config\(\)"),
}


def _convert_with_flags(*args):
    """scripts/convert_ldm_vq.py (its --config is optional): flag errors exit before main."""
    import os
    import subprocess
    import sys

    command = [sys.executable, str(REPO / "scripts" / "convert_ldm_vq.py"), *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("case", sorted(BAD_CONFIG_FILES))
def test_a_config_file_that_fails_to_load_is_one_error_line_naming_it(tmp_path, case):
    source, message = BAD_CONFIG_FILES[case]
    path = tmp_path / f"cfg_{case}.py"
    path.write_text(source)
    result = _convert_with_flags(f"--config={path}", "--ckpt=x.ckpt", f"--out={tmp_path}/o")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: config file "), result.stderr
    assert str(path) in lines[0] and re.search(message, lines[0]), lines[0]
    assert "fix the file" in lines[0] or "end it with" in lines[0], lines[0]
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config_file(path)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.vq.ch=abc", r"--config\.vq\.ch=abc: not a valid value .* type int"),
        ("--config.vq.chh=3", r"unknown config field 'vq\.chh'; did you mean --config\.vq\.ch\?"),
    ],
)
def test_a_mistyped_override_is_one_error_line(tmp_path, flag, message):
    config = tmp_path / "cfg.py"
    config.write_text(
        "from predvdm_jax import config as config_lib\n\n"
        "def get_config():\n    return config_lib.finalize(config_lib.default_config())\n"
    )
    result = _convert_with_flags(f"--config={config}", flag, "--ckpt=x.ckpt", "--out=o")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "FATAL" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]


def test_a_saved_config_that_is_not_an_object_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="JSON object"):
        config_lib.config_from_dict([1, 2])


def test_a_schedule_that_ends_at_f_min_or_stays_constant_is_valid():
    decays = dict(optimizer__f_min=0.0, optimizer__cycle_length=2000.0, train__num_steps=2000)
    config_lib.validate(_bad(**decays))
    constant = dict(optimizer__f_min=1.0, optimizer__cycle_length=10.0, train__num_steps=2000)
    config_lib.validate(_bad(**constant))  # f_min = f_max: the cycle changes nothing


def test_architectures_the_modules_build_are_valid():
    config_lib.validate(_bad(vq__out_ch=1))  # grayscale data scored as gray: a 1-channel decode
    config_lib.validate(_bad(vq__num_res_blocks=0, unet__num_res_blocks=0))
    config_lib.validate(_bad(unet__attention_resolutions=(8,)))  # the lowest level


def test_too_few_timesteps_is_not_reported_as_a_sampling_error():
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.validate(_bad(diffusion__timesteps=1))
    assert "sampling.steps" not in str(err.value)


@pytest.mark.parametrize("sampler", ["dpm_solver_pp", "ddpm"])
def test_step_counts_that_do_not_divide_the_timesteps_are_ddim_only(sampler):
    config_lib.validate(_bad(sampling__sampler=sampler, sampling__steps=300))


def test_ddim_runs_the_steps_the_config_allows():
    for steps in (1, 2, 10, 20, 50, 100, 250, 500, 1000):
        config_lib.validate(_bad(sampling__steps=steps))
        assert len(samplers.ddim_timesteps(steps, 1000)) == steps


def test_a_sweep_entry_is_validated_like_the_config():
    from predvdm_jax.evaluation import sweep

    config = config_lib.finalize(config_lib.default_config())
    with pytest.raises(config_lib.ConfigError, match=r"sweep entry 'steps=300': .*run 334 steps"):
        sweep.parse_sweep("steps=100;steps=300", config)


def test_with_absolute_paths_resolves_relative_paths_and_home_and_keeps_urls(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    config = config_lib.default_config()
    config.vq_params = "runs/vq/vq_params.safetensors"
    config.data.train_dir = "~/data/train"
    config.data.test_dir = "gs://bucket/data/test"
    config.eval.i3d_params = "/abs/i3d.pkl"
    resolved = config_lib.with_absolute_paths(config)
    assert resolved.vq_params == f"{tmp_path}/runs/vq/vq_params.safetensors"
    assert resolved.data.train_dir == "/home/someone/data/train"
    assert resolved.data.test_dir == "gs://bucket/data/test"
    assert resolved.eval.i3d_params == "/abs/i3d.pkl"
    assert resolved.data.latent_train_dir == "" and resolved.train.init_from == ""
    assert config.vq_params == "runs/vq/vq_params.safetensors"  # a copy
    # Every file or folder field is one of them (a new one must be added there).
    named_like_paths = {
        f"{section}.{name}" if section != "." else name
        for section, fields in [(".", config)] + list(config.items())
        if isinstance(fields, ml_collections.ConfigDict)
        for name, value in fields.items()
        if isinstance(value, str) and name.endswith(("_dir", "_params", "init_from"))
    }
    assert named_like_paths == set(config_lib.PATH_FIELDS)

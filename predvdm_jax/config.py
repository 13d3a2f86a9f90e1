"""The configuration schema and its validation.

Every experiment file in ``configs/`` starts from ``default_config()`` (the
schema: every field with its default and type), overrides fields and returns
``finalize(config)``. ``finalize`` locks the config, so a mistyped field in the
file or on the command line (``--config.unet.model_chanels=…``) is an error,
then checks types, ranges and combinations, naming the field at fault.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Mapping

import ml_collections

from predvdm_jax.diffusion.loss import REDUCTIONS
from predvdm_jax.diffusion.parameterization import PARAMETERIZATIONS
from predvdm_jax.diffusion.samplers import SAMPLERS, SKIP_TYPES, ddim_eta_error, ddim_timesteps
from predvdm_jax.diffusion.schedule import BETA_SCHEDULES, make_schedule
from predvdm_jax.training.sharding import DEFAULT_MIN_SIZE

ATTENTION_IMPLS = ("auto", "xla", "cudnn")
PROTOCOLS = ("predvdm", "mcvd", "extdm")


class ConfigError(ValueError):
    """A configuration field is missing, mistyped or inconsistent."""


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "unnamed"
    c.seed = 0

    c.data = dict(
        train_dir="",
        test_dir="",  # HDF5 split folders of frames
        latent_train_dir="",
        latent_test_dir="",  # optional latent caches (scripts/encode_dataset.py)
        val_dir="",  # a held-out split to validate on while training (empty: the test split)
        latent_val_dir="",  # its latent cache
        image_size=64,
        channels=1,  # channels of the frames on disk: 1 (gray) or 3
        cond_frames=10,
        pred_frames=5,  # PredVDM's `cond` and `k`
        frames_per_sample=15,  # training clip length (>= cond + k)
        batch_size=128,  # global batch
        horizontal_flip=False,
        num_threads=1,  # reading threads per process: h5py serialises its calls, more only contend
        prefetch=8,  # batches read ahead
        num_workers=0,  # reader processes (grain mp_prefetch) for splits read from disk
        preload_max_gb=2.0,  # training splits up to this size are read into memory once
    )

    c.vq = dict(
        ch=128,
        ch_mult=(1, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(),
        dropout=0.0,
        in_channels=3,
        out_ch=3,
        resolution=256,
        z_channels=3,
        embed_dim=3,
        n_embed=8192,
    )
    c.vq_params = ""  # converted / trained VQ params (see scripts/convert_ldm_vq.py, train_vq.py)
    c.scale_factor = 1.0
    c.vq_chunk = 256  # frames per VQ encode/decode chunk (PredVDM's VQ_batch_size)

    c.unet = dict(
        model_channels=224,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(1, 2, 4),
        num_head_channels=32,
        dropout=0.1,
        use_scale_shift_norm=False,
    )
    c.model = dict(
        mode="tc",
        attn_heads_tc=5,
        attn_heads_ct=3,
        attn_dim_head=32,
        dtype="float32",  # compute dtype of the denoiser and the VQ; params stay float32
        attention="auto",  # UNet self-attention: auto (cuDNN flash on GPU in bf16), xla, cudnn
        remat=False,  # recompute UNet block activations in the backward pass (less memory)
    )

    c.diffusion = dict(
        timesteps=1000,
        beta_schedule="linear",
        linear_start=0.0015,
        linear_end=0.0195,
        loss_reduction="sum",
        parameterization="eps",
        l_eps_weight=1.0,
        elbo_weight=0.0,
    )

    c.optimizer = dict(
        base_learning_rate=1.5625e-6,
        scale_lr=True,
        warmup_steps=10000,
        f_start=1e-6,
        f_max=1.0,
        f_min=1.0,
        cycle_length=1e13,  # steps from f_max to f_min after warm-up (LDM's cycle_lengths)
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        grad_clip=1.0,
    )

    c.train = dict(
        num_steps=400000,
        log_every=100,
        save_every=5000,
        max_to_keep=3,
        ema_rate=0.999,
        eval_every=0,  # steps between validation losses (0: none); needs a test split
        eval_clips=256,  # validation clips (the last batch of data.batch_size is padded)
        keep_best=0,  # bundles of the EMA weights at the k lowest val/loss_ema (0: none)
        grad_accum_steps=1,  # microbatches per optimizer step: same math, less activation memory
        preview_every=0,  # steps between rollout previews of test clips (0: none); needs test_dir
        preview_clips=4,  # clips per preview, predicted cond → eval.pred_frames with EMA weights
        profile_start=0,  # first step of a profiler trace in workdir/profile (0: none)
        profile_steps=5,  # steps the trace covers
        # an exported bundle (scripts/export.py, import_predvdm.py) whose EMA weights start a new
        # run's weights and EMA (fine-tuning; a fresh optimizer); a resumed run ignores it
        init_from="",
    )
    # slices: device groups joined by a slower network (TPU multislice; processes elsewhere):
    # data is split across them, each fsdp row stays inside one (predvdm_jax/mesh.py)
    c.mesh = dict(
        data=-1,
        fsdp=1,
        slices=1,
        min_shard_size=DEFAULT_MIN_SIZE,  # params of fewer elements are replicated, not fsdp-split
    )

    c.sampling = dict(
        sampler="ddim",
        steps=100,
        eta=1.0,
        order=2,
        skip_type="time_uniform",
        lower_order_final=True,
        clip_x0=0.0,  # > 0: clip x̂0 to ±clip_x0 (the bound c of dynamic thresholding)
        dynamic_threshold=0.0,  # > 0: a quantile p of |x̂0| (dynamic thresholding, docs/evaluation.md)
        reencode=False,
    )

    c.eval = dict(
        protocol="predvdm",
        num_clips=256,
        num_samples=1,
        pred_frames=30,
        batch_size=256,
        fvd=True,
        lpips_params="",
        i3d_params="",
        # I3D's resize to 224x224 for FVD: 'bilinear' (torch F.interpolate, MCVD / PredVDM) or
        # 'tf1_bilinear' (TF1 resize_bilinear, the original TF FVD code); evaluation/fvd.py
        fvd_resize="bilinear",
        seed=0,
        # grayscale data: score the VQ's RGB decode against the ground truth repeated to RGB,
        # as PredVDM does, instead of the decode averaged to gray (docs/evaluation.md)
        gray_as_rgb=False,
        # SSIM/PSNR/LPIPS definitions: "predvdm" (per frame, native size, spec F.1-F.3) or "mcvd"
        # (MCVD's video_gen: grey uint8 SSIM, video-level PSNR, LPIPS at 128x128; spec H.3);
        # "mcvd_mnist": mcvd, SSIM of frames rounded to 0/1 (MCVD on SMMNIST). --protocol=mcvd
        # implies eval.mcvd_style unless set
        metric_style="predvdm",
        # the style --protocol=mcvd implies on this data: "mcvd", or "mcvd_mnist" for
        # black-and-white digits (the SMMNIST configs), as MCVD's video_gen picks by dataset
        mcvd_style="mcvd",
    )

    c.vq_train = dict(
        batch_size=64,
        num_steps=100000,
        learning_rate=4.5e-6,
        scale_lr=True,
        warmup_steps=0,
        codebook_weight=1.0,
        beta=0.25,
        legacy_beta=True,
        perceptual_weight=0.0,  # LPIPS term: needs LPIPS weights (lpips_params); off by default
        # the LPIPS term's weights (scripts/convert_lpips.py; --vgg16 is taming's VQGAN loss);
        # empty: eval.lpips_params' (AlexNet)
        lpips_params="",
        disc_start=50001,
        disc_weight=0.8,
        disc_loss="hinge",  # discriminator loss, taming's disc_loss: "hinge" or "vanilla" (softplus)
        disc_factor=1.0,  # >= 0, taming's disc_factor: scales both adversarial terms from disc_start
        disc_layers=3,
        disc_channels=64,
        dead_code_restart_every=0,
        log_every=100,
        save_every=5000,
        max_to_keep=3,
        b1=0.5,
        b2=0.9,  # Adam betas of taming's VQGAN (both optimizers)
        lr_end_fraction=1.0,  # < 1: lr decays linearly to this fraction at num_steps
        # VQ params (scripts/convert_ldm_vq.py's, or a train_vq.py run's vq_params.safetensors)
        # that start a new run (fine-tuning LDM's vq-f4 on a dataset); a resumed run ignores it
        init_from="",
        eval_every=1000,
        eval_clips=64,
        eval_frames=4,
    )  # test-split reconstruction PSNR/SSIM
    return c


def _schema_errors(config, schema, prefix="") -> list[str]:
    errors = []
    for key in config.keys():
        name = prefix + key
        if key not in schema:
            errors.append(
                f"unknown config field '{name}' (check the spelling; known fields here: "
                f"{', '.join(sorted(schema.keys()))})"
            )
            continue
        value, default = config[key], schema[key]
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                errors.append(f"config field '{name}' must be a section, got {value!r}")
            else:
                errors.extend(_schema_errors(value, default, name + "."))
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                errors.append(f"config field '{name}' must be a bool, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.append(f"config field '{name}' must be a number, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"config field '{name}' must be an int, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                errors.append(f"config field '{name}' must be a string, got {value!r}")
        elif isinstance(default, tuple):
            if not isinstance(value, (tuple, list)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                errors.append(f"config field '{name}' must be a tuple of ints, got {value!r}")
    for key in schema.keys():
        if key not in config:
            errors.append(f"config field '{prefix + key}' is missing")
    return errors


def _range_errors(c) -> list[str]:
    """Numeric ranges, written ``not lo <= x < hi`` so that NaN fails them too."""
    errors = []
    t, v, o = c.train, c.vq_train, c.optimizer
    for name in ("num_steps", "log_every", "save_every", "max_to_keep"):
        for section, values in (("train", t), ("vq_train", v)):
            if not values[name] >= 1:
                errors.append(f"{section}.{name} must be >= 1, got {values[name]}")
    for name in ("eval_clips", "eval_frames", "disc_layers", "disc_channels"):
        if not v[name] >= 1:  # the final test reconstruction; the discriminator's shape
            errors.append(f"vq_train.{name} must be >= 1, got {v[name]}")
    if not 0 <= t.ema_rate < 1:
        errors.append(f"train.ema_rate must be in [0, 1), got {t.ema_rate}")
    if c.vq_chunk < 1:
        errors.append(f"vq_chunk must be >= 1 (frames per VQ encode/decode call), got {c.vq_chunk}")
    if not 0 < c.scale_factor < math.inf:
        errors.append(f"scale_factor must be a finite number > 0, got {c.scale_factor}")
    for name, value in (
        ("optimizer.base_learning_rate", o.base_learning_rate),
        ("vq_train.learning_rate", v.learning_rate),
        ("optimizer.grad_clip", o.grad_clip),
        ("optimizer.weight_decay", o.weight_decay),
        ("vq_train.disc_factor", v.disc_factor),
        # A negative loss weight would turn its term off (or train it backwards) unnoticed.
        ("vq_train.codebook_weight", v.codebook_weight),
        ("vq_train.beta", v.beta),
        ("vq_train.perceptual_weight", v.perceptual_weight),
        ("vq_train.disc_weight", v.disc_weight),
        ("vq_train.disc_start", v.disc_start),
        ("vq_train.dead_code_restart_every", v.dead_code_restart_every),
        ("sampling.eta", c.sampling.eta),
    ):
        if not 0 <= value < math.inf:
            errors.append(f"{name} must be a finite number >= 0, got {value}")
    for name, value in (
        ("unet.dropout", c.unet.dropout),
        ("vq.dropout", c.vq.dropout),
        ("optimizer.b1", o.b1),  # Adam's betas: 1 divides by 1 - β^t = 0 (NaN updates)
        ("optimizer.b2", o.b2),
        ("vq_train.b1", v.b1),
        ("vq_train.b2", v.b2),
    ):
        if not 0 <= value < 1:
            errors.append(f"{name} must be in [0, 1), got {value}")
    if not 0 < o.eps < math.inf:  # Adam's denominator √v̂ + eps: 0 divides by 0
        errors.append(f"optimizer.eps must be a finite number > 0, got {o.eps}")
    if not 0 < o.cycle_length < math.inf:  # the schedule divides by it
        errors.append(f"optimizer.cycle_length must be a finite number > 0, got {o.cycle_length}")
    errors.extend(_schedule_errors(c))
    errors.extend(_seed_errors(c))
    m = c.mesh
    if any(n < 1 and n != -1 for n in (m.data, m.fsdp)) or m.data == m.fsdp == -1:
        errors.append(
            f"mesh.data and mesh.fsdp must be >= 1, or -1 (all remaining devices) for one of "
            f"them; got data={m.data}, fsdp={m.fsdp}"
        )
    if m.slices < 1:
        errors.append(f"mesh.slices must be >= 1, got {m.slices}")
    if m.min_shard_size < 0:
        errors.append(f"mesh.min_shard_size must be >= 0, got {m.min_shard_size}")
    return errors


SEED_LIMIT = 2**63
"""Seeds lie in [0, SEED_LIMIT): numpy refuses negative ones, ``jax.random.key`` larger ones."""


def _seed_errors(config, prefix: str = "") -> list[str]:
    """Every ``seed`` / ``*_seed`` field, in any section (``seed``, ``eval.seed``)."""
    errors = []
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, ml_collections.ConfigDict):
            errors += _seed_errors(value, name + ".")
        elif (key == "seed" or key.endswith("_seed")) and not 0 <= value < SEED_LIMIT:
            errors.append(f"{name} must be an int in [0, 2**63), got {value}")
    return errors


def _schedule_errors(c) -> list[str]:
    """LDM's ``LambdaLinearScheduler`` (``training/optim.py``): a multiplier rising from
    ``f_start`` to ``f_max`` over ``warmup_steps``, then ``f_min + (f_max - f_min)(1 - n/L)``,
    which past step ``L = cycle_length`` keeps falling below ``f_min``, to negative rates."""
    errors = []
    o, v = c.optimizer, c.vq_train
    for section, values in (("optimizer", o), ("vq_train", v)):
        if values.warmup_steps < 0:
            errors.append(
                f"{section}.warmup_steps must be >= 0 (0: no warm-up), got {values.warmup_steps}"
            )
    if not 0 <= o.f_start < math.inf:
        errors.append(f"optimizer.f_start must be a finite number >= 0, got {o.f_start}")
    if not 0 <= o.f_min <= o.f_max < math.inf:
        errors.append(
            f"optimizer.f_min and optimizer.f_max must satisfy 0 <= f_min <= f_max (the lr "
            f"multiplier falls from f_max to f_min), got f_min={o.f_min}, f_max={o.f_max}"
        )
    elif o.f_min < o.f_max and o.cycle_length < c.train.num_steps:
        last = o.f_min + (o.f_max - o.f_min) * (1 - (c.train.num_steps - 1) / o.cycle_length)
        errors.append(
            f"optimizer.cycle_length {o.cycle_length:g} is shorter than train.num_steps "
            f"{c.train.num_steps}: the lr multiplier falls past optimizer.f_min={o.f_min} after "
            f"step {o.cycle_length:g}, to {last:.4g} at the last step; raise "
            f"optimizer.cycle_length to at least train.num_steps (or set f_min = f_max)"
        )
    if not 0 <= v.lr_end_fraction <= 1:
        errors.append(f"vq_train.lr_end_fraction must be in [0, 1], got {v.lr_end_fraction}")
    return errors


UNBOUNDED_FIELDS = ("data.preload_max_gb",)
"""Float fields where +inf means "no limit"; every other float field must be finite."""


def _non_finite_errors(config, prefix: str = "") -> list[str]:
    """Float fields holding NaN or ±inf: each field's own range check names it with its range
    where there is one; this catches the others (a NaN ``sampling.eta`` decoded black frames)."""
    errors = []
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, ml_collections.ConfigDict):
            errors += _non_finite_errors(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            if not (value == math.inf and name in UNBOUNDED_FIELDS):
                errors.append(f"{name} must be a finite number, got {value!r}")
    return errors


def _architecture_errors(c) -> list[str]:
    """The VQ's and the UNet's sizes: values their modules cannot build, or build wrongly
    without an error (an attention level no block reaches, too few output blocks)."""
    from predvdm_jax.models import autoencoder, unet

    errors = []
    q, u, d = c.vq, c.unet, c.data
    for name, value, least in (
        ("vq.ch", q.ch, 1),
        ("vq.z_channels", q.z_channels, 1),
        ("vq.embed_dim", q.embed_dim, 1),
        ("vq.n_embed", q.n_embed, 1),
        ("vq.num_res_blocks", q.num_res_blocks, 0),
        ("unet.model_channels", u.model_channels, 1),
        ("unet.num_res_blocks", u.num_res_blocks, 0),
    ):
        if value < least:
            errors.append(f"{name} must be >= {least}, got {value}")
    mults_ok = True
    for name, mults in (("vq.ch_mult", q.ch_mult), ("unet.channel_mult", u.channel_mult)):
        if not mults or any(m < 1 for m in mults):
            errors.append(f"{name} must be one or more multipliers >= 1, got {tuple(mults)}")
            mults_ok = False
    if q.in_channels != 3:
        errors.append(
            f"vq.in_channels must be 3, got {q.in_channels}: the VQ encodes RGB frames "
            f"(grayscale data is repeated to RGB before the encoder)"
        )
    if q.out_ch not in (1, 3) or (q.out_ch == 1 and (d.channels == 3 or c.eval.gray_as_rgb)):
        errors.append(
            f"vq.out_ch must be 3 (an RGB decode, averaged to gray for grayscale data), or 1 "
            f"only for grayscale data (data.channels=1) scored as gray (eval.gray_as_rgb=False); "
            f"got vq.out_ch={q.out_ch}, data.channels={d.channels}, "
            f"eval.gray_as_rgb={c.eval.gray_as_rgb}"
        )
    if u.num_head_channels < 1:
        errors.append(
            f"unet.num_head_channels must be >= 1 (channels per attention head), got "
            f"{u.num_head_channels}"
        )
    if not mults_ok:
        return errors
    for section, field, groups in (
        ("vq", "ch", autoencoder.GROUPNORM_GROUPS),
        ("unet", "model_channels", unet.GROUPNORM_GROUPS),
    ):
        width = c[section][field]
        mults = q.ch_mult if section == "vq" else u.channel_mult
        if width >= 1 and any((width * m) % groups for m in (1, *mults)):  # 1: the input conv
            errors.append(
                f"{section}.{field} and {section}.{field} × every multiplier must be divisible "
                f"by {groups} (GroupNorm with {groups} groups); got {width} × {tuple(mults)}"
            )
    widths = [u.model_channels * m for m in u.channel_mult]
    if u.model_channels >= 1 and u.num_head_channels >= 1:
        if any(width % u.num_head_channels for width in widths):
            errors.append(
                f"unet.num_head_channels {u.num_head_channels} must divide every level width "
                f"unet.model_channels × unet.channel_mult = {tuple(widths)}"
            )
    factors = tuple(2**level for level in range(len(u.channel_mult)))
    unreached = [r for r in u.attention_resolutions if r not in factors]
    if unreached:
        errors.append(
            f"unet.attention_resolutions {tuple(u.attention_resolutions)}: no level reaches "
            f"{tuple(unreached)}; they are downsampling factors, one of {factors} for "
            f"unet.channel_mult with {len(u.channel_mult)} levels"
        )
    vq_factor, unet_factor = 2 ** (len(q.ch_mult) - 1), factors[-1]
    multiple = vq_factor * unet_factor
    if d.image_size < 1 or d.image_size % multiple:
        below = d.image_size // multiple * multiple
        nearest = [n for n in (below, below + multiple) if n >= multiple] or [multiple]
        errors.append(
            f"data.image_size {d.image_size} is not a positive multiple of {multiple}: the VQ "
            f"downsamples by {vq_factor} (vq.ch_mult has {len(q.ch_mult)} levels), the UNet its "
            f"latents by {unet_factor} (unet.channel_mult has {len(u.channel_mult)} levels); "
            f"nearest valid: {' or '.join(map(str, nearest))}"
        )
    return errors


def _ddim_steps_error(steps: int, timesteps: int) -> str:
    """PredVDM's DDIM grid ``arange(0, T, T//S) + 1`` has ``S`` entries only when ``S``
    divides ``T``; otherwise more steps run than the report's "ddim, S steps" says."""
    ran = len(ddim_timesteps(steps, timesteps))
    below = max(n for n in range(1, steps) if timesteps % n == 0)
    above = min(n for n in range(steps + 1, timesteps + 1) if timesteps % n == 0)
    return (
        f"sampling.steps {steps} does not divide diffusion.timesteps {timesteps}: the DDIM grid "
        f"arange(0, T, T // steps) + 1 would run {ran} steps, not {steps}; use a divisor of "
        f"{timesteps}, such as {below} or {above}"
    )


def _combination_errors(c) -> list[str]:
    # Not top-level imports: models/unet.py imports this module (ATTENTION_IMPLS), and
    # models/autoencoder.py (module_fields), which vq_losses imports; evaluation/fvd.py is
    # a layer above this module, as is evaluation/metrics.py.
    from predvdm_jax.evaluation.fvd import RESIZE_METHODS
    from predvdm_jax.evaluation.metrics import MCVD_STYLES, METRIC_STYLES
    from predvdm_jax.models.predictor import MODES
    from predvdm_jax.models.vq_losses import DISC_LOSSES

    errors = []
    d = c.data
    if d.channels not in (1, 3):
        errors.append(f"data.channels must be 1 (grayscale) or 3 (RGB), got {d.channels}")
    if d.cond_frames < 1 or d.pred_frames < 1:
        errors.append("data.cond_frames and data.pred_frames must be >= 1")
    if d.cond_frames + d.pred_frames > d.frames_per_sample:
        errors.append(
            f"data.cond_frames + data.pred_frames = {d.cond_frames + d.pred_frames} is "
            f"longer than the training clip data.frames_per_sample = {d.frames_per_sample}"
        )
    if d.batch_size < 1 or c.eval.batch_size < 1 or c.vq_train.batch_size < 1:
        errors.append("data.batch_size, eval.batch_size and vq_train.batch_size must be >= 1")
    if d.num_threads < 1 or d.num_workers < 0 or d.prefetch < 1:
        errors.append(
            f"data.num_threads and data.prefetch must be >= 1 and data.num_workers >= 0, got "
            f"{d.num_threads}, {d.prefetch} and {d.num_workers}"
        )
    if d.latent_train_dir and d.horizontal_flip:
        errors.append(
            "data.horizontal_flip cannot apply to cached latents (data.latent_train_dir): flip "
            "the frames before caching, or train from frames (data.latent_train_dir='')"
        )
    if not d.preload_max_gb >= 0:
        errors.append(
            f"data.preload_max_gb must be >= 0 (0: never preload), got {d.preload_max_gb}"
        )
    errors.extend(_architecture_errors(c))
    m = c.model
    if m.mode not in MODES:
        errors.append(f"model.mode {m.mode!r} is not one of {MODES}")
    if m.mode.endswith("_attn") and (
        m.attn_heads_tc < 1
        or m.attn_dim_head < 1
        or (m.mode == "tcct_para_attn" and m.attn_heads_ct < 1)
    ):
        errors.append(
            f"model.mode {m.mode!r} needs LinearAttention settings: model.attn_heads_tc, "
            f"model.attn_heads_ct (for tcct_para_attn) and model.attn_dim_head >= 1"
        )
    if m.dtype not in ("float32", "bfloat16"):
        errors.append(f"model.dtype must be 'float32' or 'bfloat16', got {m.dtype!r}")
    if m.attention not in ATTENTION_IMPLS:
        errors.append(f"model.attention {m.attention!r} is not one of {ATTENTION_IMPLS}")
    df = c.diffusion
    if df.beta_schedule not in BETA_SCHEDULES:
        errors.append(
            f"diffusion.beta_schedule {df.beta_schedule!r} is not one of {BETA_SCHEDULES}"
        )
    if df.parameterization not in PARAMETERIZATIONS:
        errors.append(
            f"diffusion.parameterization must be one of {PARAMETERIZATIONS}, "
            f"got {df.parameterization!r}"
        )
    if df.loss_reduction not in REDUCTIONS:
        errors.append(f"diffusion.loss_reduction {df.loss_reduction!r} is not one of {REDUCTIONS}")
    beta_schedule_valid = df.beta_schedule in BETA_SCHEDULES
    if not 0 < df.linear_start < df.linear_end < 1:
        errors.append("diffusion.linear_start < diffusion.linear_end must both lie in (0, 1)")
        beta_schedule_valid = False
    s = c.sampling
    if s.sampler not in SAMPLERS:
        errors.append(f"sampling.sampler {s.sampler!r} is not one of {SAMPLERS}")
    if df.timesteps < 2:  # the beta schedules need a first and a last step
        errors.append(f"diffusion.timesteps must be >= 2, got {df.timesteps}")
    elif not 1 <= s.steps <= df.timesteps:
        errors.append(f"sampling.steps must be in [1, {df.timesteps}], got {s.steps}")
    elif s.sampler == "ddim" and df.timesteps % s.steps:
        errors.append(_ddim_steps_error(s.steps, df.timesteps))
    elif s.sampler == "ddim" and s.eta > 1 and beta_schedule_valid:
        # η above 1 goes as far as the grid keeps σ_t² within 1 − ᾱ_prev
        schedule = make_schedule(df.timesteps, df.linear_start, df.linear_end, df.beta_schedule)
        too_large = ddim_eta_error(schedule, ddim_timesteps(s.steps, df.timesteps), s.eta)
        if too_large:
            errors.append(f"sampling.{too_large}")
    if not 1 <= s.order <= 3:
        errors.append(f"sampling.order must be 1, 2 or 3, got {s.order}")
    if s.skip_type not in SKIP_TYPES:
        errors.append(f"sampling.skip_type {s.skip_type!r} is not one of {SKIP_TYPES}")
    if not 0 <= s.clip_x0 < math.inf:
        errors.append(f"sampling.clip_x0 must be >= 0 (0: no clipping), got {s.clip_x0}")
    if not 0 <= s.dynamic_threshold < 1:
        errors.append(
            f"sampling.dynamic_threshold must be 0 (off) or a quantile in (0, 1), got "
            f"{s.dynamic_threshold}"
        )
    e = c.eval
    if e.protocol not in PROTOCOLS:
        errors.append(f"eval.protocol {e.protocol!r} is not one of {PROTOCOLS}")
    if e.metric_style not in METRIC_STYLES:
        errors.append(f"eval.metric_style {e.metric_style!r} is not one of {METRIC_STYLES}")
    if e.mcvd_style not in MCVD_STYLES:
        errors.append(f"eval.mcvd_style {e.mcvd_style!r} is not one of {MCVD_STYLES}")
    if e.fvd_resize not in RESIZE_METHODS:
        errors.append(f"eval.fvd_resize {e.fvd_resize!r} is not one of {RESIZE_METHODS}")
    if e.pred_frames < 1 or e.num_clips < 1 or e.num_samples < 1:
        errors.append("eval.pred_frames, eval.num_clips and eval.num_samples must be >= 1")
    for section in ("train", "vq_train"):
        if c[section].eval_every < 0:
            errors.append(
                f"{section}.eval_every must be >= 0 (0: no validation), got {c[section].eval_every}"
            )
    if c.train.eval_every > 0:
        if not validation_split(c)[1]:
            errors.append(
                "train.eval_every > 0 needs a split to validate on: set data.test_dir or "
                "data.val_dir (or their latent caches), or set train.eval_every=0"
            )
        if c.train.eval_clips < d.batch_size:
            errors.append(
                f"train.eval_clips {c.train.eval_clips} must be at least one batch "
                f"(data.batch_size {d.batch_size})"
            )
    if c.train.preview_every < 0 or c.train.preview_clips < 1:
        errors.append(
            f"train.preview_every must be >= 0 (0: no previews) and train.preview_clips >= 1, "
            f"got {c.train.preview_every} and {c.train.preview_clips}"
        )
    if c.train.profile_start < 0 or c.train.profile_steps < 1:
        errors.append(
            f"train.profile_start must be >= 0 (0: no trace) and train.profile_steps >= 1, got "
            f"{c.train.profile_start} and {c.train.profile_steps}"
        )
    if c.train.preview_every > 0 and not validation_split(c, frames_only=True)[1]:
        where = (
            "data.val_dir (the frames of data.latent_val_dir)"
            if d.latent_val_dir
            else "data.test_dir or data.val_dir"
        )
        errors.append(
            f"train.preview_every > 0 needs frames to show: set {where}, or set "
            f"train.preview_every=0"
        )
    if c.train.keep_best < 0:
        errors.append(f"train.keep_best must be >= 0 (0: keep none), got {c.train.keep_best}")
    if c.train.keep_best > 0 and c.train.eval_every <= 0:
        errors.append(
            "train.keep_best > 0 ranks models by val/loss_ema: set train.eval_every > 0, or "
            "set train.keep_best=0"
        )
    accum = c.train.grad_accum_steps
    if accum < 1 or d.batch_size % accum:
        errors.append(
            f"train.grad_accum_steps must be >= 1 and divide data.batch_size {d.batch_size}, "
            f"got {accum}"
        )
    errors.extend(_range_errors(c))
    if c.vq_train.disc_loss not in DISC_LOSSES:
        errors.append(f"vq_train.disc_loss {c.vq_train.disc_loss!r} is not one of {DISC_LOSSES}")
    if c.vq_train.perceptual_weight > 0 and not (c.vq_train.lpips_params or e.lpips_params):
        errors.append(
            "vq_train.perceptual_weight > 0 needs LPIPS weights: set vq_train.lpips_params or "
            "eval.lpips_params (scripts/convert_lpips.py) or set the weight to 0"
        )
    return errors


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ``ConfigError`` naming every bad field; returns the config unchanged."""
    errors = _schema_errors(config, default_config())
    if not errors:
        errors = _combination_errors(config)
        errors += [
            error
            for error in _non_finite_errors(config)
            if not any(error.split(" ")[0] in other for other in errors)  # named already
        ]
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    return config


def validation_split(
    config: ml_collections.ConfigDict, frames_only: bool = False
) -> tuple[str, str]:
    """``(field, path)`` of the split training validates on (``train.eval_every``, the best
    bundles, previews, the VQ trainer's evaluation): the held-out ``data.val_dir`` when it or its
    cache is set (PredVDM validated Cityscapes on ``val``), else the test split (as PredVDM did
    for KTH and SMMNIST), each from its latent cache first. ``frames_only``: frame splits only.
    ``("", "")`` when there is none."""
    d = config.data
    held_out = bool(d.val_dir or d.latent_val_dir)
    fields = ("latent_val_dir", "val_dir") if held_out else ("latent_test_dir", "test_dir")
    for field in fields[1:] if frames_only else fields:
        if d[field]:
            return field, d[field]
    return "", ""


PATH_FIELDS = (
    "vq_params",
    "data.train_dir",
    "data.test_dir",
    "data.latent_train_dir",
    "data.latent_test_dir",
    "data.val_dir",
    "data.latent_val_dir",
    "train.init_from",
    "vq_train.init_from",
    "vq_train.lpips_params",
    "eval.lpips_params",
    "eval.i3d_params",
)
"""The config's files and folders."""


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose ``PATH_FIELDS`` are absolute (``~`` expanded). A training run
    records its config in its checkpoints and bundles, which are read from other working
    directories (and machines sharing the filesystem); paths relative to where the run
    started would then name nothing. Empty fields and URLs (``gs://...``) stay as they are."""
    paths = {field: field_value(config, field) for field in PATH_FIELDS}
    absolute = {
        field: os.path.abspath(os.path.expanduser(path))
        for field, path in paths.items()
        if path and "://" not in path
    }
    return with_overrides(config, absolute, validated=False)


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validates and locks a config (the last line of every ``get_config``)."""
    validate(config)
    config.lock()
    return config


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """The ``get_config()`` of a config file such as ``configs/kth64.py`` (what ``--config=`` loads)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {str(path)!r} not found; pass a file from configs/.")
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(_no_get_config(os.fspath(path)))
        config = module.get_config()
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(config_file_error(os.fspath(path), err)) from err
    check_config_value(os.fspath(path), config)
    return config


def config_file_line(path: str, err: BaseException) -> int | None:
    """The line of the config file ``path`` where ``err`` was raised (the innermost frame)."""
    if isinstance(err, SyntaxError) and err.filename and _same_file(err.filename, path):
        return err.lineno
    line, tb = None, err.__traceback__
    while tb is not None:
        if _same_file(tb.tb_frame.f_code.co_filename, path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def raised_by_config_file(path: str, err: BaseException) -> bool:
    """Whether loading the config file ``path`` raised ``err``: one of its lines did (or it
    has a syntax error), or it has no ``get_config`` to call."""
    return config_file_line(path, err) is not None or _lacks_get_config(err)


def _lacks_get_config(err: BaseException) -> bool:
    return isinstance(err, AttributeError) and err.name == "get_config"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _no_get_config(path: str) -> str:
    return (
        f"config file {path!r} defines no get_config(); end it with "
        "`def get_config(): ... return config_lib.finalize(config)`"
    )


def config_file_error(path: str, err: BaseException) -> str:
    """One line naming the config file, where and how loading it failed, and the fix. A file
    without ``get_config`` (the ``AttributeError`` of looking it up) is named as such."""
    if _lacks_get_config(err) and config_file_line(path, err) is None:
        return _no_get_config(path)
    if isinstance(err, SyntaxError):
        where = f"line {err.lineno}" if err.lineno else "?"
        return (
            f"config file {path!r} has a syntax error at {where}: {err.msg}; "
            "fix the file (or pass another from configs/)"
        )
    line = config_file_line(path, err)
    where = f" at line {line}" if line else ""
    detail = " ".join(str(err).split()) or "(no message)"
    return (
        f"config file {path!r} failed to load{where}: {type(err).__name__}: {detail}; "
        "fix the file (or pass another from configs/)"
    )


def check_config_value(path: str, config: Any) -> None:
    """A ``ConfigError`` unless a config file's ``get_config()`` returned a ``ConfigDict``."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {path!r}: get_config() returned {type(config).__name__}, not a "
            "ConfigDict; end it with `return config_lib.finalize(config)` where config "
            "starts from config_lib.default_config()"
        )


def _restore_tuples(raw: dict, schema: ml_collections.ConfigDict) -> dict:
    """JSON lists back to tuples; fields the file predates take the schema's default."""
    out = {key: value for key, value in schema.items() if key not in raw}
    for key, value in raw.items():
        default = schema[key] if key in schema else None
        if isinstance(default, ml_collections.ConfigDict) and isinstance(value, dict):
            out[key] = _restore_tuples(value, default)
        elif isinstance(default, tuple) and isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    return out


def config_from_dict(raw: dict) -> ml_collections.ConfigDict:
    """A validated, locked config from its JSON form (as saved with checkpoints and bundles).

    Fields added to the schema after the file was written take their defaults
    (e.g. ``diffusion.parameterization='eps'``, the only behaviour before it existed).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"a saved config must be a JSON object of config sections; got a {type(raw).__name__}"
        )
    return finalize(ml_collections.ConfigDict(_restore_tuples(dict(raw), default_config())))


def module_fields(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config section (``ConfigDict`` or mapping) as a module's fields: lists (a JSON config,
    ``--config.x=[1,2]``) become tuples, so the module hashes (a static ``jax.jit`` argument)."""
    fields = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else section
    return {key: tuple(v) if isinstance(v, (list, tuple)) else v for key, v in fields.items()}


def field_value(config: Mapping[str, Any], dotted: str) -> Any:
    """The value of the field (or section) ``dotted`` (``"data.test_dir"``) of ``config``."""
    for name in dotted.split("."):
        config = config[name]
    return config


def with_overrides(
    config: ml_collections.ConfigDict, overrides: dict, *, validated: bool = True
) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with ``{"section.field": value}`` set: the ``--config.*``
    flags a user gave (``config_flags.get_override_values``), on top of a run's saved config,
    whether or not a value equals the schema default. ``validated=False`` skips ``validate``
    (for a check of its own that must come first)."""
    config = config_from_dict(config.to_dict())
    with config.unlocked():
        for dotted, value in overrides.items():
            node = config
            *parents, leaf = dotted.split(".")
            for name in parents:
                node = node[name]
            node[leaf] = value
    return validate(config) if validated else config

"""Bundles: OHWI conv kernels (a denoiser file of no or another layout refused), what a save
may replace, the permissions of what it writes, files that do not match their config
refused, and a missing bundle (or a run's best/ folder without it) named with what there is."""

import json
import os

import numpy as np
import pytest

from predvdm_jax import config as config_lib

from predvdm_jax.interop import bundle as bundle_lib
from predvdm_jax.interop.torch_checkpoint import save_params_safetensors


def _params():
    rng = np.random.default_rng(0)
    return {
        "diffusion_model": {
            "conv": {"kernel": rng.standard_normal((8, 3, 3, 5)), "bias": rng.standard_normal(8)},
            "dense": {"kernel": rng.standard_normal((5, 7))},
        },
        "tc_attn": {"to_out": {"kernel": rng.standard_normal((4, 1, 1, 6))}},
    }


def _assert_trees_equal(got, want):
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], dict):
            _assert_trees_equal(got[key], want[key])
        else:
            np.testing.assert_array_equal(got[key], want[key])


def test_bundles_keep_ohwi_kernels_and_a_file_of_another_layout_is_refused(tmp_path):
    params = _params()
    current = str(tmp_path / "current.safetensors")
    save_params_safetensors(current, params, metadata=bundle_lib.DENOISER_METADATA)
    _assert_trees_equal(bundle_lib.load_denoiser_params(current), params)

    # A denoiser file without the layout (HWIO kernels, from before the UNet stored OHWI),
    # or of another layout, is one error naming it and the fix: nothing is transposed.
    for metadata, found in (
        ({"format": "flax/predvdm_denoiser"}, "no conv_kernel_layout"),
        ({"conv_kernel_layout": "HWIO"}, "conv_kernel_layout 'HWIO'"),
        (None, "no conv_kernel_layout"),
    ):
        path = str(tmp_path / "other.safetensors")
        save_params_safetensors(path, params, metadata=metadata)
        with pytest.raises(ValueError) as err:
            bundle_lib.load_denoiser_params(path)
        assert str(err.value) == (
            f"{path} has {found} in its metadata, not 'OHWI' (the layout bundles are written "
            f"in); re-export the bundle with scripts/export.py (or re-import it with "
            f"scripts/import_predvdm.py)"
        )


def test_a_bundle_with_a_denoiser_file_without_the_ohwi_layout_is_refused(tmp_path):
    path = str(tmp_path / "b")
    bundle_lib.save_bundle(path, _bundle())
    assert bundle_lib.read_bundle_files(path).params.keys() == _params().keys()
    denoiser = os.path.join(path, bundle_lib.DENOISER_FILE)
    save_params_safetensors(denoiser, _params(), metadata={"format": "flax/predvdm_denoiser"})
    with pytest.raises(ValueError, match=r"re-import it with scripts/import_predvdm\.py\)$") as err:
        bundle_lib.read_bundle_files(path)
    assert str(err.value).startswith(f"{denoiser} has no conv_kernel_layout")
    assert "\n" not in str(err.value)

    vq_file = os.path.join(path, bundle_lib.VQ_FILE)  # the two files swapped
    os.replace(vq_file, denoiser + ".vq")
    save_params_safetensors(vq_file, _params(), metadata=bundle_lib.DENOISER_METADATA)
    os.replace(denoiser + ".vq", denoiser)
    with pytest.raises(ValueError) as err:
        bundle_lib.read_bundle_files(path)
    assert str(err.value) == (
        f"{denoiser} holds VQ params (its metadata says flax/vq), not the denoiser's: were the "
        f"bundle's denoiser.safetensors and vq.safetensors swapped? Re-export the bundle with "
        f"scripts/export.py"
    )


def _bundle():
    config = config_lib.finalize(config_lib.default_config())
    return bundle_lib.Bundle(config, _params(), {"encoder": {"w": np.ones(3, np.float32)}})


def test_a_save_replaces_a_bundle_but_never_a_training_workdir(tmp_path):
    bundle_lib.save_bundle(str(tmp_path / "b"), _bundle())
    with open(tmp_path / "b" / bundle_lib.METRIC_FILE, "w") as f:
        f.write("{}")  # a best bundle's metric file: still a bundle
    bundle_lib.save_bundle(str(tmp_path / "b"), _bundle())
    assert sorted(os.listdir(tmp_path / "b")) == [
        "config.json",
        "denoiser.safetensors",
        "vq.safetensors",
    ]

    # A folder holding only a workdir lock may be a run that is starting: never replaced.
    starting = tmp_path / "starting_run"
    starting.mkdir()
    (starting / ".lock").write_text("pid 1 on host\n")
    with pytest.raises(ValueError, match=r"is not a bundle \(it holds \.lock\)"):
        bundle_lib.save_bundle(str(starting), _bundle())

    linked = tmp_path / "linked"  # a link to a bundle is replaced by the bundle, not left
    os.symlink(tmp_path / "b", linked)
    bundle_lib.save_bundle(str(linked), _bundle())
    assert not os.path.islink(linked) and os.path.isdir(tmp_path / "b")
    assert [n for n in os.listdir(tmp_path) if n.startswith(".bundle-")] == []

    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "40").mkdir(parents=True)
    (workdir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(
        ValueError, match=r"is not a bundle \(it holds checkpoints, metrics.jsonl\)"
    ):
        bundle_lib.save_bundle(str(workdir), _bundle())
    assert sorted(os.listdir(workdir)) == ["checkpoints", "metrics.jsonl"]
    assert [n for n in os.listdir(tmp_path) if n.startswith(".bundle-")] == []
    with pytest.raises(
        FileNotFoundError, match=r"is a training workdir, not a bundle; pass --workdir="
    ):
        bundle_lib.load_bundle(str(workdir))
    config_file = tmp_path / "b" / "config.json"  # one of a bundle's files, not the bundle
    with pytest.raises(FileNotFoundError) as err:
        bundle_lib.load_bundle(str(config_file))
    assert str(err.value) == (
        f"{str(config_file)!r} is a file; a bundle is the folder holding denoiser.safetensors, "
        f"vq.safetensors and config.json: pass {str(tmp_path / 'b')!r} if it is one"
    )


_REPLACE_AND_DIE = """
import os, shutil, signal, sys
import numpy as np
from predvdm_jax import config as config_lib
from predvdm_jax.interop import bundle as bundle_lib

path = sys.argv[1]
config = config_lib.finalize(config_lib.default_config())


def save(value):
    vq_params = {"encoder": {"w": np.full(3, value, np.float32)}}
    bundle_lib.save_bundle(path, bundle_lib.Bundle(config, {"w": np.zeros(2)}, vq_params))


save(1.0)
kill = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
replace = os.replace
os.replace = lambda source, target: kill() if target == path else replace(source, target)
shutil.rmtree = kill
save(2.0)
"""


def test_a_kill_while_a_bundle_is_replaced_leaves_a_whole_bundle_in_its_place(tmp_path):
    import subprocess
    import sys

    from predvdm_jax import atomic_io

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not atomic_io.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("this filesystem cannot swap two folders in one step (renameat2)")
    path = str(tmp_path / "bundle")
    # The process is killed where the new bundle would be renamed onto `path`, or, once it
    # is there, where the old one would be deleted: `path` must hold one whole bundle.
    run = subprocess.run([sys.executable, "-c", _REPLACE_AND_DIE, path], capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    np.testing.assert_array_equal(
        bundle_lib.read_bundle_files(path).vq_params["encoder"]["w"], np.full(3, 2.0)
    )


def test_bundles_and_files_get_the_umask_permissions_not_owner_only(tmp_path):
    from predvdm_jax import atomic_io

    previous = os.umask(0o027)
    atomic_io._umask.cache_clear()
    try:
        bundle_lib.save_bundle(str(tmp_path / "b"), _bundle())
        atomic_io.write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(previous)
        atomic_io._umask.cache_clear()
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(tmp_path / "b") == 0o750
    for name in os.listdir(tmp_path / "b"):
        assert mode(tmp_path / "b" / name) == 0o640, name
    assert mode(tmp_path / "report.md") == 0o640


def test_a_bundle_whose_files_do_not_match_its_config_is_refused_on_loading(tmp_path):
    import jax

    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    config = tiny_config()
    model = LatentDiffusion.from_config(config)
    params = random_params_from_init(model.init_denoiser)
    vq_params = random_params_from_init(model.init_vq, 1)
    bundle_lib.save_bundle(str(tmp_path / "good"), bundle_lib.Bundle(config, params, vq_params))
    loaded = bundle_lib.load_bundle(str(tmp_path / "good"))
    jax.tree.map(np.testing.assert_array_equal, loaded.params, jax.device_get(params))

    wider = config.copy_and_resolve_references()
    wider.vq.n_embed = 32  # a codebook of another size
    other_vq = random_params_from_init(LatentDiffusion.from_config(wider).init_vq, 1)
    bundle_lib.save_bundle(str(tmp_path / "bad"), bundle_lib.Bundle(config, params, other_vq))
    with pytest.raises(
        ValueError,
        match=r"vq.safetensors does not match the model: wrong shape \(1\): "
        r"quantize/embedding: expected \(16, 3\), got \(32, 3\)\. "
        r"The files do not match its config.json: re-export",
    ):
        bundle_lib.load_bundle(str(tmp_path / "bad"))

    no_head = {k: v for k, v in params.items() if k != "diffusion_model"}
    bundle_lib.save_bundle(str(tmp_path / "bad"), bundle_lib.Bundle(config, no_head, vq_params))
    with pytest.raises(ValueError, match=r"denoiser.safetensors does not match the model: missing"):
        bundle_lib.load_bundle(str(tmp_path / "bad"))


def _tiny_bundle_parts():
    import jax

    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    config = tiny_config()
    model = LatentDiffusion.from_config(config)
    params = jax.device_get(random_params_from_init(model.init_denoiser))
    return config, params, jax.device_get(random_params_from_init(model.init_vq, 1))


def test_a_bundle_of_integer_weights_is_refused_on_loading(tmp_path):
    """Weights cast to int32 (~all 0) would predict garbage without a word."""
    import jax

    config, params, vq_params = _tiny_bundle_parts()
    as_int = jax.tree.map(lambda a: np.asarray(a).astype(np.int32), params)
    path = str(tmp_path / "cast")
    bundle_lib.save_bundle(path, bundle_lib.Bundle(config, as_int, vq_params))
    with pytest.raises(ValueError) as err:
        bundle_lib.load_bundle(path)
    message = str(err.value)
    assert message.startswith(
        f"bundle {path!r} denoiser.safetensors does not match the model: not floating point ("
    )
    assert ": int32, " in message and message.count("int32") == 3, message
    assert message.endswith("re-export the bundle with scripts/export.py.")


def test_a_bundle_of_nan_weights_is_refused_on_loading(tmp_path):
    """Weights holding NaN would predict black frames without a word."""
    import jax

    config, params, vq_params = _tiny_bundle_parts()
    nan_vq = jax.tree.map(np.array, vq_params)
    nan_vq["quantize"]["embedding"][0, 0] = np.nan
    path = str(tmp_path / "nan")
    bundle_lib.save_bundle(path, bundle_lib.Bundle(config, params, nan_vq))
    with pytest.raises(ValueError) as err:
        bundle_lib.load_bundle(path)
    assert str(err.value) == (
        f"bundle {path}: the VQ weights hold NaN or Inf: quantize/embedding (1 of 48 values); "
        "re-export the bundle from its run with good VQ params (export.py --vq_params)"
    )


def test_export_bundle_refuses_nan_weights_and_writes_nothing(tmp_path, monkeypatch):
    """A run whose EMA weights diverged (a stand-in for its restored state) exports nothing."""
    import types

    import jax

    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.training import checkpoint
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    config = tiny_config()
    model = LatentDiffusion.from_config(config)
    config.vq_params = str(tmp_path / "vq.safetensors")
    save_params_safetensors(config.vq_params, random_params_from_init(model.init_vq, 1))
    params = jax.tree.map(np.array, random_params_from_init(model.init_denoiser))
    params["diffusion_model"]["out_2"]["kernel"][:] = np.inf
    state = types.SimpleNamespace(ema_params=params, params=params, ema_updates=np.int32(5))
    monkeypatch.setattr(checkpoint, "load_train_state", lambda *args: (config, state, 5))
    out = tmp_path / "bundle"
    with pytest.raises(ValueError) as err:
        checkpoint.export_bundle(str(tmp_path / "run"), str(out))
    assert str(err.value).startswith(
        f"checkpoint {tmp_path / 'run'} step 5 (EMA weights): the denoiser weights hold NaN or "
        "Inf: diffusion_model/out_2/kernel ("
    )
    assert str(err.value).endswith("; load another step of the run (--step)")
    assert not out.exists()


def test_a_bundle_records_its_source_and_one_without_the_record_loads_with_it_unknown(
    tmp_path,
):
    """source.json: the run, step and EMA or raw weights (or the PredVDM checkpoint) that
    load_model reports (what sample.json and evaluate.py record); a bundle written before it
    loads with them unknown, a damaged one is an error naming the fix."""
    import dataclasses

    from predvdm_jax.diffusion.latent_diffusion import LatentDiffusion
    from predvdm_jax.training import checkpoint
    from random_params import random_params_from_init
    from tiny_config import tiny_config

    config = tiny_config()
    model = LatentDiffusion.from_config(config)
    source = bundle_lib.BundleSource("run", "/runs/kth64", "EMA", 60, 61)
    bundle = bundle_lib.Bundle(
        config,
        random_params_from_init(model.init_denoiser),
        random_params_from_init(model.init_vq, 1),
        source,
    )
    path = str(tmp_path / "b")
    bundle_lib.save_bundle(path, bundle)
    assert json.loads((tmp_path / "b" / bundle_lib.SOURCE_FILE).read_text()) == {
        "origin": "run",
        "path": "/runs/kth64",
        "weights": "EMA",
        "step": 60,
        "ema_updates": 61,
    }
    assert bundle_lib.read_bundle_files(path).source == source
    _, loaded = checkpoint.load_model(path)
    assert loaded == f"bundle {path} of run /runs/kth64 step 60 (EMA weights, 61 EMA updates)"
    assert (loaded.step, loaded.weights) == (60, "EMA")
    imported = bundle_lib.BundleSource("predvdm", "/logs/last.ckpt", "raw")
    bundle_lib.save_bundle(path, dataclasses.replace(bundle, source=imported))
    _, loaded = checkpoint.load_model(path)
    assert loaded == f"bundle {path} of PredVDM checkpoint /logs/last.ckpt (raw weights)"
    assert (loaded.step, loaded.weights) == (None, "raw")

    bundle_lib.save_bundle(path, dataclasses.replace(bundle, source=None))  # the old way
    assert bundle_lib.SOURCE_FILE not in os.listdir(path)
    assert bundle_lib.read_bundle_files(path).source is None
    _, loaded = checkpoint.load_model(path)
    assert (loaded, loaded.step, loaded.weights) == (f"bundle {path}", None, None)

    (tmp_path / "b" / bundle_lib.SOURCE_FILE).write_text('{"origin": "run", "step": 60}')
    with pytest.raises(ValueError) as err:
        bundle_lib.read_bundle_files(path)
    assert str(err.value) == (
        f"{os.path.join(path, bundle_lib.SOURCE_FILE)} is not a bundle source record (origin "
        "run/predvdm, path, weights EMA/raw, step, ema_updates); the bundle is damaged: "
        "re-export the bundle with scripts/export.py --workdir=<training dir> --out=<folder>"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("{bad json", r"config\.json is not valid JSON \(Expecting property name"),
        ("", r"config\.json is not valid JSON \(Expecting value"),
        ("[1, 2]", r"config\.json holds a JSON list, not a config object"),
        ('"text"', r"config\.json holds a JSON str, not a config object"),
    ],
)
def test_a_damaged_config_json_names_the_file_and_the_fix(tmp_path, content, message):
    path = str(tmp_path / "b")
    bundle_lib.save_bundle(path, _bundle())
    with open(os.path.join(path, bundle_lib.CONFIG_FILE), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=message) as err:
        bundle_lib.read_bundle_files(path)
    assert path in str(err.value) and "re-export" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "section, change, message",
    [
        ("data", lambda d: d.update(bogus=1), "unknown config field 'data.bogus'"),
        ("diffusion", lambda d: d.update(parameterization="score"), "diffusion.parameterization"),
    ],
)
def test_a_config_json_with_an_unknown_or_invalid_field_names_the_file_and_the_fix(
    tmp_path, section, change, message
):
    path = str(tmp_path / "b")
    bundle_lib.save_bundle(path, _bundle())
    config_path = os.path.join(path, bundle_lib.CONFIG_FILE)
    with open(config_path) as f:
        raw = json.load(f)
    change(raw[section])
    with open(config_path, "w") as f:
        json.dump(raw, f)
    with pytest.raises(config_lib.ConfigError) as err:
        bundle_lib.read_bundle_files(path)
    assert str(err.value).startswith(f"{config_path}: invalid config: ")
    assert message in str(err.value)
    assert str(err.value).endswith(
        "; re-export the bundle with scripts/export.py --workdir=<training dir> --out=<folder>"
    )


@pytest.mark.parametrize("content", ['{"value": 1.0,\n', "", '{"metric": "loss"}', "[3]"])
def test_a_damaged_metric_json_names_the_file_and_the_fix(tmp_path, content):
    best = tmp_path / "best"
    for step, value in (("step_1", 0.5), ("step_2", 0.4)):
        bundle_lib.save_bundle(str(best / step), _bundle())
        with open(best / step / bundle_lib.METRIC_FILE, "w") as f:
            json.dump({"metric": "loss", "value": value, "step": 1}, f)
    assert bundle_lib.best_bundle(str(best)) == str(best / "step_2")
    (best / "step_1" / bundle_lib.METRIC_FILE).write_text(content)
    with pytest.raises(ValueError, match=r"step_1/metric\.json") as err:
        bundle_lib.best_bundle(str(best))
    assert "re-export" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_bundle_or_best_folder_says_it_does_not_exist_and_what_there_is(tmp_path):
    def error(path):
        with pytest.raises(FileNotFoundError) as err:
            bundle_lib.load_bundle(str(path))
        assert "\n" not in str(err.value) and "complete bundle" not in str(err.value)
        return str(err.value)

    assert error(tmp_path / "nope") == (
        f"'{tmp_path / 'nope'}' does not exist; pass a bundle folder (make one with "
        f"scripts/export.py --workdir=<training dir> --out=<new folder>)"
    )
    # A run that kept no best bundles: best/ is missing (or empty).
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    (run / "metrics.jsonl").write_text("")
    kept_none = (
        f": the run {run} kept no best bundles (train.keep_best=0, or no validation has run "
        f"yet); pass --workdir={run} to load its last checkpoint"
    )
    assert error(run / "best") == f"'{run / 'best'}' does not exist{kept_none}"
    assert error(run / "best" / "step_00004000") == (
        f"'{run / 'best' / 'step_00004000'}' does not exist{kept_none}"
    )
    os.makedirs(run / "best")
    assert error(run / "best") == f"'{run / 'best'}' is not a bundle{kept_none}"
    # A step the run did not keep names the ones it did.
    for step in ("step_00002000", "step_00003000"):
        bundle_lib.save_bundle(str(run / "best" / step), _bundle())
    assert error(run / "best" / "step_00004000") == (
        f"'{run / 'best' / 'step_00004000'}' does not exist; {run / 'best'} holds the bundles "
        f"step_00002000, step_00003000: pass one of them, or {run / 'best'} to load the one of "
        f"lowest validation loss"
    )

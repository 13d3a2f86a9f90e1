"""One run at a time per workdir: a second run fails before writing anything there; a killed
holder's lock goes with it, so the resume trains."""

import errno
import os
import re
import signal
import subprocess
import sys

import pytest

from predvdm_jax import config as config_lib
from predvdm_jax.training import diffusion_trainer, loop, vq_trainer, workdir_lock
from predvdm_jax.training.workdir_lock import LOCK_FILE, WorkdirBusyError

from .tiny_setup import REPO_ROOT, make_config, train_in_process

_HOLDER = (
    "import sys, time\n"
    "from predvdm_jax.training import workdir_lock\n"
    "with workdir_lock.hold(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(300)\n"
)


def _hold_elsewhere(workdir: str) -> subprocess.Popen:
    """A process holding ``workdir`` (as a running training would) until it is killed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, workdir], env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def _kill(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        os.kill(holder.pid, signal.SIGKILL)
    holder.wait()


def _files(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path: bytes), and its folders (path: None)."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def _busy(workdir, pid: int) -> str:
    return (
        rf"^--workdir {workdir} is in use: another run \(pid {pid} on [^)]+\) is training "
        r"there; wait for it to finish or stop it .*or pass another --workdir\.$"
    )


def test_a_second_run_fails_leaving_the_workdir_as_it_was_and_resumes_once_the_holder_dies(
    tmp_path,
):
    workdir = str(tmp_path / "run")
    train_in_process(make_config(num_steps=2, save_every=2), workdir)
    assert not os.path.exists(os.path.join(workdir, LOCK_FILE))  # a finished run lets go
    holder = _hold_elsewhere(workdir)
    try:
        before = _files(workdir)
        with pytest.raises(WorkdirBusyError, match=_busy(workdir, holder.pid)):
            train_in_process(make_config(num_steps=4, save_every=2), workdir)
        assert _files(workdir) == before  # no checkpoint, metrics.jsonl or event written
    finally:
        _kill(holder)
    # The killed holder left its file but not its lock: the run resumes and trains on.
    assert os.path.exists(os.path.join(workdir, LOCK_FILE))
    train_in_process(make_config(num_steps=4, save_every=2), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    assert not os.path.exists(os.path.join(workdir, LOCK_FILE))


def test_both_trainers_refuse_a_held_workdir_before_reading_their_config_or_data(tmp_path):
    """The trainers hold the workdir from the start (the VQ's through the params it writes
    after training): the refusal comes before their data, which is not there."""
    config = config_lib.default_config()
    config.data.train_dir = str(tmp_path / "no_data")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    holder = _hold_elsewhere(workdir)
    try:
        before = _files(workdir)
        with pytest.raises(WorkdirBusyError, match=_busy(workdir, holder.pid)):
            diffusion_trainer.train(config, workdir)
        with pytest.raises(WorkdirBusyError, match=_busy(workdir, holder.pid)):
            vq_trainer.train_vq(config, workdir)
        assert _files(workdir) == before
    finally:
        _kill(holder)


def test_train_py_on_a_held_workdir_is_one_error_line(tmp_path):
    workdir = str(tmp_path / "run")
    holder = _hold_elsewhere(workdir)
    try:
        script = os.path.join(REPO_ROOT, "scripts", "train.py")
        config = os.path.join(REPO_ROOT, "configs", "digits_demo.py")
        done = subprocess.run(
            [sys.executable, script, f"--config={config}", f"--workdir={workdir}"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
    finally:
        _kill(holder)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert re.match(_busy(workdir, holder.pid).replace("^", "^error: ", 1), line), line


def test_a_process_nests_its_holds_and_removes_the_folders_it_made_empty(tmp_path):
    workdir = str(tmp_path / "new" / "run")
    with workdir_lock.hold(workdir):
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            assert f.read() == f"pid {os.getpid()} on {os.uname().nodename}\n"
        with workdir_lock.hold(workdir + "/"):  # as a trainer's train_loop does
            pass
        assert os.path.exists(os.path.join(workdir, LOCK_FILE))
    assert not os.path.exists(tmp_path / "new")
    with workdir_lock.hold(workdir):
        with open(os.path.join(workdir, "kept.txt"), "w") as f:
            f.write("a run's file")
    assert os.listdir(workdir) == ["kept.txt"]


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_flock_trains_unlocked_with_a_warning(
    tmp_path, monkeypatch, caplog, code
):
    def no_flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
    workdir = str(tmp_path / "run")
    train_in_process(make_config(num_steps=2, save_every=2), workdir)
    assert f"cannot lock {workdir}/{LOCK_FILE}" in caplog.text
    assert "training unlocked" in caplog.text
    assert LOCK_FILE not in os.listdir(workdir)
    assert loop.latest_step(workdir) == 2

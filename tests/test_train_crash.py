"""Nothing lost on a kill (issue #14, items 1-3): a process killed at any write of an epoch's save, then resumed,
ends with the uninterrupted run's log.csv and best.pt; a second writer into a run folder is refused with a line
naming the first; ``--force`` leaves none of the previous run's results behind."""

import json
import multiprocessing as mp

import pytest
from test_train import _cfg, _power, _same_state

from lightdvae.errors import ConfigError, FolderError
from lightdvae.resultdir import folder_lock, lock_holder
from lightdvae.runs import checkpoint_path, load_checkpoint, read_status
from lightdvae.train import outputs as outputs_mod
from lightdvae.train import resume_config, train

# The writes of one epoch's save, in the order they happen.
WRITES = ("last", "best", "log", "status")


class Killed(BaseException):
    """What SIGKILL does to the process: nothing after it runs (no except/finally of the library catches it)."""


@pytest.fixture(scope="module")
def data():
    return _power(40, seed=1), _power(12, seed=2)


def _log_rows(run):
    lines = (run / "log.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, c in enumerate(header) if c != "seconds"]
    return [[row.split(",")[i] for i in keep] for row in lines]


def _kill_at(monkeypatch, which: str, epoch: int):
    """Raise Killed when epoch ``epoch``'s save reaches its ``which`` write (before it happens)."""
    state = {"epoch": 0}
    real_ckpt, real_log, real_status = outputs_mod.save_checkpoint, outputs_mod.write_log, outputs_mod.write_status

    def ckpt(path, payload):
        name = path.stem
        if name == "last":
            state["epoch"] = payload["epoch"]
        if name == which and state["epoch"] == epoch:
            raise Killed
        return real_ckpt(path, payload)

    def log(run, history, columns):
        if which == "log" and state["epoch"] == epoch:
            raise Killed
        return real_log(run, history, columns)

    def status(run, st, **extra):
        if which == "status" and extra.get("epoch") == epoch and "best_epoch" in extra:  # the epoch's status
            raise Killed
        return real_status(run, st, **extra)

    monkeypatch.setattr(outputs_mod, "save_checkpoint", ckpt)
    monkeypatch.setattr(outputs_mod, "write_log", log)
    monkeypatch.setattr(outputs_mod, "write_status", status)


@pytest.mark.parametrize("which", WRITES)
@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_a_kill_at_any_write_resumes_to_the_same_files(tmp_path, data, monkeypatch, which, epoch):
    kw = dict(epochs=3, kl_warmup_epochs=1)
    train(_cfg(tmp_path, "vae", "full", **kw), train_dataset=data[0], val_dataset=data[1])
    full = tmp_path / "full"
    best_epochs = [int(r[0]) for r in _log_rows(full)[1:] if r[-1] == "1"]
    if which == "best" and epoch not in best_epochs:
        pytest.skip(f"epoch {epoch} is not a best epoch here: best.pt is not written then")
    with monkeypatch.context() as m:
        _kill_at(m, which, epoch)
        with pytest.raises(Killed):
            train(_cfg(tmp_path, "vae", "killed", **kw), train_dataset=data[0], val_dataset=data[1])
    killed = tmp_path / "killed"
    if not checkpoint_path(killed, "last").is_file():  # killed before the first commit: start again
        with pytest.raises(ConfigError, match="--force"):
            resume_config(killed)
        train(_cfg(tmp_path, "vae", "killed", force=True, **kw), train_dataset=data[0], val_dataset=data[1])
    else:
        train(resume_config(killed), train_dataset=data[0], val_dataset=data[1])
    assert _log_rows(killed) == _log_rows(full)
    a, b = load_checkpoint(checkpoint_path(full, "best")), load_checkpoint(checkpoint_path(killed, "best"))
    assert a["epoch"] == b["epoch"] and _same_state(a["model"], b["model"])
    assert (read_status(killed) or {})["state"] == (read_status(full) or {})["state"] == "finished"
    assert not list(killed.rglob("*.tmp"))


def test_best_pt_always_holds_the_recorded_best_epoch(tmp_path, data, monkeypatch):
    """Killed right after last.pt of a best epoch: best.pt is stale, but a reader (eval) is told the truth after
    resume, and the best weights are not lost in between (last.pt carries them)."""
    with monkeypatch.context() as m:
        _kill_at(m, "best", 2)
        with pytest.raises(Killed):
            train(_cfg(tmp_path, "vae", "r", epochs=3, kl_warmup_epochs=1), train_dataset=data[0], val_dataset=data[1])
    last = load_checkpoint(checkpoint_path(tmp_path / "r", "last"))
    assert last["best_epoch"] == 2 and "best_model" in last
    result = train(resume_config(tmp_path / "r"), train_dataset=data[0], val_dataset=data[1])
    best = load_checkpoint(checkpoint_path(tmp_path / "r", "best"))
    assert best["epoch"] == result.best_epoch


def _hold_lock(path, ready, release):
    with folder_lock(path, command="lightdvae train --model vae"):
        ready.set()
        release.wait(30)


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, data):
    run = tmp_path / "run"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(run, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        assert lock_holder(run)["command"] == "lightdvae train --model vae"
        with pytest.raises(FolderError, match=r"being written by `lightdvae train --model vae` \(pid \d+"):
            train(_cfg(tmp_path, "vae", "run"), train_dataset=data[0], val_dataset=data[1])
    finally:
        holder.kill()  # a kill -9: the lock dies with the process
        holder.join(30)
    assert lock_holder(run) is None
    train(_cfg(tmp_path, "vae", "run", force=True), train_dataset=data[0], val_dataset=data[1])


def test_status_of_a_killed_run_is_not_running(tmp_path, data, monkeypatch):
    with monkeypatch.context() as m:
        _kill_at(m, "log", 2)
        with pytest.raises(Killed):
            train(_cfg(tmp_path, "vae", "r", epochs=3), train_dataset=data[0], val_dataset=data[1])
    status = read_status(tmp_path / "r")
    assert status["state"] == "interrupted" and "--resume" in status["message"]


def test_force_removes_the_previous_runs_results(tmp_path, data):
    run = tmp_path / "run"
    train(_cfg(tmp_path, "vae", "run", epochs=1), train_dataset=data[0], val_dataset=data[1])
    for sub in ("eval/test-gen", "generate/best-n4-f10-t1-s0"):
        (run / sub).mkdir(parents=True)
        (run / sub / "summary.json").write_text(json.dumps({"kind": "lightdvae-eval"}))
    train(_cfg(tmp_path, "vae", "run", epochs=1, force=True), train_dataset=data[0], val_dataset=data[1])
    assert not (run / "eval").exists() and not (run / "generate").exists()

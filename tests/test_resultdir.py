"""The resumable-folder helpers of lightdvae.resultdir that the per-file loops share (eval, the enhancement of a
set): the session kept across runs, the refusal of another result naming what differs, and what an interrupted or
broken loop says."""

from __future__ import annotations

import json
import logging
from concurrent.futures.process import BrokenProcessPool

import pytest

from lightdvae import resultdir
from lightdvae.errors import EnhanceError, FolderError


def test_a_session_counts_its_time_and_returns_the_summary_seconds(tmp_path):
    fingerprint = {"iterations": 3, "seed": 0}
    state = resultdir.open_session(tmp_path, fingerprint, state_file="state.json", files=("per_file.csv",))
    assert state["sessions"] == 0 and state["wall_s"] == 0.0
    log = logging.getLogger("test")
    assert resultdir.close_session(tmp_path, "state.json", state, 2.5, False, log) == {
        "wall": 2.5,
        "wall_last_session": 2.5,
        "sessions": 1,
    }
    again = resultdir.open_session(tmp_path, fingerprint, state_file="state.json", files=("per_file.csv",))
    seconds = resultdir.close_session(tmp_path, "state.json", again, 1.0, True, log)
    assert seconds == {"wall": 3.5, "wall_last_session": 1.0, "sessions": 2}
    assert json.loads((tmp_path / "state.json").read_text())["finished"] is True


def test_another_result_is_refused_naming_what_differs_and_both_values(tmp_path):
    old = {"checkpoint_sha256": "a" * 64, "iterations": 100, "beta": 1.0, "set": "/data/noisy"}
    resultdir.open_session(tmp_path, old, state_file="state.json")
    new = {**old, "checkpoint_sha256": "b" * 64, "iterations": 300, "beta": 0.01}
    with pytest.raises(EnhanceError) as caught:
        resultdir.claim(tmp_path, new, state_file="state.json", what="another enhancement", error=EnhanceError)
    message = str(caught.value)
    assert "(differs in: beta: 1.0 there, 0.01 asked; checkpoint weights; iterations: 100 there, 300 asked)" in message
    assert "--overwrite" in message and "\n" not in message


def test_files_without_a_state_are_refused_as_foreign(tmp_path):
    (tmp_path / "per_file.csv").write_text("index\n")
    with pytest.raises(FolderError, match=r"\(no state.json says what they are\); pass --overwrite"):
        resultdir.claim(tmp_path, {"n": 1}, state_file="state.json", files=("per_file.csv",))
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(FolderError, match=r"\(state.json is unreadable\)"):
        resultdir.claim(tmp_path, {"n": 1}, state_file="state.json", files=("per_file.csv",))


def test_an_interrupted_loop_salvages_then_says_what_is_saved(tmp_path, capsys):
    done = {0: "row", 1: "row"}
    order = []

    def salvage():  # the workers' finished results are journaled before the count is said
        order.append("salvage")
        done[2] = "row"

    journal = tmp_path / "per_file.csv"
    with pytest.raises(KeyboardInterrupt):
        with resultdir.resumable_loop(journal, done, 10, verb="evaluate", salvage=salvage):
            order.append("loop")
            raise KeyboardInterrupt
    assert order == ["loop", "salvage"]
    said = capsys.readouterr().err.strip().splitlines()
    assert said == [
        f"interrupted: 3 of 10 files are saved in {journal}; run the same command again to evaluate the rest"
    ]


def test_a_broken_worker_pool_is_one_line_and_other_errors_pass(tmp_path, capsys):
    journal = tmp_path / "per_file.csv"
    with pytest.raises(EnhanceError) as caught:
        with resultdir.resumable_loop(journal, {0: "row"}, 5, verb="enhance", error=EnhanceError):
            raise BrokenProcessPool("A child process terminated abruptly")
    message = str(caught.value)
    assert message.startswith("a metric worker process died; the 1 files done are saved in ") and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(ValueError, match="other"):
        with resultdir.resumable_loop(journal, {}, 5, verb="enhance"):
            raise ValueError("other")
    with resultdir.resumable_loop(journal, {}, 5, verb="enhance", salvage=lambda: pytest.fail("salvaged")):
        pass
    assert capsys.readouterr().err == ""

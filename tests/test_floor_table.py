"""The floor table of training steps (scripts/floor_table.py, issue #17 item 1) on tiny sizes: its accounting,
not its timings."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("floor_table", ROOT / "scripts" / "floor_table.py")
floor_table = importlib.util.module_from_spec(_spec)
sys.modules["floor_table"] = floor_table  # dataclasses look their module up there
_spec.loader.exec_module(floor_table)


def test_operators_fall_in_one_class_each():
    assert floor_table.classify("aten::addmm") == "gemm"
    assert floor_table.classify("aten::bmm") == "gemm"
    assert floor_table.classify("aten::mkldnn_rnn_layer_backward") == "rnn"
    assert floor_table.classify("aten::mul") == "elementwise"
    assert floor_table.classify("lightdvae::is_divergence") == "elementwise"
    assert floor_table.classify("aten::view") == "rest"  # metadata only
    assert floor_table.classify("autograd::engine::evaluate_function: MmBackward0") == "rest"


def test_replayed_products_take_the_recorded_shapes():
    calls = Counter(
        {
            ("aten::mm", json.dumps([[6, 4], [4, 3]])): 2,
            ("aten::addmm", json.dumps([[3], [6, 4], [4, 3], [], []])): 1,
            ("aten::bmm", json.dumps([[2, 5, 4], [2, 4, 3]])): 3,
        }
    )
    assert floor_table.replay_gemm(calls, repeats=2) > 0
    with pytest.raises(ValueError, match="cannot replay aten::mm"):
        floor_table.replay_gemm(Counter({("aten::mm", json.dumps([[6, 4]])): 1}), repeats=1)


@pytest.mark.parametrize("case", ["vae", "dkf", "srnn-ss"])
def test_a_row_accounts_for_the_whole_step(case):
    torch.set_num_threads(1)
    row = floor_table.measure(case, batch=2, frames=3, repeats=1)
    parts = [row.gemm_ms, row.rnn_ms, row.elementwise_ms, row.rest_ms]
    print(row)
    assert all(p >= 0 for p in parts)
    # the classes are shares of the profiled step applied to the unprofiled one: they add up to it
    assert sum(parts) == pytest.approx(row.step_ms, rel=1e-9)
    assert row.gemm_calls >= row.distinct_shapes > 0
    assert row.floor_ms > 0
    if case != "vae":  # the recurrent models run LSTM modules: their kernels are counted and replayed
        assert row.rnn_ms > 0


def test_the_table_names_its_conditions(tmp_path, capsys):
    out = tmp_path / "floor.md"
    rows = floor_table.main(["--models", "vae", "--batch", "2", "--frames", "3", "--repeats", "1", "--out", str(out)])
    text = out.read_text()
    assert "batch 2 x 3 frames, 1 thread(s)" in text and "| vae |" in text
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["rows"][0]["step_ms"] == pytest.approx(rows[0].step_ms)
    with pytest.raises(SystemExit):
        floor_table.main(["--models", "vae,nope"])
    assert "unknown model(s) nope" in capsys.readouterr().err

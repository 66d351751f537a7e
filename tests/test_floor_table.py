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
    for native in ("lightdvae::lstm_layer", "lightdvae::lstm_layer_backward"):
        assert floor_table.classify(native) == "rnn"
    assert floor_table.classify("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
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


def test_kernel_keys_come_from_the_recorded_calls():
    from torch.profiler import ProfilerActivity, profile

    lstm, x = torch.nn.LSTM(6, 5), torch.randn(3, 2, 6, requires_grad=True)
    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        lstm(x)[0].sum().backward()
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    keys = Counter(
        floor_table.kernel_key(ev.name, ev.input_shapes, ev.concrete_inputs)
        for ev in prof.events()
        if floor_table.classify(ev.name) in ("rnn", "attention")
    )
    # forward and backward of each kernel give the same key: the shapes a replay needs, and causality
    assert keys == {("rnn", 3, 2, 6, 5): 2, ("attention", (2, 4, 7, 8), (2, 4, 7, 8), (2, 4, 7, 8), True): 2}
    with pytest.raises(ValueError, match="not an RNN or attention kernel"):
        floor_table.kernel_key("aten::mm", [[2, 2], [2, 2]], [])


def test_kernel_replays_count_forward_only_calls_apart():
    key = ("rnn", 4, 3, 6, 5)
    both = floor_table.replay_rnn(Counter({key: 1}), Counter({key: 1}), repeats=3)
    # a cell of a step-by-step loop runs forward only: replayed without the backward
    alone = floor_table.replay_rnn(Counter({key: 1}), Counter(), repeats=3)
    assert both > 0 and alone > 0
    assert floor_table.replay_rnn(Counter(), Counter(), repeats=1) == 0
    shapes = (2, 4, 7, 8)
    attention = ("attention", shapes, shapes, shapes, True)
    assert floor_table.replay_attention(Counter({attention: 2}), Counter({attention: 2}), repeats=1) > 0


@pytest.mark.parametrize("case", ["vae", "dkf", "srnn-ss", "light-dvae"])
def test_a_row_accounts_for_the_whole_step(case):
    torch.set_num_threads(1)
    row = floor_table.measure(case, batch=2, frames=3, repeats=1)
    parts = [row.gemm_ms, row.rnn_ms, row.attention_ms, row.elementwise_ms, row.rest_ms]
    print(row)
    assert all(p >= 0 for p in parts)
    # the classes are shares of the profiled step applied to the unprofiled one: they add up to it
    assert sum(parts) == pytest.approx(row.step_ms, rel=1e-9)
    assert row.gemm_calls >= row.distinct_shapes > 0
    assert row.floor_ms > 0
    if case in ("dkf", "srnn-ss"):  # the recurrent models run LSTMs (at batch 2 the package's layer): counted
        assert row.rnn_ms > 0
    assert (row.attention_ms > 0) == (case == "light-dvae")


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

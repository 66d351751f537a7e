"""scripts/enhance_speed.py (the README's E-step speed table, issue #16): its table on the VAE, one iteration; the
figures themselves are timings and are not checked."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("enhance_speed", ROOT / "scripts" / "enhance_speed.py")
enhance_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(enhance_speed)


def test_waves_are_reproducible_and_of_the_asked_length():
    a, b = enhance_speed.waves(0.5, 2), enhance_speed.waves(0.5, 2)
    assert len(a) == 2 and all(w.numel() == 8000 for w in a)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))


def test_the_table_has_one_row_per_prior_with_ratios(capsys):
    enhance_speed.main(["--priors", "vae", "--iterations", "1", "--seconds", "0.5", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| vae |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert re.fullmatch(r"[\d.]+", cells[1]) and re.fullmatch(r"[\d.]+ \([\d.]+x\)", cells[2])
    assert re.fullmatch(r"\d+", cells[3]) and re.fullmatch(r"[\d.]+ \([\d.]+x\)", cells[4])
    assert float(cells[5]) > 0 and re.fullmatch(r"\d+", cells[6])  # the work of an iteration, and its rate


def test_parts_time_each_part_of_a_transformer_iteration(capsys):
    enhance_speed.main(["--parts", "--priors", "light-dvae", "vae", "--seconds", "0.2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("light-dvae: ") for line in lines)  # the VAE has no loop
    assert all(re.search(r": [\d.]+ ms$", line) for line in lines)


def test_the_work_counts_atens_lstm_layers():
    # torch's flop counter does not know ATen's CPU LSTM layers: the script counts their products itself
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    lstm = torch.nn.LSTM(24, 8, batch_first=True, bidirectional=True)
    x = torch.randn(3, 11, 24, requires_grad=True)
    forward = 2 * 2 * 11 * 3 * (4 * 8) * (24 + 8)  # directions x (2 x frames x batch x 4H x (in + H))
    with FlopCounterMode(display=False, custom_mapping=enhance_speed.lstm_flop_formulas()) as counter:
        out, _ = lstm(x)
    assert counter.get_total_flops() == forward
    with FlopCounterMode(display=False, custom_mapping=enhance_speed.lstm_flop_formulas()) as counter:
        lstm(x)[0].sum().backward()
    assert counter.get_total_flops() == 3 * forward


def test_paths_are_timed_in_turn_and_each_keeps_its_fastest_run():
    calls = []
    times = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def path(name):
        def run():
            calls.append(name)
            return next(times[name])

        return run

    assert enhance_speed.interleaved([path("a"), path("b")], 3) == [1.0, 4.0]
    assert calls == ["a", "b", "a", "b", "a", "b"]

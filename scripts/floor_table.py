"""Where a training step's time goes, against its GEMM floor (issue #17, item 1).

    python scripts/floor_table.py [--models vae,dkf,...] [--batch 128] [--frames 50] [--threads 1] [--out FILE.md]

For each model, one training step as ``lightdvae.train`` runs it (denormals flushed; forward, the negative ELBO
with the fused ops, backward, Adam; the published sizes; batch x frames x 513 bins; ``LIGHTDVAE_BACKEND`` picks
the ops):

- **step**: the median wall time of ``--repeats`` steps, unprofiled;
- **profile**: one step under ``torch.profiler`` (CPU), each operator's *self* time put in one class — GEMM (the
  matrix products: ``mm``, ``addmm``, ``bmm``, ...), RNN (the fused LSTM kernels), element-wise (every other ATen or
  ``lightdvae`` kernel that touches data) — and the rest of the profiled step: dispatch, autograd, views and
  allocations, Python.  The profiler adds a cost to every operator, so the classes are reported as their shares
  of the profiled step applied to the unprofiled step time;
- **floor**: the same matrix products timed alone on the shapes the profile recorded (each distinct shape replayed
  on fresh contiguous tensors, the fastest of ``--repeats``, times its count), plus every LSTM module's forward and
  backward timed alone on the inputs it saw. That is what the step cannot go below on this CPU with these
  kernels; ``step / floor`` is how far above it the step runs.

The replay uses contiguous operands (the profiler does not record strides), so a product that ran on a transposed
view may time slightly differently alone.  Run it on an otherwise idle machine: every figure is a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lightdvae.models import build
from lightdvae.runtime import flush_denormals
from lightdvae.train import train_step

# registry name and forward kwargs of each case (srnn-ss: the scheduled-sampling loop at p = 0.5, as the benchmark)
CASES = {
    "vae": ("vae", {}),
    "dkf": ("dkf", {}),
    "rvae": ("rvae", {}),
    "srnn-tf": ("srnn", {}),
    "srnn-ss": ("srnn", {"ss_prob": 0.5}),
    "hit-dvae": ("hit-dvae", {}),
    "light-dvae": ("light-dvae", {}),
}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"}
RNN_OPS = {"aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"}
# metadata-only or allocation operators: their self time is dispatch overhead, not data movement
META_OPS = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::reshape", "aten::_reshape_alias",
    "aten::as_strided", "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::select", "aten::slice",
    "aten::unsqueeze", "aten::squeeze", "aten::detach", "aten::alias", "aten::unbind", "aten::split", "aten::chunk",
    "aten::narrow", "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh", "aten::_unsafe_view",
    "aten::set_", "aten::resize_", "aten::contiguous", "aten::numpy_T", "aten::matmul", "aten::linear",
}  # fmt: skip


@dataclass
class Row:
    model: str
    step_ms: float
    gemm_ms: float
    rnn_ms: float
    elementwise_ms: float
    rest_ms: float
    floor_ms: float
    gemm_calls: int
    distinct_shapes: int

    @property
    def over_floor(self) -> float:
        return self.step_ms / self.floor_ms


def classify(name: str) -> str:
    """The class of one profiled operator: ``gemm``, ``rnn``, ``elementwise`` or ``rest``."""
    if name in GEMM_OPS:
        return "gemm"
    if name in RNN_OPS:
        return "rnn"
    if (name.startswith("aten::") or name.startswith("lightdvae::")) and name not in META_OPS:
        return "elementwise"
    return "rest"


def _times_ms(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def _median_ms(fn, repeats: int) -> float:
    return statistics.median(_times_ms(fn, repeats))


def _fastest_ms(fn, repeats: int) -> float:
    """A floor is the fastest the work ran alone: the minimum, which a busy moment cannot raise."""
    return min(_times_ms(fn, repeats))


def _gemm_operands(name: str, shapes: list) -> list[torch.Tensor] | None:
    """Fresh contiguous operands of a recorded product, or None when the shapes do not describe one."""
    tensors = [s for s in shapes if isinstance(s, list) and s]
    if name == "aten::mm" or name == "aten::bmm":
        parts = tensors[:2]
    elif name in ("aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"):
        parts = tensors[:3]
    else:
        return None
    if len(parts) != (2 if name in ("aten::mm", "aten::bmm") else 3):
        return None
    return [torch.randn(*shape) for shape in parts]


def replay_gemm(calls: Counter, repeats: int) -> float:
    """Sum over the distinct (operator, shapes) of ``count x`` the product's time alone, in ms."""
    total = 0.0
    for (name, shapes), count in calls.items():
        operands = _gemm_operands(name, json.loads(shapes))
        if operands is None:
            raise ValueError(f"cannot replay {name} with input shapes {shapes}")
        op = getattr(torch, name.removeprefix("aten::"))
        total += count * _fastest_ms(lambda op=op, operands=operands: op(*operands), repeats)
    return total


class _RNNRecorder:
    """Forward hooks on every LSTM / GRU module: the input shape of each call and whether its input needed grad."""

    def __init__(self, model: nn.Module):
        self.calls: Counter = Counter()
        self._handles = [
            m.register_forward_hook(self._hook(m)) for m in model.modules() if isinstance(m, (nn.LSTM, nn.GRU))
        ]

    def _hook(self, module):
        def hook(_mod, args, _out):
            x = args[0]
            self.calls[(id(module), tuple(x.shape), x.requires_grad)] += 1

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def replay_rnn(model: nn.Module, calls: Counter, repeats: int) -> float:
    """Sum over the recorded RNN module calls of ``count x`` their forward + backward alone, in ms."""
    modules = {id(m): m for m in model.modules()}
    total = 0.0
    for (mid, shape, input_grad), count in calls.items():
        module = modules[mid]
        x = torch.randn(*shape, requires_grad=input_grad)

        def run(module=module, x=x):
            out, _ = module(x)
            out.sum().backward()

        total += count * _fastest_ms(run, repeats)
    return total


def measure(case: str, batch: int, frames: int, repeats: int) -> Row:
    """The row of one model (see the module docstring)."""
    name, forward_kwargs = CASES[case]
    torch.manual_seed(0)
    model = build(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    power = torch.exp(2.0 * torch.randn(batch, frames, model.config.x_dim)) + 1e-6

    def step():
        train_step(model, optimizer, power, beta=1e-2, kl_warm=1.0, forward_kwargs=forward_kwargs)

    step_ms = _median_ms(step, repeats)
    recorder = _RNNRecorder(model)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        step()
        profiled_ms = 1e3 * (time.perf_counter() - t0)
    recorder.close()
    spent = Counter()
    gemm_calls: Counter = Counter()
    for ev in prof.events():
        cls = classify(ev.name)
        spent[cls] += ev.self_cpu_time_total / 1e3
        if cls == "gemm":
            gemm_calls[(ev.name, json.dumps(ev.input_shapes))] += 1
    floor = replay_gemm(gemm_calls, repeats) + replay_rnn(model, recorder.calls, repeats)
    # the profiler's cost per operator inflates the profiled step: each class keeps its share of it
    scale = step_ms / max(profiled_ms, spent["gemm"] + spent["rnn"] + spent["elementwise"])
    return Row(
        model=case,
        step_ms=step_ms,
        gemm_ms=scale * spent["gemm"],
        rnn_ms=scale * spent["rnn"],
        elementwise_ms=scale * spent["elementwise"],
        rest_ms=scale * (profiled_ms - spent["gemm"] - spent["rnn"] - spent["elementwise"]),
        floor_ms=floor,
        gemm_calls=sum(gemm_calls.values()),
        distinct_shapes=len(gemm_calls),
    )


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| model | step (ms) | GEMM | RNN kernels | element-wise | rest | GEMM calls (shapes) | floor (ms) "
        "| step / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.step_ms:.1f} | {r.gemm_ms:.1f} | {r.rnn_ms:.1f} | {r.elementwise_ms:.1f} | "
            f"{r.rest_ms:.1f} | {r.gemm_calls} ({r.distinct_shapes}) | {r.floor_ms:.1f} | {r.over_floor:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each step and each replayed product")
    p.add_argument("--out", help="also write the Markdown table (and a .json beside it) here")
    args = p.parse_args(argv)
    cases = [c.strip() for c in args.models.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    rows = []
    for case in cases:
        with flush_denormals():  # as lightdvae.train runs its steps
            rows.append(measure(case, args.batch, args.frames, args.repeats))
        r = rows[-1]
        print(f"{case}: step {r.step_ms:.1f} ms, floor {r.floor_ms:.1f} ms ({r.over_floor:.2f}x)", flush=True)
    header = (
        f"Training step at batch {args.batch} x {args.frames} frames, {args.threads} thread(s), torch "
        f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}; times in ms."
    )
    table = markdown(rows, header)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)
        with open(args.out.rsplit(".", 1)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump({"header": header, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

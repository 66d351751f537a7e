"""Where a training step's time goes, against its GEMM floor (issue #17, item 1).

    python scripts/floor_table.py [--models vae,dkf,...] [--batch 128] [--frames 50] [--threads 1] [--out FILE.md]

For each model, one training step as ``lightdvae.train`` runs it (denormals flushed; forward, the negative ELBO
with the fused ops, backward, Adam; the published sizes; batch x frames x 513 bins; ``LIGHTDVAE_BACKEND`` picks
the ops):

- **step**: the median wall time of ``--repeats`` steps, unprofiled;
- **profile**: one step under ``torch.profiler`` (CPU), each operator's *self* time put in one class — GEMM (the
  matrix products: ``mm``, ``addmm``, ``bmm``, ...), RNN (oneDNN's fused LSTM layer kernels, forward and backward;
  at batch <= 4 the recurrence of the package's LSTM layer, whose products count as GEMMs), attention (the fused
  CPU flash-attention kernels, forward and backward), element-wise (every other ATen or ``lightdvae`` kernel that
  touches data) — and the rest of the profiled step: dispatch, autograd, views and allocations, Python. The
  profiler adds a cost to every operator, so the classes are reported as their shares of the profiled step applied
  to the unprofiled step time;
- **floor**: the step's products and fused kernels timed alone on the shapes the profile recorded, each distinct
  shape on fresh contiguous tensors, the fastest of ``--repeats``, times its count: every matrix product; every
  LSTM layer kernel (a layer whose backward ran: its forward and backward through ``nn.LSTM``; one that ran
  forward only, as the step-by-step own-past loop's cells do: its forward without gradients); every attention
  kernel (its forward, and its backward on the forward's outputs).  That is what the step cannot go below on
  this CPU with these kernels; ``step / floor`` is how far above it the step runs.  The step and the replays
  allocate as the trainer does (``lightdvae.runtime.keep_freed_memory``).

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
from lightdvae.runtime import flush_denormals, keep_freed_memory
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
RNN_FORWARD, RNN_BACKWARD = "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"
RNN_OPS = {RNN_FORWARD, RNN_BACKWARD}
#: the package's LSTM layer (lightdvae.ops.lstm), which a step at batch <= 4 runs: its self time is RNN time; its
#: products are ATen calls of their own, which the profile records and the floor replays as GEMMs
NATIVE_RNN_OPS = {"lightdvae::lstm_layer", "lightdvae::lstm_layer_backward"}
ATTENTION_FORWARD = "aten::_scaled_dot_product_flash_attention_for_cpu"
ATTENTION_BACKWARD = "aten::_scaled_dot_product_flash_attention_for_cpu_backward"
ATTENTION_OPS = {ATTENTION_FORWARD, ATTENTION_BACKWARD}
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
    attention_ms: float
    elementwise_ms: float
    rest_ms: float
    floor_ms: float
    gemm_calls: int
    distinct_shapes: int

    @property
    def over_floor(self) -> float:
        return self.step_ms / self.floor_ms


def classify(name: str) -> str:
    """The class of one profiled operator: ``gemm``, ``rnn``, ``attention``, ``elementwise`` or ``rest``."""
    if name in GEMM_OPS:
        return "gemm"
    if name in RNN_OPS or name in NATIVE_RNN_OPS:
        return "rnn"
    if name in ATTENTION_OPS:
        return "attention"
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


def kernel_key(name: str, shapes: list, scalars: list) -> tuple:
    """What a replay of one RNN or attention kernel call needs from the profile: ``("rnn", T, batch, input,
    hidden)`` of an LSTM layer (forward and backward alike: the input is their first argument, h_0 their sixth) or
    ``("attention", q, k, v, is_causal)`` of a flash-attention call (the backward's inputs follow its gradient)."""
    if name in RNN_OPS:
        (frames, batch, width), (_, hidden) = shapes[0], shapes[5]
        return ("rnn", frames, batch, width, hidden)
    if name in ATTENTION_OPS:
        # forward (q, k, v, dropout_p, is_causal, attn_mask, ...); backward (grad, q, k, v, out, logsumexp,
        # dropout_p, is_causal, attn_mask, ...)
        first, causal_at = (0, 4) if name == ATTENTION_FORWARD else (1, 7)
        causal = scalars[causal_at] if len(scalars) > causal_at else False
        if len(shapes) > causal_at + 1 and shapes[causal_at + 1]:
            raise ValueError(f"cannot replay {name} with an attention mask (shapes {shapes})")
        return ("attention", *(tuple(shape) for shape in shapes[first : first + 3]), bool(causal))
    raise ValueError(f"{name} is not an RNN or attention kernel")


def _of_kind(kind: str, forward: Counter, backward: Counter) -> list:
    """The kernel keys (kernel_key) of one kind that ran forward or backward, in a fixed order."""
    return sorted(k for k in forward.keys() | backward.keys() if k[0] == kind)


def replay_rnn(forward: Counter, backward: Counter, repeats: int) -> float:
    """The recorded LSTM layer kernels (the "rnn" keys of the two counters) alone, in ms: per shape, as many
    forward + backward passes of a one-layer ``nn.LSTM`` as backward kernels ran, and the remaining forward kernels
    without gradients."""
    total = 0.0
    for key in _of_kind("rnn", forward, backward):
        _, frames, batch, width, hidden = key
        lstm = nn.LSTM(width, hidden)
        x = torch.randn(frames, batch, width, requires_grad=True)

        def both(lstm=lstm, x=x):
            out, _ = lstm(x)
            out.sum().backward()

        def forward_only(lstm=lstm, x=x):
            with torch.no_grad():
                lstm(x)

        pairs = backward[key]
        alone = max(forward[key] - pairs, 0)
        total += (pairs and pairs * _fastest_ms(both, repeats)) + (alone and alone * _fastest_ms(forward_only, repeats))
    return total


def replay_attention(forward: Counter, backward: Counter, repeats: int) -> float:
    """The recorded flash-attention kernels (the "attention" keys of the two counters) alone, in ms: each forward,
    and each backward on a forward's outputs."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    total = 0.0
    for key in _of_kind("attention", forward, backward):
        _, q_shape, k_shape, v_shape, causal = key
        q, k, v = torch.randn(*q_shape), torch.randn(*k_shape), torch.randn(*v_shape)
        out, logsumexp = flash(q, k, v, 0.0, causal)
        grad = torch.randn_like(out)
        if forward[key]:
            total += forward[key] * _fastest_ms(lambda q=q, k=k, v=v, c=causal: flash(q, k, v, 0.0, c), repeats)
        if backward[key]:

            def run(q=q, k=k, v=v, out=out, lse=logsumexp, grad=grad, c=causal):
                flash_backward(grad, q, k, v, out, lse, 0.0, c)

            total += backward[key] * _fastest_ms(run, repeats)
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
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        step()
        profiled_ms = 1e3 * (time.perf_counter() - t0)
    spent = Counter()
    gemm_calls: Counter = Counter()
    forward_kernels: Counter = Counter()  # kernel_key -> count, for the RNN and attention replays
    backward_kernels: Counter = Counter()
    for ev in prof.events():
        cls = classify(ev.name)
        spent[cls] += ev.self_cpu_time_total / 1e3
        if cls == "gemm":
            gemm_calls[(ev.name, json.dumps(ev.input_shapes))] += 1
        elif cls in ("rnn", "attention") and ev.name not in NATIVE_RNN_OPS:  # the native layer's products: GEMMs
            key = kernel_key(ev.name, ev.input_shapes, getattr(ev, "concrete_inputs", None) or [])
            (backward_kernels if ev.name in (RNN_BACKWARD, ATTENTION_BACKWARD) else forward_kernels)[key] += 1
    floor = (
        replay_gemm(gemm_calls, repeats)
        + replay_rnn(forward_kernels, backward_kernels, repeats)
        + replay_attention(forward_kernels, backward_kernels, repeats)
    )
    kernels = ("gemm", "rnn", "attention", "elementwise")
    # the profiler's cost per operator inflates the profiled step: each class keeps its share of it
    scale = step_ms / max(profiled_ms, sum(spent[c] for c in kernels))
    return Row(
        model=case,
        step_ms=step_ms,
        gemm_ms=scale * spent["gemm"],
        rnn_ms=scale * spent["rnn"],
        attention_ms=scale * spent["attention"],
        elementwise_ms=scale * spent["elementwise"],
        rest_ms=scale * (profiled_ms - sum(spent[c] for c in kernels)),
        floor_ms=floor,
        gemm_calls=sum(gemm_calls.values()),
        distinct_shapes=len(gemm_calls),
    )


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| model | step (ms) | GEMM | RNN kernels | attention | element-wise | rest | GEMM calls (shapes) "
        "| floor (ms) | step / floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.step_ms:.1f} | {r.gemm_ms:.1f} | {r.rnn_ms:.1f} | {r.attention_ms:.1f} | "
            f"{r.elementwise_ms:.1f} | {r.rest_ms:.1f} | {r.gemm_calls} ({r.distinct_shapes}) | {r.floor_ms:.1f} | "
            f"{r.over_floor:.2f}x |"
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
    keep_freed_memory()  # as lightdvae.train runs its steps (and the replays: fresh outputs, the same pages)
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

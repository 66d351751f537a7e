"""A training step of the transformer DVAEs with the feed-forward's ReLU and dropout fused (``relu_dropout``, as
the models run) and as two ops (``torch.relu`` then the hashed dropout), interleaved in one process.

    OMP_NUM_THREADS=1 python scripts/fused_ff_step.py [--rounds 7] [--models light-dvae,hit-dvae]

Batch 128 x 50 frames x 513 bins, published sizes, one thread, :func:`lightdvae.train.train_step` (forward, ELBO,
backward, Adam) with denormals flushed; the first round is a warm-up; medians of the rest.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightdvae.models import build, transformer_layers
from lightdvae.runtime import keep_freed_memory
from lightdvae.train import train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--models", default="light-dvae,hit-dvae")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    keep_freed_memory()
    power = torch.exp(2.0 * torch.randn(128, 50, 513, generator=torch.Generator().manual_seed(0))) + 1e-6
    fused = transformer_layers.FeedForward.forward

    def two_ops(self, x):
        return self.net(x)

    try:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = build(name).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            times: dict[str, list[float]] = {"fused": [], "two ops": []}
            for r in range(args.rounds):
                for mode, forward in (("fused", fused), ("two ops", two_ops)):
                    transformer_layers.FeedForward.forward = forward
                    start = time.perf_counter()
                    train_step(model, optimizer, power, beta=0.01)
                    if r:
                        times[mode].append(time.perf_counter() - start)
            a, b = (statistics.median(times[m]) * 1e3 for m in ("fused", "two ops"))
            rounds = args.rounds - 1
            print(f"{name}: fused {a:.0f} ms, two ops {b:.0f} ms: {b / a:.3f}x (medians of {rounds} steps each)")
    finally:
        transformer_layers.FeedForward.forward = fused


if __name__ == "__main__":
    main()

"""What a transformer prior's decoder is fed for its past during the EM (docs/enhancement/README.md,
"The transformer priors' E-step rate"): Δ SI-SDR of a noisy set enhanced by a shipped HiT/LigHT-DVAE with each choice.

    python scripts/decoder_past_study.py NOISY_SET [--prior light-dvae] [--variant own] [--lr 1e-3]
                                         [--iterations 30] [--beta 0.01]

NOISY_SET is a folder of ``lightdvae corpus noisy``.  Variants (the E-step and the sample pass alike):

- ``own``: the decoder fed its own past, frame by frame (what ``lightdvae enhance`` runs);
- ``mixture``: the mixture's power as the past (teacher forcing on the noisy speech);
- ``estimate``: the previous iteration's posterior mean of the clean power, ``G^2 |X|^2 + G WH`` with the Wiener
  gain ``G = g v / (g v + WH)`` (the mixture's power before the first M-step);
- ``oracle``: the clean speech's power (which no enhancement has; an upper bound of what a past can give).

Prints one line: the prior, variant, rate, mean Δ SI-SDR overall and by SNR, the seconds.  One thread.  A study
script: it replaces the engine's posterior pass and the EM loop for its own run (``lightdvae.enhance`` is not
changed for anyone else).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import lightdvae.enhance.api as api
from lightdvae.audio import stft
from lightdvae.enhance import inference, vem
from lightdvae.enhance.noise import init_noise_model, m_step_and_divergence
from lightdvae.metrics import si_sdr
from lightdvae.models import pretrained
from lightdvae.ops import gaussian_kl

VARIANTS = ("own", "mixture", "estimate", "oracle")


class PastStudy:
    """The posterior pass and the EM loop with the decoder's past chosen by ``variant``."""

    def __init__(self, variant: str):
        self.variant = variant
        self.past: torch.Tensor | None = None  # the past the next pass decodes on (None: its own)
        self.oracle: torch.Tensor | None = None  # the clean power of the utterance being enhanced

    def posterior_pass(self, engine, power, lengths, generators, grad):
        if self.past is None:
            return ORIGINAL_PASS(engine, power, lengths, generators, grad)
        params = engine.stacked if grad else {n: p.detach() for n, p in engine.stacked.items()}
        c = engine.model.config
        feats = engine.model.features(power)
        encode = engine._encoder(params, len(lengths))
        w_mean, w_logvar = encode("encode_w", feats)
        w = torch.addcmul(w_mean, inference.draw(generators, [], (c.w_dim,), power), torch.exp(0.5 * w_logvar))
        z_mean, z_logvar = encode("encode_z", feats, w)
        z = torch.addcmul(z_mean, inference.draw(generators, lengths, (c.z_dim,), power), torch.exp(0.5 * z_logvar))
        logvar, mean_p, logvar_p = engine.call("decode", engine.frozen, z, w, self.past)
        if not grad:
            return logvar, None
        kl_w = gaussian_kl(w_mean, w_logvar, reduction="none").sum(-1)
        return logvar, inference.masked_kl(z_mean, z_logvar, mean_p, logvar_p, lengths) + kl_w

    def run_vem(self, engine, power, lengths, generators, s):
        mask = vem.frame_mask(lengths, power.device)
        state = init_noise_model(lengths, power.shape[-1], s.rank, generators, dtype=power.dtype, device=power.device)
        self.past = {"own": None, "mixture": power, "estimate": power, "oracle": self.oracle}[self.variant]
        start, losses = time.perf_counter(), []
        for _ in range(s.iterations):
            engine.step(power, lengths, mask, state.g, state.noise_variance(), s.beta, generators)
            speech = engine.sample(power, lengths, generators)
            losses.append(m_step_and_divergence(state, power, speech, mask))
            if self.variant == "estimate":
                scaled, noise = state.g[..., None] * speech, state.noise_variance()
                gain = scaled / (scaled + noise)
                self.past = (gain * gain * power + gain * noise).clamp_min(api.POWER_FLOOR)
        filt, speech, noise = vem._final_filter(engine, state, power, lengths, generators, s.samples)
        return vem.VEMOutput(filt, speech, noise, torch.stack(losses), len(losses), time.perf_counter() - start, False)


ORIGINAL_PASS = inference.HierarchicalEngine.posterior_pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("noisy_set", type=Path)
    parser.add_argument("--prior", default="light-dvae", choices=("light-dvae", "hit-dvae"))
    parser.add_argument("--variant", default="own", choices=VARIANTS)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--beta", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = PastStudy(args.variant)

    def posterior_pass(engine, power, lengths, generators, grad):
        return study.posterior_pass(engine, power, lengths, generators, grad)

    inference.HierarchicalEngine.posterior_pass = posterior_pass
    api.run_vem = study.run_vem
    model = pretrained(args.prior)
    rows = [json.loads(line) for line in (args.noisy_set / "manifest.jsonl").read_text().splitlines()]
    start, gains = time.perf_counter(), {}
    for index, row in enumerate(rows):
        noisy = sf.read(args.noisy_set / row["noisy"])[0]
        clean = sf.read(args.noisy_set / row["clean"])[0]
        peak = np.abs(noisy).max()
        clean_power = torch.view_as_real(stft(torch.tensor(clean / peak, dtype=torch.float32))).square().sum(-1)
        study.oracle = clean_power[None].clamp_min(api.POWER_FLOOR)
        settings = {"iterations": args.iterations, "beta": args.beta, "lr": args.lr}
        out = api.enhance(model, noisy, index=index, **settings).waveform  # the random stream of a set run
        gains.setdefault(row["snr_db"], []).append(si_sdr(clean, out) - si_sdr(clean, noisy))
    every = [g for v in gains.values() for g in v]
    by_snr = {k: round(float(np.mean(v)), 2) for k, v in sorted(gains.items())}
    print(
        f"{args.prior} past={args.variant} lr={args.lr:g}: ΔSI-SDR {np.mean(every):+.2f} dB, by SNR {by_snr}, "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()

"""Which half of the mixture model limits an enhancement (docs/enhancement/README.md, "More Adam steps per
E-step"): the speech variance ``g v`` or the noise variance ``WH``.

    python scripts/wiener_oracle_study.py NOISY_SET [--prior vae] [--snr -5] [--max-files N]
                                          [--iterations 30] [--beta 0.01] [--e-steps 1] [--latent-e-step]
                                          [--lr LR]

Each file of a ``lightdvae corpus noisy`` set (those at ``--snr`` only, when given) is enhanced as
``lightdvae enhance`` does, then filtered again with Wiener filters that swap one half for the truth:

- ``model``: ``g v / (g v + WH)``, the EM's own estimate;
- ``oracle``: ``|S|^2 / (|S|^2 + |N|^2)`` from the clean speech S and the noise N = mixture - S (no enhancement has
  them: an upper bound of the Wiener filter);
- ``model speech + true noise``: ``g v / (g v + |N|^2)``;
- ``true speech + model noise``: ``|S|^2 / (|S|^2 + WH)``;
- ``prior's resynthesis + model noise``: ``v_S / (v_S + WH)``, ``v_S`` the prior's resynthesis of the clean speech
  (its encoder reads S itself, ``model(power(S))``): what the decoder can express when it is given the right
  latents.

Prints, per filter, the mean ESTOI and SI-SDR (dB) over the files.  One thread.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from lightdvae.audio import istft, stft
from lightdvae.audio.spectral import power_spectrogram
from lightdvae.data.noisy import read_noisy_set
from lightdvae.enhance import enhance
from lightdvae.metrics import estoi, si_sdr
from lightdvae.models import pretrained

FILTERS = (
    "model",
    "oracle",
    "model speech + true noise",
    "true speech + model noise",
    "prior's resynthesis + model noise",
)


def resynthesis_variance(model, clean: np.ndarray) -> torch.Tensor:
    """The prior's variance for the clean speech, ``(frames, F)``, at the waveform's scale (the model reads the
    speech scaled by its peak, as in training)."""
    peak = float(np.abs(clean).max())
    with torch.no_grad():
        out = model(power_spectrogram(torch.from_numpy(clean / peak))[None].float())
    return torch.exp(out.logvar[0]).double() * peak**2


def filters(model, noisy: np.ndarray, clean: np.ndarray, options: dict) -> dict[str, torch.Tensor]:
    """The five Wiener gains of one file, ``(frames, F)`` float64."""
    result = enhance(model, noisy, **options)
    peak2 = float(np.abs(noisy).max()) ** 2  # enhance works on the mixture scaled by its peak
    speech = result.speech_variance.double() * peak2
    noise = result.noise_variance.double() * peak2
    s2 = stft(torch.from_numpy(clean.astype(np.float64))).abs().square()
    n2 = stft(torch.from_numpy((noisy - clean).astype(np.float64))).abs().square()
    v_s = resynthesis_variance(model, clean)
    tiny = torch.finfo(torch.float64).tiny
    return {
        "model": speech / (speech + noise),
        "oracle": s2 / (s2 + n2 + tiny),
        "model speech + true noise": speech / (speech + n2),
        "true speech + model noise": s2 / (s2 + noise),
        "prior's resynthesis + model noise": v_s / (v_s + noise),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("noisy_set", help="a folder of `lightdvae corpus noisy`")
    p.add_argument("--prior", default="vae", help="a shipped prior (vae)")
    p.add_argument("--snr", type=float, help="only the files at this SNR (dB)")
    p.add_argument("--max-files", type=int, help="only the first N files (after --snr)")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--beta", type=float, default=0.01)
    p.add_argument("--e-steps", type=int, default=1)
    p.add_argument("--latent-e-step", action="store_true", help="Adam on the posteriors, not the encoder's weights")
    p.add_argument("--lr", type=float, help="Adam's rate of the E-step (the default: the prior's, or the latent one)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = pretrained(args.prior).eval()
    items = [i for i in read_noisy_set(f"noisy:{args.noisy_set}").items if args.snr is None or i.snr_db == args.snr]
    items = items[: args.max_files] if args.max_files else items
    options = dict(
        iterations=args.iterations,
        beta=args.beta,
        e_steps=args.e_steps,
        latent_e_step=args.latent_e_step,
        lr=args.lr,
        seed=0,
    )
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in FILTERS}
    noisy_scores = []
    for item in items:
        noisy, clean = item.load()
        noisy, clean = noisy.astype(np.float64), clean.astype(np.float64)
        mixture = stft(torch.from_numpy(noisy))
        noisy_scores.append((estoi(clean, noisy).value, si_sdr(clean, noisy)))
        for name, gain in filters(model, noisy, clean, options).items():
            frames = min(gain.shape[0], mixture.shape[0])
            estimate = istft(gain[:frames] * mixture[:frames], length=len(noisy)).numpy()
            scores[name].append((estoi(clean, estimate).value, si_sdr(clean, estimate)))
    n, e = len(items), args.e_steps
    what = f"{args.prior}, {n} file{'s' * (n != 1)}" + (f" at {args.snr:g} dB" if args.snr is not None else "")
    latent = (" (latent)" if args.latent_e_step else "") + (f", lr {args.lr:g}" if args.lr is not None else "")
    print(
        f"{what}; {args.iterations} iterations x {e} E-step{'s' * (e != 1)}{latent}, beta {args.beta:g}: "
        "ESTOI, SI-SDR (dB)"
    )
    for name, values in [("noisy input", noisy_scores), *scores.items()]:
        mean_estoi, mean_si_sdr = np.nanmean(np.array(values), axis=0)
        print(f"  {name:34s} {mean_estoi:.3f}  {mean_si_sdr:+6.2f}")


if __name__ == "__main__":
    main()

"""``lightdvae swap-w``: exchange the sequence latent w of two utterances (HiT-DVAE, LigHT-DVAE).

    lightdvae swap-w RUN_DIR A.wav B.wav [--out DIR] [--past gen|gt] [--which best|last] [--device auto|cpu|cuda]
                     [--griffin-lim] [--overwrite]

Encodes both files (posterior means of w, then of z given the file's own w), decodes each with its own z and the
other's w (and with its own w, for reference: that is the plain resynthesis), and writes a_with_w_of_b.wav,
b_with_w_of_a.wav, a_with_w_of_a.wav, b_with_w_of_b.wav (the phase of the file whose z is decoded, its length),
swap_w.png (a, b, a with w of b, b with w of a on one colour scale) and swap_w.json (w vectors, and a check that w
carries global traits: the w encoder's w of each output against the donor's and the source's, and the distance of
their long-term average spectra) into RUN_DIR/swap_w/<a>--<b>-<past>/ (or --out).
"""

from __future__ import annotations

import argparse
import json


def run(args) -> int:
    import logging

    from lightdvae.generation import swap_w

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = swap_w(
        args.run_dir,
        args.a,
        args.b,
        out=args.out,
        which=args.which,
        device=args.device,
        past=args.past,
        griffin_lim=args.griffin_lim,
        griffin_lim_iters=args.griffin_lim_iters,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    if not args.quiet:
        check = result["check"]
        print(f"{result['model']['label']} w exchange ({result['past'].upper()} past) -> {result['out']}")
        for name in ("a_with_w_of_b", "b_with_w_of_a"):
            c = check[name]
            print(
                f"  {name}: w transfer {c['w_transfer']:.2f} (own-w resynthesis {c['own_w_transfer']:.2f}; 0 = the "
                f"source's w, 1 = the donor's); long-term spectrum {c['ltas_db_to_donor']:.2f} dB from the donor's "
                f"(own-w resynthesis {c['own_ltas_db_to_donor']:.2f} dB)"
            )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "swap-w",
        help="exchange the sequence latent w of two utterances (HiT-DVAE, LigHT-DVAE): wavs, figure, check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory of a HiT-DVAE or LigHT-DVAE model")
    p.add_argument("a", metavar="A", help="first audio file (wav/flac; resampled to 16 kHz, trimmed, normalised)")
    p.add_argument("b", metavar="B", help="second audio file")
    p.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/swap_w/<A>--<B>-<past>/)")
    p.add_argument(
        "--past",
        default="gen",
        choices=("gen", "gt"),
        help="decoder fed its own past outputs (gen, the default) or the true past of the decoded file (gt)",
    )
    p.add_argument(
        "--which", "--checkpoint", dest="which", default="best", choices=("best", "last"), help="checkpoint (best)"
    )
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    p.add_argument(
        "--griffin-lim",
        action="store_true",
        help="also write Griffin-Lim resyntheses (*_gl.wav), which keep none of the source's phase",
    )
    p.add_argument("--griffin-lim-iters", type=int, metavar="K", help="their iterations (100)")
    p.add_argument("--seed", type=int, default=0, help="seed of their random initial phases (0)")
    p.add_argument("--overwrite", action="store_true", help="replace the w exchange of other inputs found in --out")
    p.add_argument("--quiet", action="store_true", help="no closing lines")
    p.add_argument("--json", action="store_true", help="print swap_w.json")
    p.set_defaults(func=run)

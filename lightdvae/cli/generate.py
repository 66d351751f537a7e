"""``lightdvae generate``: sample speech from a model's prior, Griffin-Lim to waveforms, figures and FDSD.

    lightdvae generate RUN_DIR [--n 100] [--frames 200] [--out DIR] [--temperature 1.0] [--seed 0]
                       [--which best|last] [--device auto|cpu|cuda] [--threads N] [--batch-size 32]
                       [--griffin-lim-iters 100] [--figures 8] [--no-fdsd] [--data SPEC] [--split test]
                       [--draws 10] [--features ds2-builtin] [--overwrite]

Writes wav/sample_XXX.wav (16 kHz), generation.png, real_vs_generated.png, generation.json and,
unless --no-fdsd, fdsd.json (read by `lightdvae report`) into RUN_DIR/generate/<which>-n<N>-f<F>-t<T>-s<S>/ (or
--out).  Running the same command again reuses what is done (an interrupted generation resumes batch by batch);
a folder holding another generation is refused unless --overwrite.  FDSD compares the generated files with the
corpus split (default: the test split of the corpus the run was trained on) at m = min(n, real files // 2)
utterances per set, the real-vs-real floors at the same m (see lightdvae.generation).
"""

from __future__ import annotations

import argparse
import json

from lightdvae.cli import non_negative_int, positive_int


def run(args) -> int:
    import logging

    from lightdvae.generation import fdsd_line, generate_run

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    manifest = generate_run(
        args.run_dir,
        n=args.n,
        frames=args.frames,
        out=args.out,
        temperature=args.temperature,
        seed=args.seed,
        which=args.which,
        device=args.device,
        batch_size=args.batch_size,
        griffin_lim_iters=args.griffin_lim_iters,
        figures=args.figures,
        fdsd=not args.no_fdsd,
        data=args.data,
        split=args.split,
        fdsd_draws=args.draws,
        features=args.features,
        overwrite=args.overwrite,
        threads=args.threads,
        quiet=args.quiet or args.json,
        progress=False if (args.quiet or args.json) else None,
    )
    if args.json:
        print(json.dumps(manifest, indent=2, default=str))
        return 0
    if not args.quiet:
        t = manifest["timings"]
        what = "reused" if manifest["reused"] else "generated"
        print(
            f"{manifest['model']['label']}: {what} {manifest['n']} samples of {manifest['seconds_per_sample']:.2f} s "
            f"(temperature {manifest['temperature']:g}, seed {manifest['seed']}); prior sampling "
            f"{t['prior_sampling_s']:.1f} s ({t['prior_sampling_s_per_audio_s']:.3f} s per s of audio), Griffin-Lim "
            f"{t['griffin_lim_s']:.1f} s -> {manifest['out']}"
        )
        print(fdsd_line(manifest.get("fdsd")))
    return 0


def _temperature(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


_temperature.__name__ = "finite number >= 0"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample speech from a model's prior (Griffin-Lim), with figures and FDSD against the test split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (config.json + checkpoints/best.pt)")
    _add_sampling_options(p)
    _add_fdsd_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace another generation found in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no closing lines")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def _add_sampling_options(p) -> None:
    """What is generated, where, and how (samples, frames, seed, checkpoint, device, batches, Griffin-Lim)."""
    from lightdvae.generation import DEFAULT_BATCH, DEFAULT_FIGURES, DEFAULT_FRAMES, DEFAULT_N

    p.add_argument("--n", type=positive_int, default=DEFAULT_N, metavar="N", help=f"number of samples ({DEFAULT_N})")
    p.add_argument(
        "--frames",
        type=positive_int,
        default=DEFAULT_FRAMES,
        metavar="F",
        help=f"frames per sample, hop 16 ms: (F - 1) * 256 samples at 16 kHz ({DEFAULT_FRAMES} = 3.2 s)",
    )
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default RUN_DIR/generate/<which>-n<N>-f<F>-t<T>-s<SEED>/)"
    )
    p.add_argument(
        "--temperature",
        type=_temperature,
        default=1.0,
        metavar="T",
        help="scale of the prior's standard deviations (1.0: the model's prior; 0: its means)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="seeds sampling, Griffin-Lim phases and FDSD draws (0)"
    )
    p.add_argument(
        "--which", "--checkpoint", dest="which", default="best", choices=("best", "last"), help="checkpoint (best)"
    )
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch threads (default on the CPU: 1, the fastest for step-by-step decoding)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH,
        metavar="B",
        help=f"samples generated together ({DEFAULT_BATCH}); each batch has its own random stream, so the samples "
        "depend on it",
    )
    p.add_argument(
        "--griffin-lim-iters", type=non_negative_int, metavar="K", help="Griffin-Lim iterations (100, the protocol's)"
    )
    p.add_argument(
        "--figures",
        type=non_negative_int,
        default=DEFAULT_FIGURES,
        metavar="K",
        help=f"spectrograms of the first K samples in generation.png ({DEFAULT_FIGURES}; 0: no figures)",
    )


def _add_fdsd_options(p) -> None:
    """The FDSD against the real set: whether, which corpus and split, how many draws, which features."""
    from lightdvae.generation import DEFAULT_DRAWS

    p.add_argument("--no-fdsd", action="store_true", help="skip FDSD (then no corpus is needed)")
    p.add_argument(
        "--data",
        metavar="SPEC",
        help="real set of FDSD: builtin, DIR, wsj0:DIR, vb:DIR (default: the corpus the run was trained on)",
    )
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="split of the real set (test)")
    p.add_argument(
        "--draws",
        type=positive_int,
        default=DEFAULT_DRAWS,
        metavar="D",
        help=f"FDSD draws, mean ± std ({DEFAULT_DRAWS})",
    )
    p.add_argument(
        "--features",
        default="ds2-builtin",
        metavar="NET",
        help="FDSD feature network: ds2-builtin (shipped), ds2:FILE, or module:factory",
    )

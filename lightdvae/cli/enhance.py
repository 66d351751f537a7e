"""``lightdvae enhance``: unsupervised speech enhancement with a trained DVAE as the speech prior.

    lightdvae enhance RUN noisy.wav --out clean.wav [--clean FILE] [EM options]
    lightdvae enhance RUN --data SPEC [--out DIR] [--max-files N] [--batch-size 16] [--workers N]
                      [--no-audio] [--figures 2] [--overwrite] [--quiet] [EM options]

EM options: [--iterations 100] [--rank 8] [--lr 1e-3 | 1e-4] [--beta 1] [--e-steps 1] [--latent-e-step
[--speech-past own|estimate]] [--samples 1] [--seed 0] [--max-seconds S]
[--device auto] [--threads N] [--checkpoint best].  The defaults are the reference's method (Bie et al. 2022);
the best runs measured (README, "Speech enhancement with a DVAE prior") are ``--iterations 30 --e-steps 10
--latent-e-step``, with ``--speech-past estimate`` for SRNN, HiT-DVAE and LigHT-DVAE and ``--beta 0.01`` for SRNN
and HiT-DVAE.

RUN is what ``lightdvae eval`` takes: a run folder, an imported checkpoint's folder, or ``pretrained:NAME``.

One file: the noisy file is mixed down to mono and resampled to 16 kHz when it is not (said in the summary
line).  Prints one line: the iterations, the time, and with ``--clean FILE`` the SI-SDR of the input and output.

A noisy set (``--data noisy:DIR``, ``vbd:DIR`` or ``wsj0-qut:DIR``; build one with ``lightdvae corpus noisy``):
every file is enhanced (up to --batch-size together where the model batches them) into
``RUN/enhance/<set>-<settings>/`` (--out DIR): ``audio/``, ``figures/``, ``per_file.csv`` (input and output
SI-SDR, PESQ WB and NB, ESTOI and their improvements) and ``summary.json`` (by SNR and by noise type).  An
interrupted run continues where it stopped when started again; a folder holding other settings is refused unless
--overwrite.  Ends with a table per SNR: input -> output (improvement).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lightdvae.cli import non_negative_int, positive_int


def _read(path: str, what: str):
    """A file as a mono 16 kHz float waveform, and what was done to it; one-line errors."""
    from lightdvae.audio import SAMPLE_RATE, AudioError, read_audio, resample, to_mono
    from lightdvae.errors import EnhanceError

    if not Path(path).is_file():
        raise EnhanceError(
            f"{what} {path} does not exist" if not Path(path).exists() else f"{what} {path} is not a file"
        )
    try:
        data, rate = read_audio(path)
    except AudioError as exc:
        raise EnhanceError(f"{what} {exc}") from None
    notes = []
    if data.shape[1] > 1:
        notes.append(f"mixed {data.shape[1]} channels down")
    wave = to_mono(data)
    if rate != SAMPLE_RATE:
        if wave.size * SAMPLE_RATE < rate:
            raise EnhanceError(f"{what} {path} is too short to resample from {rate} Hz to {SAMPLE_RATE} Hz")
        wave = resample(wave, rate, SAMPLE_RATE)
        notes.append(f"resampled {rate} Hz -> {SAMPLE_RATE} Hz")
    return wave, notes


_SET_ONLY = ("max_files", "batch_size", "workers", "no_audio", "overwrite", "figures")


def _check_mode(args) -> None:
    """Exactly one of a noisy file or --data, and the options of that mode; one-line errors."""
    from lightdvae.errors import EnhanceError

    if args.noisy and args.data:
        raise EnhanceError("give either a noisy file or --data SPEC, not both")
    if not args.noisy and not args.data:
        raise EnhanceError(
            "nothing to enhance: give a noisy file (RUN noisy.wav --out clean.wav) or a set (RUN --data noisy:DIR)"
        )
    if args.noisy:
        used = [f"--{o.replace('_', '-')}" for o in _SET_ONLY if getattr(args, o) not in (None, False)]
        if used:
            raise EnhanceError(f"{', '.join(used)} only apply with --data SPEC (a noisy set)")
        if not args.out:
            raise EnhanceError("--out FILE is required with a noisy file: where to write the enhanced speech")
    elif args.clean:
        raise EnhanceError("--clean is for a single noisy file; a noisy set has its clean references")


def _settings(args):
    """The EM's settings, built once from the flags given (the others: :class:`EnhanceSettings`' defaults) and
    checked there: a bad value is one line naming it."""
    from lightdvae.enhance import EnhanceSettings

    given = {name: getattr(args, name) for name in EnhanceSettings.names() if getattr(args, name) is not None}
    return EnhanceSettings(**given)


def _run_set(args, settings) -> int:
    from lightdvae.enhance import enhance_set
    from lightdvae.runtime import thread_scope

    with thread_scope(args.threads):
        enhance_set(
            args.run,
            args.data,
            settings,
            out=args.out,
            which=args.checkpoint,
            device=args.device,
            max_files=args.max_files,
            batch_size=args.batch_size or 16,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=False if args.quiet else None,
            figures=2 if args.figures is None else args.figures,
            save_audio=not args.no_audio,
            quiet=args.quiet,
        )
    return 0


def run(args) -> int:
    _check_mode(args)
    settings = _settings(args)
    if args.data:
        return _run_set(args, settings)
    from lightdvae.audio import save_audio
    from lightdvae.enhance import enhance
    from lightdvae.errors import EnhanceError
    from lightdvae.metrics import si_sdr
    from lightdvae.runs import open_run
    from lightdvae.runtime import resolve_device, thread_scope

    noisy, notes = _read(args.noisy, "noisy file")
    clean = _read(args.clean, "clean file")[0] if args.clean else None
    device = resolve_device(args.device, EnhanceError)
    opened = open_run(args.run, which=args.checkpoint, device=device, error=EnhanceError)
    with thread_scope(args.threads):
        result = enhance(opened.model, noisy, settings)
    path = save_audio(args.out, result.waveform)
    line = f"{args.noisy} -> {path} with {opened.label}: {result.summary()}"
    if clean is not None:
        n = min(clean.size, noisy.size)
        line += f"; SI-SDR {si_sdr(clean[:n], noisy[:n]):.2f} dB -> {si_sdr(clean[:n], result.waveform[:n]):.2f} dB"
    if notes:
        line += f" ({', '.join(notes)})"
    print(line)
    return 0


def _defaults():
    from lightdvae.enhance.settings import EnhanceSettings

    return EnhanceSettings()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance",
        help="unsupervised speech enhancement of a noisy file with a trained DVAE as the speech prior",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder, imported checkpoint folder, or pretrained:NAME")
    p.add_argument("noisy", metavar="NOISY", nargs="?", help="the noisy recording (wav/flac)")
    p.add_argument("--data", metavar="SPEC", help="a noisy set to enhance: noisy:DIR, vbd:DIR or wsj0-qut:DIR")
    p.add_argument(
        "--out", metavar="PATH", help="the enhanced file (one file), or the results folder (--data; has a default)"
    )
    # the EM's options: parsed as numbers here, checked (and defaulted) in one place, EnhanceSettings
    d = _defaults()
    p.add_argument("--iterations", type=int, metavar="N", help=f"EM iterations ({d.iterations})")
    p.add_argument("--rank", type=int, metavar="K", help=f"rank of the noise NMF ({d.rank})")
    p.add_argument(
        "--lr",
        type=float,
        help="Adam learning rate of the E-step (the prior's: 1e-3, 1e-4 for HiT/LigHT-DVAE; 0.1 with --latent-e-step)",
    )
    p.add_argument("--beta", type=float, help=f"KL weight of the E-step ({d.beta:g})")
    p.add_argument("--e-steps", type=int, metavar="N", help=f"Adam steps of the E-step per EM iteration ({d.e_steps})")
    p.add_argument(
        "--latent-e-step",
        action="store_true",
        default=None,
        help="the E-step moves each frame's posterior (started from the encoder's), not the encoder's weights; "
        "lr 0.1 unless --lr",
    )
    p.add_argument(
        "--speech-past",
        metavar="{own,estimate}",
        help=f"with --latent-e-step, what SRNN's and HiT/LigHT-DVAE's decoders see as past speech: their own "
        f"predictions, or the EM's estimate of the clean speech (no frame-by-frame loop) ({d.speech_past})",
    )
    p.add_argument("--samples", type=int, metavar="R", help=f"z samples in the final filter ({d.samples})")
    p.add_argument("--seed", type=int, help=f"random seed ({d.seed})")
    p.add_argument("--max-seconds", type=float, metavar="S", help="stop the EM after S seconds (no limit)")
    p.add_argument("--clean", metavar="FILE", help="the clean reference: print the SI-SDR of input and output")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=positive_int, metavar="N", help="torch threads on the CPU")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint (best)")
    s = p.add_argument_group("noisy set (--data)")
    s.add_argument("--max-files", type=positive_int, metavar="N", help="only the first N files of the set")
    s.add_argument("--batch-size", type=positive_int, metavar="B", help="utterances enhanced together (16)")
    s.add_argument("--workers", type=non_negative_int, metavar="N", help="metric worker processes (CPUs / 4)")
    s.add_argument("--figures", type=non_negative_int, metavar="N", help="spectrogram figures of the first N files (2)")
    s.add_argument("--no-audio", action="store_true", help="do not write the enhanced wavs")
    s.add_argument("--overwrite", action="store_true", help="replace the results of other settings in the folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no closing table")
    p.set_defaults(func=run)

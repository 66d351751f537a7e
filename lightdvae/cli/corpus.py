"""``lightdvae corpus``: build the built-in espeak-ng corpus, inspect corpora, precompute the spectrogram cache.

    lightdvae corpus build OUT [--minutes 30] [--train-minutes M] [--noise-floor DB] [--voices V ...]
                               [--speakers N] [--seed 0] [--workers N] [--force]
    lightdvae corpus voices [--all] [--json]
    lightdvae corpus info SPEC [--json]
    lightdvae corpus cache SPEC [--cache-dir DIR] [--workers N]
    lightdvae corpus noisy OUT [--speech builtin] [--snr -5,0,5,10] [--noises white,pink,...] [--noise DIR]
                               [--files N] [--seed 0] [--design full|balanced] [--force]

SPEC is what the training command accepts: ``builtin``, a folder, ``wsj0:DIR``, ``vb:DIR``; ``info`` also describes
a noisy test set: ``noisy:DIR``, ``vbd:DIR``, ``wsj0-qut:DIR``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from lightdvae.cli import positive_int


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")


def _build(args) -> int:
    from lightdvae.data.builtin import build_corpus
    from lightdvae.data.corpora import BUILTIN_MARKER

    _setup_logging(args.quiet)
    t0 = time.perf_counter()
    voices = None
    if args.voices:
        voices = [v for item in args.voices for v in item.split(",") if v.strip()]
    corpus = build_corpus(
        args.out,
        minutes=args.minutes,
        voices=voices,
        speakers=args.speakers,
        seed=args.seed,
        train_minutes=args.train_minutes,
        noise_floor_db=args.noise_floor,
        workers=args.workers,
        force=args.force,
        progress=False if args.quiet else None,
    )
    info = json.loads((corpus.root / BUILTIN_MARKER).read_text())
    if not args.quiet:
        print(corpus.describe())
        print(
            f"  {info['total_seconds'] / 60:.1f} min of speech, {len(info['speakers'])} speakers, "
            f"{info['sentences']} sentences, espeak-ng {info['espeak_ng']}; {time.perf_counter() - t0:.1f} s"
        )
    return 0


def _voices(args) -> int:
    from lightdvae.data.builtin import candidate_voices, distinct_voices

    _setup_logging(True)
    candidates = args.voices or candidate_voices()
    kept, rejected = distinct_voices(candidates, workers=args.workers)
    if args.json:
        print(json.dumps({"distinct": [p.voice for p in kept], "rejected": rejected}, indent=2))
        return 0
    print(f"{len(kept)} distinct voices of {len(candidates)} candidates")
    print("  " + " ".join(p.voice for p in kept))
    if args.all:
        for v, why in rejected.items():
            print(f"  left out {v}: {why}")
    return 0


def _info(args) -> int:
    from lightdvae.data import resolve_corpus
    from lightdvae.data.noisy import is_noisy_spec, read_noisy_set

    if is_noisy_spec(args.spec):
        noisy = read_noisy_set(args.spec)
        print(json.dumps(noisy.to_dict(), indent=2) if args.json else noisy.describe())
        return 0
    corpus = resolve_corpus(args.spec, build=False)
    settings = _builtin_settings(corpus)
    if args.json:
        out = {
            "name": corpus.name,
            "layout": corpus.layout,
            "root": str(corpus.root),
            "splits": {s: {"files": len(f), "speakers": len({a.speaker for a in f})} for s, f in corpus.splits.items()},
            "notes": corpus.notes,
        }
        if settings is not None:
            out["settings"] = settings
        print(json.dumps(out, indent=2))
    else:
        print(corpus.describe())
        if settings is not None:
            from lightdvae.data.builtin.build import describe_settings

            print(f"  built with {describe_settings(settings)}")
    return 0


def _builtin_settings(corpus) -> dict | None:
    """The build options recorded in a built-in corpus's ``corpus.json`` (None for other layouts or none recorded)."""
    from lightdvae.data.builtin.settings import recorded_settings
    from lightdvae.data.corpora import BUILTIN_MARKER

    if corpus.layout != "builtin":
        return None
    return recorded_settings(corpus.root / BUILTIN_MARKER) or None


def _cache(args) -> int:
    from lightdvae.data import SpectrogramCache, resolve_corpus

    _setup_logging(args.quiet)
    corpus = resolve_corpus(args.spec, progress=False if args.quiet else None)
    cache = SpectrogramCache(args.cache_dir)
    for split, files in corpus.splits.items():
        if not files:
            continue
        _, report = cache.ensure(
            [f.path for f in files], workers=args.workers, desc=split, progress=False if args.quiet else None
        )
        print(f"{split}: {report.summary()}")
    print(f"cache: {cache.dir}")
    return 0


def _noisy(args) -> int:
    from lightdvae.data.noisy import build_noisy_set

    _setup_logging(args.quiet)
    report = build_noisy_set(
        args.out,
        speech=args.speech,
        snrs=args.snr,
        noises=args.noises,
        noise_dir=args.noise,
        files=args.files,
        seed=args.seed,
        design=args.design,
        split=args.split,
        force=args.force,
        progress=False if args.quiet else None,
    )
    if report.already_complete:
        print(f"{report.root} already holds this noisy set ({report.files} files); nothing to do")
    elif not args.quiet:
        snrs = ", ".join(f"{s:g}" for s in report.snrs)
        print(
            f"noisy set at {report.root}: {report.files} files ({report.written} written), SNRs {snrs} dB, "
            f"noises {', '.join(report.noises)}; {report.seconds:.1f} s"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser("corpus", help="build the built-in espeak-ng corpus; inspect and cache corpora")
    csub = p.add_subparsers(dest="corpus_command", metavar="ACTION")
    csub.required = True

    b = csub.add_parser("build", help="synthesise the built-in corpus with espeak-ng into OUT")
    b.add_argument("out", metavar="OUT", help="output folder (new, empty, or a corpus built before)")
    b.add_argument("--minutes", type=float, default=30.0, help="minutes of speech in all splits (default 30)")
    b.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        metavar="M",
        help="minutes of training speech, more than the training share of --minutes: the validation and test "
        "splits stay those of --minutes (same test set), the training split gains speakers and files",
    )
    b.add_argument(
        "--noise-floor",
        type=float,
        default=None,
        metavar="DB",
        help="add a white noise floor DB dB below the files' peak to every file (e.g. -70; default none: espeak-ng's "
        "pauses stay digital silence, where the Itakura-Saito loss has no minimum)",
    )
    b.add_argument(
        "--voices",
        nargs="+",
        metavar="VOICE",
        help="espeak-ng voices, one speaker each (e.g. en+f2 en-us+m1 en-gb-scotland+m3 en-029+f4); "
        "default: a seeded choice from a pool of accents x variants. Each is checked to sound distinct",
    )
    b.add_argument("--speakers", type=int, default=None, help="number of speakers (default: about 10 files each)")
    b.add_argument("--seed", type=int, default=0, help="seed of voices, pitches, speeds, splits (default 0)")
    b.add_argument("--workers", type=int, default=None, help="parallel espeak-ng processes (default min(4, cores))")
    b.add_argument("--force", action="store_true", help="replace a corpus already built in OUT")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    b.set_defaults(func=_build)

    v = csub.add_parser("voices", help="list the espeak-ng voices that really sound different")
    v.add_argument("voices", nargs="*", metavar="VOICE", help="voices to check (default: the built-in pool)")
    v.add_argument("--all", action="store_true", help="also list the voices left out and why")
    v.add_argument("--json", action="store_true", help="print as JSON")
    v.add_argument("--workers", type=int, default=None)
    v.set_defaults(func=_voices)

    i = csub.add_parser("info", help="describe a corpus (files and speakers per split) or a noisy test set")
    i.add_argument("spec", metavar="SPEC", help="builtin, a folder, wsj0:DIR, vb:DIR; noisy:DIR, vbd:DIR, wsj0-qut:DIR")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.set_defaults(func=_info)

    c = csub.add_parser("cache", help="compute the spectrogram cache of a corpus ahead of training")
    c.add_argument("spec", metavar="SPEC", help="builtin, a folder, wsj0:DIR or vb:DIR")
    c.add_argument(
        "--cache-dir", default=None, help="cache folder (default $LIGHTDVAE_CACHE or ~/.cache/lightdvae/spectrograms)"
    )
    c.add_argument("--workers", type=int, default=None, help="threads (default min(4, cores))")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cache)
    _register_noisy(csub)


def _register_noisy(csub) -> None:
    n = csub.add_parser("noisy", help="mix a corpus's test split with noises at exact SNRs (a noisy test set)")
    n.add_argument("out", metavar="OUT", help="output folder (new, empty, or a noisy set made before)")
    n.add_argument("--speech", default="builtin", help="corpus whose test split is mixed (default builtin)")
    n.add_argument(
        "--snr", default="-5,0,5,10", help="SNRs in dB, comma-separated, each in -20..40 (default -5,0,5,10)"
    )
    n.add_argument(
        "--noises",
        default=None,
        help="generated noises, comma-separated: white, pink, brown, ssn, babble, modulated, engine "
        "(default: all of them, or none with --noise)",
    )
    n.add_argument("--noise", metavar="DIR", default=None, help="a folder of your own noise files (wav/flac)")
    n.add_argument("--files", type=positive_int, default=None, help="mix only N test utterances (a seeded choice)")
    n.add_argument("--seed", type=int, default=0, help="seed of the noises, offsets and file choice (default 0)")
    n.add_argument(
        "--design",
        choices=("full", "balanced"),
        default="full",
        help="full: every utterance at every SNR with every noise (default); balanced: each utterance once",
    )
    n.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split mixed: test (a test set; default) or val (a development set to choose EM options on)",
    )
    n.add_argument("--force", action="store_true", help="replace a noisy set made with other options in OUT")
    n.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    n.set_defaults(func=_noisy)
    # `--snr -5,0,5,10` starts with "-": argparse takes it for an option unless it is one number; no option of
    # this command starts with "-<digit>", so every such word is a value (checked by parse_snrs)
    n._negative_number_matcher = re.compile(r"^-\d")


if __name__ == "__main__":  # pragma: no cover
    from lightdvae.cli import main

    sys.exit(main(["corpus", *sys.argv[1:]]))

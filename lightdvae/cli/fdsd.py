"""``lightdvae fdsd``: the Fréchet DeepSpeech Distance and its feature network.

    lightdvae fdsd score REAL_DIR FAKE_DIR [--draws 10] [--sample-size N] [--features ds2-builtin] [--floor] [--json]
    lightdvae fdsd train --data builtin[:DIR] --out FILE [--epochs 40] [--minutes 30] [--device cpu] [--seed 0]
    lightdvae fdsd per --data builtin[:DIR] [--split test] [--features ds2-builtin|ds2:FILE]
    lightdvae fdsd list

``--features`` names a registered feature network (``lightdvae fdsd list``), ``ds2:FILE`` (weights written by
``lightdvae fdsd train``) or ``module:factory`` (a Python callable returning a feature extractor).
"""

from __future__ import annotations

import json
import shlex
import sys


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(int(n))


def _extractor(args):
    from lightdvae.cli import UserError
    from lightdvae.fdsd import get_extractor

    try:
        return get_extractor(args.features, device=args.device)
    except (KeyError, ValueError, FileNotFoundError, ImportError) as exc:
        raise UserError(str(exc).strip("'\"")) from None


def _score(args) -> int:
    from lightdvae.cli import UserError
    from lightdvae.fdsd import fdsd, fdsd_floor, load_waves

    _threads(args.threads)
    extractor = _extractor(args)
    sets = {}
    for label, folder in (("real", args.real), ("fake", args.fake)):
        try:
            waves, skipped = load_waves(folder, return_skipped=True)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise UserError(str(exc)) from None
        if len(waves) < 2:
            raise UserError(f"{folder}: need at least 2 usable audio files for FDSD, found {len(waves)}")
        if skipped and not args.json:
            print(f"{label}: skipped {len(skipped)} unusable file(s), e.g. {skipped[0]}", file=sys.stderr)
        sets[label] = waves
    size = args.sample_size
    if size is None and args.floor:  # one sample size for the score and its floors, so that they compare
        size = min(len(sets["real"]) // 2, len(sets["fake"]))
    try:
        result = fdsd(
            sets["real"],
            sets["fake"],
            extractor,
            draws=args.draws,
            sample_size=size,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        floors = (
            fdsd_floor(
                sets["real"],
                extractor,
                draws=args.draws,
                sample_size=size,
                seed=args.seed,
                batch_size=args.batch_size,
                device=args.device,
            )
            if args.floor
            else {}
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        out = {"fdsd": result.to_dict(), "real": args.real, "fake": args.fake}
        out.update({f"floor_{k}": v.to_dict() for k, v in floors.items()})
        print(json.dumps(out, indent=2))
        return 0
    print(f"features: {extractor.description}")
    print(f"FDSD  {result}")
    for key, r in floors.items():
        print(f"floor {key:<11} {r}")
    return 0


def _train(args) -> int:
    from lightdvae.fdsd.train import train_ds2

    argv = ["lightdvae", "fdsd", "train", "--data", args.data, "--out", args.out, "--epochs", str(args.epochs)]
    argv += ["--seed", str(args.seed), "--device", args.device, "--batch-size", str(args.batch_size)]
    argv += ["--lr", str(args.lr)]
    if not args.sortagrad:
        argv += ["--no-sortagrad"]
    if args.minutes is not None:
        argv += ["--minutes", str(args.minutes)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    config = {}
    for key in ("rnn_hidden", "rnn_layers", "fc_dim", "n_mels", "time_stride"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
            argv += [f"--{key.replace('_', '-')}", str(value)]
    train_ds2(
        args.data,
        args.out,
        epochs=args.epochs,
        minutes=args.minutes,
        device=args.device,
        seed=args.seed,
        threads=args.threads,
        batch_size=args.batch_size,
        lr=args.lr,
        sortagrad=args.sortagrad,
        config=config,
        command=shlex.join(argv),
        name=args.name,
        log=None if args.quiet else (lambda msg: print(msg, flush=True)),
    )
    return 0


def _per(args) -> int:
    from lightdvae.cli import UserError
    from lightdvae.fdsd import DS2Extractor
    from lightdvae.fdsd.network import phoneme_error_rate
    from lightdvae.fdsd.train import load_corpus_utterances, recognize

    _threads(args.threads)
    extractor = _extractor(args)
    if not isinstance(extractor, DS2Extractor):
        raise UserError(f"{args.features!r} is not a lightdvae DS2 network; `fdsd per` needs its phoneme head")
    _, rows, _ = load_corpus_utterances(args.data, minutes=args.minutes)
    refs, hyps = recognize(extractor.model, rows[args.split], batch_size=args.batch_size, device=args.device)
    per = phoneme_error_rate(hyps, refs)
    print(f"{extractor.name} on {args.data} {args.split}: PER {100 * per:.1f} % over {len(refs)} utterances")
    return 0


def _list(args) -> int:
    from lightdvae.fdsd import list_extractors

    for name, description in list_extractors().items():
        print(f"{name:<16} {description}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("fdsd", help="Fréchet DeepSpeech Distance between folders of wavs; train its feature network")
    fsub = p.add_subparsers(dest="fdsd_command", metavar="ACTION")
    fsub.required = True

    def features_option(q):
        q.add_argument(
            "--features",
            default="ds2-builtin",
            help="feature network: a registered name (see `lightdvae fdsd list`), ds2:FILE (weights from "
            "`lightdvae fdsd train`) or module:factory (default ds2-builtin, shipped with the package)",
        )
        q.add_argument("--device", default="cpu", help="torch device (default cpu)")
        q.add_argument("--batch-size", type=int, default=16, help="utterances per forward pass (default 16)")
        q.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    s = fsub.add_parser("score", help="FDSD between two folders of audio files (mean ± std over draws)")
    s.add_argument("real", metavar="REAL_DIR", help="folder of real audio (wav/flac, recursive)")
    s.add_argument("fake", metavar="FAKE_DIR", help="folder of generated audio")
    s.add_argument("--draws", type=int, default=10, help="repeated draws of equal-sized subsets (default 10)")
    s.add_argument(
        "--sample-size",
        type=int,
        default=None,
        help="files per set per draw (default: the smaller folder's count; with --floor, half the real folder)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    s.add_argument(
        "--floor",
        action="store_true",
        help="also report the real-vs-real floors: two disjoint halves of REAL_DIR, and real vs its Griffin-Lim "
        "resynthesis",
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    features_option(s)
    s.set_defaults(func=_score)

    t = fsub.add_parser("train", help="train the DeepSpeech2-style feature network with CTC on a built-in corpus")
    t.add_argument("--data", default="builtin", help="builtin or builtin:DIR (needs phoneme transcripts)")
    t.add_argument("--out", required=True, metavar="FILE", help="weights file to write (.pt; a .json sidecar too)")
    t.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    t.add_argument("--minutes", type=float, default=None, help="size of the built-in corpus if it must be built")
    t.add_argument("--device", default="cpu", help="torch device (default cpu)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    t.add_argument("--batch-size", type=int, default=16, help="utterances per batch (default 16)")
    t.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    t.add_argument(
        "--no-sortagrad",
        dest="sortagrad",
        action="store_false",
        help="shuffle the first epoch too (default: shortest utterances first, DeepSpeech2's SortaGrad)",
    )
    t.add_argument("--name", default="ds2-builtin", help="name recorded in the metadata (default ds2-builtin)")
    for key in ("rnn_hidden", "rnn_layers", "fc_dim", "n_mels", "time_stride"):
        t.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None, help="network size override")
    t.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    t.set_defaults(func=_train)

    e = fsub.add_parser("per", help="phoneme error rate of a DS2 feature network on a built-in corpus split")
    e.add_argument("--data", default="builtin", help="builtin or builtin:DIR")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--minutes", type=float, default=None, help="size of the built-in corpus if it must be built")
    features_option(e)
    e.set_defaults(func=_per)

    li = fsub.add_parser("list", help="list the registered feature networks")
    li.set_defaults(func=_list)


if __name__ == "__main__":  # pragma: no cover
    from lightdvae.cli import main

    sys.exit(main(["fdsd", *sys.argv[1:]]))

"""``lightdvae report``: the paper's tables (analysis-resynthesis, GEN/GT structure study, FDSD) and what the
demo's report shows beside them (training, the paper's findings, generation, the w exchange, cost) as Markdown.

    lightdvae report RUN_DIR... [--out report.md] [--title TEXT] [--no-figures] [--read-only]

Reads, under the given folders, the run folders (config.json, log.csv, status.json) and the results of
``lightdvae eval`` (summary.json), ``generate`` (generation.json, fdsd.json), ``swap-w`` (swap_w.json) and the
cost.json of ``demo`` / ``reproduce``.  A missing piece gets one line with the command that makes it; the w
exchange of a HiT/LigHT-DVAE run without one is computed (two test utterances of its corpus, into
RUN_DIR/swap_w/) unless --read-only.  Without --out the report goes to stdout; with it, figures are written to
figures/ next to it.
"""

from __future__ import annotations

import argparse
import sys


def run(args) -> int:
    from lightdvae.report import write_report

    text = write_report(args.paths, args.out, title=args.title, figures=not args.no_figures, compute=not args.read_only)
    if args.out:
        print(f"report written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="gather evaluation results into the paper's tables (Markdown)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run directories (or folders holding them, or JSONs)")
    p.add_argument("--out", metavar="FILE", help="write the report here (default: stdout)")
    p.add_argument("--title", default="lightdvae results", help="first heading of the report")
    p.add_argument("--no-figures", action="store_true", help="do not draw figures (with --out)")
    p.add_argument(
        "--read-only",
        action="store_true",
        help="compute nothing: a HiT/LigHT-DVAE run without a w exchange gets the swap-w command instead",
    )
    p.set_defaults(func=run)

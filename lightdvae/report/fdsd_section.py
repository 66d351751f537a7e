"""The FDSD section: one table per corpus and split, naming the feature network, with the real-vs-real floors."""

from __future__ import annotations

from lightdvae.models import parse_label
from lightdvae.report.tables import model_sort_key, num, table

__all__ = ["fdsd_section", "fdsd_model"]

_FLOOR_NAMES = {"exact_phase": "real vs real (exact phase)", "griffin_lim": "real vs real (Griffin-Lim)"}


def fdsd_section(fdsds: list[dict]) -> list[str]:
    """``## FDSD (generation)`` and a table per corpus and split (or a line saying no FDSD results were found)."""
    lines = ["## FDSD (generation)", ""]
    if not fdsds:
        return lines + [
            '_No FDSD results found: no JSON file with `"kind": "lightdvae-fdsd"` under the given folders._',
            "",
        ]
    groups: dict[tuple, list[dict]] = {}
    for f in fdsds:
        d = f.get("dataset") or {}
        groups.setdefault((str(d.get("name", "?")), str(d.get("split", "?")), _samples(f)), []).append(f)
    sizes: dict[tuple, int] = {}
    for name, split, _ in groups:
        sizes[name, split] = sizes.get((name, split), 0) + 1
    for (name, split, n), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        lines += _fdsd_table(name, split, items, n if sizes[name, split] > 1 else None)
    return lines


def _samples(f: dict):
    """Samples per draw of an FDSD result: FDSD is biased by the sample size, so only equal sizes compare."""
    return (f.get("fdsd") or f).get("n")


def _fdsd_table(name: str, split: str, items: list[dict], n=None) -> list[str]:
    """One table of FDSD results with the same corpus, split and (``n``, when tables differ in it) sample size,
    with the real-vs-real floors measured at that size."""
    nets = sorted({str(f.get("feature_network", "unknown feature network")) for f in items})
    size = f", **{n}** samples per draw" if n is not None else ""
    lines = [
        f"### FDSD against corpus **{name}**, **{split}** split{size}",
        "",
        "Fréchet distance between Gaussians fitted to time-averaged deep speech features of real and generated "
        "audio (Griffin-Lim), mean ± std over repeated draws; lower is better. "
        f"Feature network: {'; '.join(nets)}.",
        "",
    ]
    body, floors = [], {}
    for f in sorted(items, key=lambda f: model_sort_key({"model": fdsd_model(f)})):
        r = f.get("fdsd") or f
        cells = [
            str(fdsd_model(f).get("label", "?")),
            num(r.get("mean"), 2) + (f" ± {num(r.get('std'), 2)}" if r.get("std") is not None else ""),
            str(r.get("draws", "?")),
            str(r.get("n", "?")),
        ]
        if len(nets) > 1:
            cells.append(str(f.get("feature_network", "?")))
        body.append(cells)
        for kind, value in (f.get("floor") or {}).items():
            if isinstance(value, dict):
                floors.setdefault(kind, value)
    header = ["model", "FDSD ↓", "draws", "samples per draw"] + (["feature network"] if len(nets) > 1 else [])
    for kind, value in floors.items():
        body.append(
            [
                f"_{_FLOOR_NAMES.get(kind, kind)}_",
                num(value.get("mean"), 2) + f" ± {num(value.get('std'), 2)}",
                str(value.get("draws", "")),
                str(value.get("n", "")),
            ]
            + ([""] if len(nets) > 1 else [])
        )
    return lines + [table(header, body), ""]


def fdsd_model(f: dict) -> dict:
    """The model description of an FDSD result; a plain label (``"SRNN (TF)"``, ``"HiT-Inv-s"``) is parsed back
    into a registry name and config (:func:`lightdvae.models.parse_label`) so the rows come in the paper's order."""
    m = f.get("model")
    if isinstance(m, dict):
        return m
    return parse_label(str(m) if m is not None else "?")

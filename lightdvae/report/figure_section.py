"""The figures of a corpus and split, drawn from the examples the evaluations saved: ground truth beside each
model's resynthesis, and GEN beside GT for the models that see past speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightdvae._io import slug
from lightdvae.report.analysis import gen_gt_pairs, main_rows
from lightdvae.report.tables import row_labels

__all__ = ["figures_section"]


def _example(s: dict, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    base = Path(s["_path"]).parent
    for rel in (s.get("outputs") or {}).get("examples") or []:
        path = base / rel
        if not path.is_file():
            continue
        try:
            with np.load(path) as z:
                if str(z["name"]) == name:
                    return z["reference"], z["estimate"]
        except (OSError, ValueError, KeyError):
            continue
    return None


def _example_names(s: dict) -> list[str]:
    base = Path(s["_path"]).parent
    names = []
    for rel in (s.get("outputs") or {}).get("examples") or []:
        try:
            with np.load(base / rel) as z:
                names.append(str(z["name"]))
        except (OSError, ValueError, KeyError):
            continue
    return names


def _file_name(kind: str, key: tuple[str, str, str]) -> str:
    return f"{kind}-{slug(key[0], fill='-', keep='-_')}-{slug(key[2], fill='-', keep='-_')}.png"


def _resynthesis_figure(key, summaries: list[dict], fig_dir: Path, rel: str) -> list[str]:
    from lightdvae.figures import resynthesis_figure, save_figure

    rows = main_rows(summaries)
    labels = row_labels(rows)
    with_examples = [s for s in rows if _example_names(s)]
    if not with_examples:
        return []
    common = None
    for s in with_examples:
        names = _example_names(s)
        common = [n for n in (common if common is not None else names) if n in names]
    name = (common or _example_names(with_examples[0]))[0]
    panels, reference = [], None
    for s in with_examples:
        ex = _example(s, name)
        if ex is None:
            continue
        reference = ex[0] if reference is None else reference
        if ex[1].shape == reference.shape:
            panels.append((f"{labels[id(s)]} ({str(s.get('past', '')).upper()})", ex[1]))
    if reference is None or not panels:
        return []
    file = _file_name("resynthesis", key)
    save_figure(resynthesis_figure(reference, panels, suptitle=name), fig_dir / file)
    return [f"![ground truth and each model's resynthesis of {name}]({rel}/{file})", ""]


def _gen_vs_gt_figure(key, summaries: list[dict], fig_dir: Path, rel: str) -> list[str]:
    from lightdvae.figures import resynthesis_figure, save_figure

    both = gen_gt_pairs(summaries, past_speech_only=True)
    if not both:
        return []
    labels = row_labels([p["gen"] for p in both])
    names = [n for n in _example_names(both[0]["gen"]) if all(n in _example_names(p[k]) for p in both for k in p)]
    if not names:
        return []
    name, reference, panels = names[0], None, []
    for p in both:
        for past in ("gen", "gt"):
            ex = _example(p[past], name)
            if ex is None:
                continue
            reference = ex[0] if reference is None else reference
            panels.append((f"{labels[id(p['gen'])]} ({past.upper()})", ex[1]))
    if reference is None or not panels:
        return []
    file = _file_name("gen-vs-gt", key)
    fig = resynthesis_figure(reference, panels, ncols=3 if len(panels) % 2 == 0 else None, suptitle=name)
    save_figure(fig, fig_dir / file)
    return [f"![ground truth and the GEN and GT resyntheses of {name}]({rel}/{file})", ""]


def figures_section(key, summaries: list[dict], fig_dir: Path, rel: str) -> list[str]:
    """``### Figures`` of one corpus and split, written to ``fig_dir`` and linked as ``rel/FILE`` (nothing
    when no evaluation saved examples)."""
    lines = _resynthesis_figure(key, summaries, fig_dir, rel) + _gen_vs_gt_figure(key, summaries, fig_dir, rel)
    return ["### Figures", "", *lines] if lines else []

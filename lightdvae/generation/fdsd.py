"""FDSD of a generation against the real set, with its real-vs-real floors at the same sample size (``fdsd.json``,
the format ``lightdvae report`` reads), its short summary in the manifest and its one line on the command line.

What is fair.  The real set is every usable file of the run's corpus split (default ``test``), through the front end
(16 kHz, 30 dB trim, peak normalisation); the generated files are read back from ``wav/`` through the same front
end, exactly as ``lightdvae fdsd score REAL_DIR OUT/wav`` would.  FD is biased upwards for small sets, so numbers
are comparable only at the same sample size.  With ``R`` real files and ``n`` generated ones the reported FDSD
(``"fdsd"``) uses ``m = min(n, R // 2)`` utterances of each set per draw (``draws`` draws, mean ± std), and the
real-vs-real floors (``"floor"``: two disjoint real halves, ``exact_phase``; real against the Griffin-Lim
resynthesis of real, ``griffin_lim``) are computed at that same ``m``, so the model's row and the floor rows of the
report are apples to apples.  When ``min(n, R)`` is larger than ``m`` (the real set is smaller than ``2 n``), the
model's FDSD at ``min(n, R)`` (less biased, but with no floor at that size) is reported as well
(``"fdsd_all_real"``).  With fewer than 4 real files there is no floor and ``m = min(n, R)``.  The floors' draws
use one fixed seed (:data:`FLOOR_SEED`): they belong to the real set, are the same for every model, and are
computed once per real set and size (:mod:`lightdvae.generation.realcache`, with the real features).  Below
:data:`SMALL_SAMPLE` utterances per set a note says that the number mostly measures the sample size.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lightdvae._io import read_json, utc_now, write_json
from lightdvae.errors import GenerationError
from lightdvae.generation.common import FDSD_FILE, FDSD_KIND, FORMAT_VERSION, WAV_DIR
from lightdvae.generation.realcache import RealSetCache
from lightdvae.generation.realset import load_real, real_files

#: below this many utterances per set, FDSD says more about the sample size than about the model
SMALL_SAMPLE = 16
#: the floors' draws: a property of the real set, the same for every model and seed (so every row of a report
#: table is set against one floor, and a real set's floors are computed once: see lightdvae.generation.realcache)
FLOOR_SEED = 0

SAMPLE_SIZE_RULE = (
    "m = min(generated, real // 2) utterances of each set per draw, the floors at the same m "
    "(fdsd_all_real: min(generated, real) when larger); real and generated audio through the same front end"
)


def stats(r) -> dict:
    """An :class:`~lightdvae.fdsd.FDSDResult` in the report's form (``n``: utterances of each set per draw)."""
    return {
        "mean": r.mean,
        "std": r.std,
        "draws": r.draws,
        "n": r.sample_size,
        "values": r.values,
        "n_real": r.n_real,
        "n_fake": r.n_fake,
        "seed": r.seed,
    }


def fdsd_for(
    out: Path,
    *,
    info: dict,
    corpus,
    data_spec,
    split: str,
    names: list[str],
    manifest: dict,
    draws: int,
    features: str,
    device: torch.device,
) -> dict:
    """Compute (or reuse) ``fdsd.json``; returns the short summary that goes into the manifest (with ``"reused"``)."""
    fingerprint = manifest["fingerprint"]
    files = real_files(corpus, split, need=2)
    settings = _settings(fingerprint, corpus, split, len(files), features, draws)
    old = read_json(out / FDSD_FILE)
    if old is not None and old.get("kind") == FDSD_KIND and old.get("settings") == settings:
        return {**fdsd_summary(old), "reused": True}

    t0 = time.perf_counter()
    ext = _extractor(features, device)
    real_names, real = load_real(corpus, split)
    if len(real) < 2:
        raise GenerationError(
            f"the {split} split of corpus {corpus.name!r} has {len(real)} usable file(s); FDSD needs at least 2: "
            "pass another --data / --split, or --no-fdsd"
        )
    fake, skipped = _generated_waves(out, names)
    cache = RealSetCache(corpus.root, split, real_names, f"{ext.name}: {getattr(ext, 'description', '')}")
    scores, notes = _score(ext, real, fake, draws, fingerprint, device, cache)
    if skipped:
        notes.append(f"{len(skipped)} generated file(s) unusable (e.g. {skipped[0]})")
    label = info["model"]["label"]
    temperature = fingerprint["temperature"]
    model = {**info["model"], "label": label if temperature == 1.0 else f"{label} (temperature {temperature:g})"}
    result = {
        "kind": FDSD_KIND,
        "format": FORMAT_VERSION,
        "created": utc_now(),
        "model": model,
        "run_dir": info.get("run_dir"),
        "checkpoint": info["checkpoint"],
        "dataset": {
            "name": corpus.name,
            "split": split,
            "root": str(corpus.root),
            "layout": corpus.layout,
            "spec": data_spec,
            "files": len(real),
            "listed": len(files),
        },
        "feature_network": getattr(ext, "description", ext.name),
        "features": ext.name,
        **scores,
        "sample_size_rule": SAMPLE_SIZE_RULE,
        "generation": {
            "out": str(out),
            "n": len(names),
            "frames": manifest["frames"],
            "seconds_per_sample": manifest["seconds_per_sample"],
            "temperature": temperature,
            "seed": fingerprint["seed"],
            "griffin_lim_iters": fingerprint["griffin_lim_iters"],
        },
        "notes": notes,
        "settings": settings,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / FDSD_FILE, result)
    return fdsd_summary(result)


def _settings(fingerprint: dict, corpus, split: str, real_files: int, features: str, draws: int) -> dict:
    """What ``fdsd.json`` was computed from: the same settings reuse it."""
    return {
        "generation": fingerprint,
        "corpus": str(Path(corpus.root).resolve()),
        "split": split,
        "real_files": real_files,
        "features": str(features),
        "draws": draws,
        "seed": fingerprint["seed"],
        "griffin_lim_iters": fingerprint["griffin_lim_iters"],
    }


def _extractor(features: str, device: torch.device):
    from lightdvae.fdsd import get_extractor

    try:
        return get_extractor(features, device=str(device))
    except (KeyError, ValueError, ImportError, FileNotFoundError) as exc:
        raise GenerationError(f"FDSD feature network: {str(exc).strip(chr(39))}") from None


def _generated_waves(out: Path, names: list[str]) -> tuple[list, list[str]]:
    """The generated files through the real set's front end (as ``lightdvae fdsd score`` reads them), and the
    reasons of those skipped; :class:`GenerationError` when fewer than 2 are usable."""
    from lightdvae.audio import AudioError, load_audio

    fake, skipped = [], []
    for nm in names:
        try:
            fake.append(load_audio(out / WAV_DIR / f"{nm}.wav", log=False))
        except AudioError as exc:
            skipped.append(str(exc))
    if len(fake) < 2:
        raise GenerationError(f"only {len(fake)} generated file(s) are usable for FDSD: {'; '.join(skipped[:2])}")
    return fake, skipped


def _score(
    ext, real: list, fake: list, draws: int, fingerprint: dict, device, cache: RealSetCache
) -> tuple[dict, list[str]]:
    """``({"fdsd", ["fdsd_all_real"], ["floor"]}, notes)`` at the sample size of the module docstring; the real
    set's features and floors come from ``cache`` when it has them."""
    from lightdvae.fdsd import extract_features, fdsd_floor, fdsd_from_features

    real_feats = cache.features(lambda: extract_features(ext, real))
    fake_feats = extract_features(ext, fake)
    r_count, f_count = len(real), len(fake)
    has_floor = r_count // 2 >= 2
    m = min(f_count, r_count // 2) if has_floor else min(f_count, r_count)
    kw = dict(draws=draws, seed=fingerprint["seed"], features=ext.name, description=getattr(ext, "description", ""))
    main = fdsd_from_features(real_feats, fake_feats, sample_size=m, **kw)
    scores = {"fdsd": stats(main)}
    notes = list(main.notes)
    if min(f_count, r_count) > m:
        full = fdsd_from_features(real_feats, fake_feats, sample_size=min(f_count, r_count), **kw)
        scores["fdsd_all_real"] = stats(full)
        notes.append(
            f"the real set ({r_count}) is smaller than twice the generated set: FDSD and its floors use {m} "
            f"utterances per set (half the real set, the most the floor can use); fdsd_all_real uses {full.sample_size}"
        )
    if m < SMALL_SAMPLE:
        notes.append(
            f"FDSD at {m} utterances per set is dominated by its small-sample bias: compare it only with rows and "
            f"floors at the same size, and generate more samples (at least {SMALL_SAMPLE}) for a meaningful number"
        )
    if has_floor:
        seed, gl_iters = FLOOR_SEED, fingerprint["griffin_lim_iters"]

        def floors() -> dict:
            f = fdsd_floor(
                real, ext, draws=draws, sample_size=m, seed=seed, griffin_lim_iters=gl_iters, device=str(device)
            )
            return {"exact_phase": stats(f["halves"]), "griffin_lim": stats(f["griffin_lim"])}

        settings = {"sample_size": m, "draws": draws, "seed": seed, "griffin_lim_iters": gl_iters}
        scores["floor"] = cache.floors(settings, floors)
    else:
        notes.append(f"no real-vs-real floor: it needs 2 disjoint halves of at least 2 files ({r_count} real files)")
    return scores, notes


def fdsd_summary(result: dict) -> dict:
    """The short form of an ``fdsd.json`` that the manifest carries (mean, std, draws, n of each score)."""

    def short(d):
        return None if not d else {k: d.get(k) for k in ("mean", "std", "draws", "n")}

    floor = result.get("floor") or {}
    return {
        "path": FDSD_FILE,
        "features": result.get("features"),
        "dataset": result.get("dataset"),
        "fdsd": short(result.get("fdsd")),
        "fdsd_all_real": short(result.get("fdsd_all_real")),
        "floor": {k: short(v) for k, v in floor.items()} or None,
        "seconds": result.get("seconds"),
    }


def fdsd_line(summary: dict | None) -> str:
    """One line for the command line: ``FDSD (ds2-builtin, builtin test): 41.2 ± 1.3 (10 draws of 27 vs 27); ...``."""
    if not summary or not summary.get("fdsd"):
        return "FDSD: not computed (--no-fdsd)"
    f = summary["fdsd"]
    d = summary.get("dataset") or {}
    text = (
        f"FDSD ({summary.get('features')}, {d.get('name')} {d.get('split')}): {f['mean']:.2f} ± {f['std']:.2f} "
        f"({f['draws']} draws of {f['n']} vs {f['n']})"
    )
    floor = summary.get("floor") or {}
    if floor:
        text += (
            f"; real-vs-real floor {floor['exact_phase']['mean']:.2f} ± {floor['exact_phase']['std']:.2f}, "
            f"Griffin-Lim floor {floor['griffin_lim']['mean']:.2f} ± {floor['griffin_lim']['std']:.2f} (same size)"
        )
    full = summary.get("fdsd_all_real")
    if full:
        text += f"; {full['mean']:.2f} ± {full['std']:.2f} at {full['n']} vs {full['n']}"
    return text

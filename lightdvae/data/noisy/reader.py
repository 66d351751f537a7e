"""Reading a noisy test set: :func:`read_noisy_set` turns a spec into a :class:`NoisySet` of (noisy, clean) pairs.

Specs:

``noisy:DIR``
    A set written by ``lightdvae corpus noisy`` (``noisy.json`` + ``manifest.jsonl``: SNR and noise known per
    file).  Also, for sets made elsewhere: ``DIR/noisy/`` and ``DIR/clean/`` holding files of the same names, or
    just a folder of noisy recordings (no clean reference: enhancement without scores).
``vbd:DIR``
    VoiceBank-DEMAND's test set: ``noisy_testset_wav/`` and ``clean_testset_wav/`` (48 kHz; the ``_16k``
    folders of a downsampled copy too), found up to a few folders below DIR, paired by file name.  The noise type
    and SNR of each file come from ``log_testset.txt`` (lines ``p232_001 living 17.5``; in DIR, or in its
    ``logfiles/`` as the DataShare archive unpacks) when it is there, else they are unknown.
``wsj0-qut:DIR``
    QUT-NOISE-WSJ0 as the DVAE speech enhancement reference code (XiaoyuBIE1994/DVAE_SE) lays it out: the mixtures
    in ``DIR/test/`` (or ``DIR/noisy/``), named ``{utt}_{NOISE}_{snr}.wav`` (``440c0201_CAFE-CAFE-2_0.wav``), and
    the clean WSJ0 ``si_et_05`` files in ``DIR/clean/`` (or ``DIR/si_et_05/``, ``DIR/wsj0_si_et_05/``) as
    ``{speaker}/{utt}.wav``.  A list ``DIR/*.json`` in that code's format (``{utt: {"noisy_wav":
    "{noisy_root}/...", "clean_wav": "{clean_root}/...", "noise_type", "snr", ...}}``) is used when present;
    otherwise SNR and noise are read from the file names.

:meth:`NoisyItem.load` reads a pair at 16 kHz mono (48 kHz files resampled by the front end), neither trimmed nor
normalised, so noisy and clean stay aligned sample for sample.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightdvae._io import read_json
from lightdvae.audio import preprocess, read_audio
from lightdvae.data.corpora import list_audio_files
from lightdvae.data.corpora.layouts import find_dirs
from lightdvae.data.noisy.build import FORMAT, MANIFEST, SET_FILE
from lightdvae.data.noisy.sources import RAW
from lightdvae.errors import DataError

__all__ = ["NOISY_PREFIXES", "NoisyItem", "NoisySet", "is_noisy_spec", "read_noisy_set"]

NOISY_PREFIXES = ("noisy", "vbd", "wsj0-qut")
VBD_NOISY = ("noisy_testset_wav", "noisy_testset_wav_16k")
VBD_CLEAN = ("clean_testset_wav", "clean_testset_wav_16k")
VBD_LOG = "log_testset.txt"
QUT_NOISY = ("test", "noisy")
QUT_CLEAN = ("clean", "si_et_05", "wsj0_si_et_05")
#: ``{utt}_{NOISE}_{snr}``: the noise has no ``_``; the SNR as in ``-5``, ``+5dB``, ``2.5`` or ``+2p5dB``.
NAME_PATTERN = re.compile(
    r"^(?P<utt>.+)_(?P<noise>[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)_(?P<snr>[+-]?\d+(?:[.p]\d+)?)(?:dB)?$"
)


@dataclass(frozen=True)
class NoisyItem:
    """One noisy file and its clean reference (None when the set has none); SNR and noise when known."""

    name: str
    noisy: Path
    clean: Path | None
    snr_db: float | None = None
    noise: str | None = None
    speaker: str | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(noisy, clean or None)``: float32 ``(samples,)`` at 16 kHz, mixed down and resampled only."""
        return _read(self.noisy), (_read(self.clean) if self.clean is not None else None)


@dataclass
class NoisySet:
    """A noisy test set: its items sorted by name."""

    name: str
    root: Path
    layout: str  #: ``noisy``, ``noisy-pairs``, ``noisy-only``, ``vbd`` or ``wsj0-qut``
    items: list[NoisyItem]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def snrs(self) -> list[float]:
        return sorted({i.snr_db for i in self.items if i.snr_db is not None})

    def noises(self) -> list[str]:
        return sorted({i.noise for i in self.items if i.noise is not None})

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "layout": self.layout,
            "root": str(self.root),
            "files": len(self.items),
            "with_clean": sum(i.clean is not None for i in self.items),
            "snrs": self.snrs(),
            "noises": self.noises(),
            "notes": self.notes,
        }

    def describe(self) -> str:
        d = self.to_dict()
        snrs = ", ".join(f"{s:g}" for s in d["snrs"]) or "unknown"
        lines = [
            f"noisy set {self.name} ({self.layout}) at {self.root}",
            f"  {d['files']} noisy files, {d['with_clean']} with a clean reference",
            f"  SNRs (dB): {snrs}",
            f"  noises: {', '.join(d['noises']) or 'unknown'}",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _read(path: Path) -> np.ndarray:
    data, sr = read_audio(path)
    return preprocess(data, sr, RAW, path=path)[0]


def is_noisy_spec(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a noisy set (``noisy:``, ``vbd:``, ``wsj0-qut:``) rather than a corpus."""
    prefix, sep, _ = os.fspath(spec).strip().partition(":")
    return bool(sep) and prefix.lower() in NOISY_PREFIXES


def read_noisy_set(spec: str | os.PathLike) -> NoisySet:
    """The noisy set a spec names (see the module doc).  Raises :class:`DataError` naming what is missing."""
    text = os.fspath(spec).strip()
    prefix, sep, rest = text.partition(":")
    if not sep or prefix.lower() not in NOISY_PREFIXES:
        raise DataError(f"{text!r} is not a noisy set spec; write noisy:DIR, vbd:DIR or wsj0-qut:DIR")
    root = Path(rest.strip()).expanduser()
    if not rest.strip():
        raise DataError(f"noisy set spec {text!r} names no folder; write {prefix}:DIR")
    if not root.is_dir():
        raise DataError(f"{text}: no such folder {root}")
    root = root.resolve()
    reader = {"noisy": _noisy_set, "vbd": _vbd_set, "wsj0-qut": _qut_set}[prefix.lower()]
    found = reader(root)
    if not found.items:
        raise DataError(f"{text}: no noisy audio files found in {root}")
    found.items.sort(key=lambda i: i.name)
    return found


# --------------------------------------------------------------------------------------------------------------
# noisy:DIR
# --------------------------------------------------------------------------------------------------------------
def _noisy_set(root: Path) -> NoisySet:
    if (root / SET_FILE).is_file():
        return _built_set(root)
    if (root / "noisy").is_dir() and (root / "clean").is_dir():
        return _paired(root.name, root, "noisy-pairs", root / "noisy", root / "clean", {})
    items = [NoisyItem(p.stem, p, None) for p in list_audio_files(root)]
    return NoisySet(root.name, root, "noisy-only", items, ["no clean references: enhancement without scores"])


def _built_set(root: Path) -> NoisySet:
    info = read_json(root / SET_FILE)
    if info is None or info.get("format") != FORMAT:
        raise DataError(f"{root / SET_FILE} is not a lightdvae noisy set description; rebuild it with --force")
    if not info.get("complete"):
        raise DataError(
            f"{root} holds an unfinished noisy set; finish it by running the same `lightdvae corpus "
            "noisy` command again"
        )
    try:
        with open(root / MANIFEST, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {root / MANIFEST}: {exc}; rebuild the set with --force") from None
    items, missing = [], []
    for r in rows:
        noisy, clean = root / r["noisy"], root / r["clean"]
        if not (noisy.is_file() and clean.is_file()):
            missing.append(r["name"])
            continue
        items.append(NoisyItem(r["name"], noisy, clean, float(r["snr_db"]), r["noise"], r.get("speaker")))
    if missing:
        raise DataError(
            f"{root}: {len(missing)} file(s) of the manifest are missing (e.g. {missing[0]}.wav); "
            "rebuild the set with --force"
        )
    return NoisySet(root.name, root, "noisy", items)


def _paired(name: str, root: Path, layout: str, noisy_dir: Path, clean_dir: Path, labels: dict) -> NoisySet:
    """Noisy files paired with the clean file of the same path below ``clean_dir``; ``labels``: stem -> (noise,
    snr)."""
    items, unpaired = [], 0
    for p in list_audio_files(noisy_dir):
        clean = clean_dir / p.relative_to(noisy_dir)
        unpaired += not clean.is_file()
        noise, snr = labels.get(_vb_key(p.stem), (None, None))
        items.append(NoisyItem(p.stem, p, clean if clean.is_file() else None, snr, noise, _vb_speaker(p.stem)))
    notes = [f"{unpaired} noisy file(s) have no clean file of the same name in {clean_dir}"] if unpaired else []
    return NoisySet(name, root, layout, items, notes)


# --------------------------------------------------------------------------------------------------------------
# vbd:DIR (VoiceBank-DEMAND)
# --------------------------------------------------------------------------------------------------------------
def _vb_key(stem: str) -> str:
    return stem[: -len("_16k")] if stem.endswith("_16k") else stem


def _vb_speaker(stem: str) -> str | None:
    m = re.match(r"^(p\d+)_", stem)
    return m.group(1) if m else None


def _vb_log(root: Path) -> tuple[dict, Path | None]:
    """``{file stem: (noise, snr)}`` from VoiceBank-DEMAND's ``log_testset.txt``, and where it was found."""
    for pattern in (VBD_LOG, f"*/{VBD_LOG}", f"*/*/{VBD_LOG}"):
        for path in sorted(root.glob(pattern)):
            labels = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 3:
                    try:
                        labels[parts[0]] = (parts[1], float(parts[2]))
                    except ValueError:
                        continue
            return labels, path
    return {}, None


def _vbd_set(root: Path) -> NoisySet:
    found = find_dirs(root, set(VBD_NOISY) | set(VBD_CLEAN))
    noisy = next((found[n][0] for n in VBD_NOISY if n in found), None)
    if noisy is None:
        raise DataError(
            f"{root} is not VoiceBank-DEMAND's test set: no {VBD_NOISY[0]}/ folder (expected "
            f"{VBD_NOISY[0]}/ and {VBD_CLEAN[0]}/)"
        )
    clean = next((found[n][0] for n in VBD_CLEAN if n in found), None)
    if clean is None:
        raise DataError(
            f"{root} has {noisy.name}/ but no {VBD_CLEAN[0]}/; put the clean test folder of "
            "VoiceBank-DEMAND next to it (the scores need the clean references)"
        )
    labels, log = _vb_log(root)
    found_set = _paired("voicebank-demand", root, "vbd", noisy, clean, labels)
    if log is None:
        found_set.notes.append(f"no {VBD_LOG} found: SNR and noise type per file unknown")
    return found_set


# --------------------------------------------------------------------------------------------------------------
# wsj0-qut:DIR (QUT-NOISE-WSJ0, the DVAE_SE layout)
# --------------------------------------------------------------------------------------------------------------
def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _qut_list(root: Path) -> dict | None:
    """The DVAE_SE-style list of ``root`` (a ``*.json`` mapping utterances to ``noisy_wav`` / ``clean_wav``)."""
    for path in sorted(root.glob("*.json")):
        value = read_json(path)
        if value and all(isinstance(v, dict) and "noisy_wav" in v for v in value.values()):
            return value
    return None


def _qut_set(root: Path) -> NoisySet:
    noisy_dir, clean_dir = _first_dir(root, QUT_NOISY), _first_dir(root, QUT_CLEAN)
    if noisy_dir is None:
        raise DataError(
            f"{root} is not a QUT-NOISE-WSJ0 test set: no {' or '.join(f'{n}/' for n in QUT_NOISY)} "
            "folder of {utt}_{NOISE}_{snr}.wav mixtures"
        )
    if clean_dir is None:
        raise DataError(
            f"{root} has {noisy_dir.name}/ but no clean folder ({', '.join(f'{n}/' for n in QUT_CLEAN)}"
            "); put the clean WSJ0 si_et_05 files there as SPEAKER/UTT.wav"
        )
    listing = _qut_list(root)
    items = []
    if listing is not None:
        for e in listing.values():
            noisy = Path(e["noisy_wav"].format(noisy_root=noisy_dir))
            clean = Path(e.get("clean_wav", "").format(clean_root=clean_dir)) if e.get("clean_wav") else None
            snr = float(e["snr"]) if e.get("snr") is not None else None
            if noisy.is_file():
                items.append(
                    NoisyItem(
                        noisy.stem,
                        noisy,
                        clean if clean and clean.is_file() else None,
                        snr,
                        e.get("noise_type"),
                        e.get("p_id"),
                    )
                )
        return NoisySet("qut-wsj0", root, "wsj0-qut", items, [f"listed by {len(listing)} entries of a json list"])
    clean_by_stem = {p.stem: p for p in list_audio_files(clean_dir)}
    for p in list_audio_files(noisy_dir):
        m = NAME_PATTERN.match(p.stem)
        utt = m.group("utt") if m else p.stem
        snr = float(m.group("snr").replace("p", ".")) if m else None
        clean = clean_by_stem.get(utt)
        items.append(NoisyItem(p.stem, p, clean, snr, m.group("noise") if m else None, utt[:3] if m else None))
    return NoisySet("qut-wsj0", root, "wsj0-qut", items)

"""The corpus layouts: where each one keeps its splits, and how its files and speakers are read.

``folder`` (split sub-folders), ``lists`` (list files), ``wsj0``, ``vb`` (VoiceBank-DEMAND) and ``builtin`` (a
corpus written by ``lightdvae corpus build``, with its manifest: :func:`read_manifest` is its one reader).  Each
``*_corpus(root)`` function reads one layout and raises :class:`DataError` naming what was expected and what was
found; :mod:`lightdvae.data.corpora.discovery` picks the layout.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from lightdvae.audio import AUDIO_EXTENSIONS
from lightdvae.data.corpora.corpus import SPLITS, AudioFile, Corpus
from lightdvae.errors import DataError, DataWarning

SPLIT_ALIASES = {
    "train": ("train", "training", "tr", "trn"),
    "val": ("val", "valid", "validation", "dev", "develop", "development", "cv"),
    "test": ("test", "tst", "tt", "eval", "evaluation"),
}
LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")
WSJ0_FOLDERS = {"train": "si_tr_s", "val": "si_dt_05", "test": "si_et_05"}
WSJ0_SPHERE_EXTENSIONS = (".wv1", ".sph")  #: read only when a WSJ0 split folder has no wav/flac at all
VB_TRAIN_FOLDER = "clean_trainset_28spk_wav"
VB_TEST_FOLDER = "clean_testset_wav"
VB_VAL_SPEAKERS = ("p226", "p287")
BUILTIN_MARKER = "corpus.json"  #: written last by a finished built-in corpus build
BUILTIN_MANIFEST = "manifest.jsonl"  #: one JSON object per file of a built-in corpus
BUILD_STATE = ".lightdvae-build.json"  #: the settings of a built-in corpus build that is not finished
SEARCH_DEPTH = 5  #: how deep below the given folder the WSJ0 / VoiceBank folders are looked for

__all__ = [
    "BUILTIN_MARKER",
    "BUILTIN_MANIFEST",
    "BUILD_STATE",
    "list_audio_files",
    "find_dirs",
    "split_dirs",
    "list_files",
    "folder_corpus",
    "lists_corpus",
    "wsj0_corpus",
    "vb_corpus",
    "builtin_corpus",
    "read_manifest",
]


# --------------------------------------------------------------------------------------------------------------
# File system helpers
# --------------------------------------------------------------------------------------------------------------
def _is_audio(name: str, extensions: tuple[str, ...]) -> bool:
    return not name.startswith(".") and name.lower().endswith(extensions)


def list_audio_files(folder: str | os.PathLike, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """All audio files below ``folder`` (recursive, symlinks followed, hidden files and folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / n for n in filenames if _is_audio(n, extensions))
    return sorted(found)


def find_dirs(root: Path, names: set[str], max_depth: int = SEARCH_DEPTH) -> dict[str, list[Path]]:
    """Folders named one of ``names`` (case-insensitive) up to ``max_depth`` below ``root``; no descent into them."""
    wanted = {n.lower() for n in names}
    found: dict[str, list[Path]] = {}
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                continue
            if not is_dir:
                continue
            key = e.name.lower()
            if key in wanted:
                found.setdefault(key, []).append(Path(e.path))
            elif depth + 1 < max_depth:
                stack.append((Path(e.path), depth + 1))
    return {k: sorted(v) for k, v in found.items()}


def split_dirs(root: Path) -> dict[str, Path]:
    """The split sub-folders directly under ``root`` (by alias)."""
    try:
        children = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    except OSError:
        return {}
    out = {}
    for split, aliases in SPLIT_ALIASES.items():
        for a in aliases:
            if a in children:
                out[split] = children[a]
                break
    return out


def list_files(root: Path) -> dict[str, Path]:
    """The split list files directly under ``root``."""
    out = {}
    for split, aliases in SPLIT_ALIASES.items():
        for a in aliases:
            for suf in LIST_SUFFIXES:
                p = root / f"{a}{suf}"
                if p.is_file():
                    out[split] = p
                    break
            if split in out:
                break
    return out


_VB_SPEAKER = re.compile(r"^(p\d+)_")


def _speaker_from_path(path: Path, split_root: Path) -> str:
    """Heuristic speaker of a generic corpus file: its first folder below the split folder, else the file name's
    prefix before ``_`` or ``-`` (``p226_001.wav`` -> ``p226``)."""
    try:
        rel = path.relative_to(split_root)
    except ValueError:
        rel = Path(path.name)
    if len(rel.parts) > 1:
        return rel.parts[0]
    stem = path.stem
    m = re.match(r"^([^_\-]+)[_\-]", stem)
    return m.group(1) if m else stem


# --------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------
def _expect(root: Path, layout: str, missing: list[str], expected: str) -> DataError:
    return DataError(f"{root} is not a complete {layout} corpus: missing {', '.join(missing)}. Expected {expected}.")


def _empty_split_error(root: Path, split: str, folder: Path, extensions=AUDIO_EXTENSIONS) -> DataError:
    return DataError(
        f"the {split} split of {root} has no audio files: {folder} contains no "
        f"{'/'.join(e.lstrip('.') for e in extensions)} files"
    )


def folder_corpus(root: Path) -> Corpus:
    dirs = split_dirs(root)
    missing = [s for s in ("train", "val") if s not in dirs]
    if missing:
        raise _expect(
            root,
            "split-folder",
            [f"{s}/" for s in missing],
            "sub-folders train/, val/ and test/ (or training/, valid/, dev/, eval/ ...) holding wav/flac files",
        )
    splits, notes, absent = {}, [], {}
    for split in SPLITS:
        if split not in dirs:
            notes.append(f"no {split} folder: evaluation on the test split is unavailable")
            continue
        paths = list_audio_files(dirs[split])
        if not paths:  # usable for the other splits (a test set can be evaluated without train/ and val/)
            absent[split] = str(_empty_split_error(root, split, dirs[split]))
            notes.append(f"the {split} folder is empty")
        splits[split] = [AudioFile(p, _speaker_from_path(p, dirs[split]), split) for p in paths]
    if not any(splits.values()):
        raise _empty_split_error(root, "every", root)
    return Corpus(root.name, root, "folder", splits, notes, absent)


def files_corpus(root: Path) -> Corpus:
    """A folder of audio files without split folders: a test set (every file below ``root``); it has no training
    or validation split."""
    paths = list_audio_files(root)
    if not paths:
        raise _empty_split_error(root, "test", root)
    why = (
        f"{root} is a folder of audio files, which is a test set; to train on it, put its files in train/, val/ "
        "and test/ sub-folders"
    )
    test = [AudioFile(p, _speaker_from_path(p, root), "test") for p in paths]
    return Corpus(
        root.name,
        root,
        "files",
        {"test": test},
        ["a folder of audio files: the test split only"],
        {"train": why, "val": why},
    )


def _read_list(list_path: Path, split: str) -> tuple[list[Path], list[str]]:
    base = list_path.parent
    paths, missing = [], []
    try:
        text = list_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read the {split} list {list_path}: {exc.strerror or exc}") from None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # "id path" (Kaldi scp style) or just "path"
        candidate = line
        parts = line.split()
        if len(parts) == 2 and not (base / line).exists() and not Path(line).exists():
            candidate = parts[1]
        p = Path(candidate).expanduser()
        if not p.is_absolute():
            p = base / p
        (paths if p.is_file() else missing).append(p if p.is_file() else candidate)
    return paths, missing


def lists_corpus(root: Path) -> Corpus:
    lists = list_files(root)
    missing = [s for s in ("train", "val") if s not in lists]
    if missing:
        raise _expect(
            root,
            "file-list",
            [f"{s}.txt" for s in missing],
            "list files train.txt, val.txt and test.txt (or .lst/.list/.scp) with one audio path per line",
        )
    splits, notes = {}, []
    for split in SPLITS:
        if split not in lists:
            notes.append(f"no {split} list: evaluation on the test split is unavailable")
            continue
        paths, absent = _read_list(lists[split], split)
        if absent:
            shown = ", ".join(str(a) for a in absent[:3])
            msg = f"{len(absent)} file(s) named in {lists[split].name} do not exist (e.g. {shown})"
            if not paths:
                raise DataError(f"the {split} list {lists[split]} names no existing file: {msg}")
            warnings.warn(f"{root}: {msg}; they are left out", DataWarning, stacklevel=3)
            notes.append(msg)
        if not paths and split != "test":
            raise DataError(f"the {split} list {lists[split]} is empty")
        splits[split] = [AudioFile(p, _speaker_from_path(p, p.parent), split) for p in sorted(set(paths))]
    return Corpus(root.name, root, "lists", splits, notes)


def wsj0_corpus(root: Path, found: dict[str, list[Path]] | None = None) -> Corpus:
    found = found if found is not None else find_dirs(root, set(WSJ0_FOLDERS.values()))
    missing = [f"{name}/ ({split})" for split, name in WSJ0_FOLDERS.items() if name not in found]
    if missing:
        raise _expect(
            root,
            "WSJ0",
            missing,
            "the folders si_tr_s (train), si_dt_05 (validation) and si_et_05 (test), converted to wav or flac",
        )
    splits, notes = {}, []
    for split, name in WSJ0_FOLDERS.items():
        files = []
        for folder in found[name]:
            paths = list_audio_files(folder)
            if not paths:
                paths = list_audio_files(folder, WSJ0_SPHERE_EXTENSIONS)
                if paths:
                    notes.append(
                        f"{folder} has NIST SPHERE (.wv1) files only; compressed ones cannot be read: convert them "
                        "to wav first (e.g. `sph2pipe -f wav in.wv1 out.wav`)"
                    )
            files.extend(AudioFile(p, p.parent.name if p.parent != folder else p.stem[:3], split) for p in paths)
        if not files:
            raise _empty_split_error(root, split, found[name][0], AUDIO_EXTENSIONS + WSJ0_SPHERE_EXTENSIONS)
        splits[split] = sorted(files, key=lambda f: str(f.path))
    return Corpus("wsj0", root, "wsj0", splits, notes)


def vb_corpus(root: Path, found: dict[str, list[Path]] | None = None) -> Corpus:
    found = found if found is not None else find_dirs(root, {VB_TRAIN_FOLDER, VB_TEST_FOLDER})
    missing = [f"{name}/" for name in (VB_TRAIN_FOLDER, VB_TEST_FOLDER) if name not in found]
    if missing:
        raise _expect(
            root,
            "VoiceBank-DEMAND",
            missing,
            f"the folders {VB_TRAIN_FOLDER} (train; speakers {' and '.join(VB_VAL_SPEAKERS)} are the validation "
            f"split) and {VB_TEST_FOLDER} (test)",
        )

    def speaker(p: Path) -> str:
        m = _VB_SPEAKER.match(p.name)
        return m.group(1) if m else p.stem.split("_")[0]

    train_paths = [p for d in found[VB_TRAIN_FOLDER] for p in list_audio_files(d)]
    test_paths = [p for d in found[VB_TEST_FOLDER] for p in list_audio_files(d)]
    if not train_paths:
        raise _empty_split_error(root, "train", found[VB_TRAIN_FOLDER][0])
    if not test_paths:
        raise _empty_split_error(root, "test", found[VB_TEST_FOLDER][0])
    splits: dict[str, list[AudioFile]] = {"train": [], "val": [], "test": []}
    for p in sorted(train_paths):
        spk = speaker(p)
        split = "val" if spk in VB_VAL_SPEAKERS else "train"
        splits[split].append(AudioFile(p, spk, split))
    splits["test"] = [AudioFile(p, speaker(p), "test") for p in sorted(test_paths)]
    if not splits["val"]:
        raise DataError(
            f"{found[VB_TRAIN_FOLDER][0]} has no files of the validation speakers {', '.join(VB_VAL_SPEAKERS)} "
            "(named p226_*.wav, p287_*.wav)"
        )
    if not splits["train"]:
        raise DataError(f"{found[VB_TRAIN_FOLDER][0]} has only validation speakers, no training speakers")
    return Corpus("voicebank", root, "vb", splits, [])


def _manifest_rows(manifest: Path) -> list[dict]:
    """The JSON objects of a manifest, one per non-blank line (OSError / ValueError for a bad file)."""
    with open(manifest, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """The rows of ``root/manifest.jsonl`` (see :mod:`lightdvae.data.builtin` for the fields), with ``path`` added
    (absolute)."""
    root = Path(root)
    manifest = root / BUILTIN_MANIFEST
    if not manifest.is_file():
        raise DataError(f"{manifest} not found; is {root} a corpus built by `lightdvae corpus build`?")
    rows = _manifest_rows(manifest)
    for row in rows:
        row["path"] = str(root / row["file"])
    return rows


def builtin_corpus(root: Path) -> Corpus:
    """A corpus written by ``lightdvae corpus build``: its files, speakers and transcripts from the manifest."""
    manifest = root / BUILTIN_MANIFEST
    if not (root / BUILTIN_MARKER).is_file() or not manifest.is_file():
        raise DataError(
            f"{root} is not a finished built-in corpus ({BUILTIN_MARKER} or {BUILTIN_MANIFEST} missing); "
            f"build it with `lightdvae corpus build {root}`"
        )
    splits: dict[str, list[AudioFile]] = {s: [] for s in SPLITS}
    absent = []
    try:
        rows = _manifest_rows(manifest)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {manifest}: {exc}; rebuild with `lightdvae corpus build {root} --force`"
        ) from None
    for row in rows:
        p = root / row["file"]
        if not p.is_file():
            absent.append(row["file"])
            continue
        split = row["split"]
        if split not in splits:
            continue
        splits[split].append(AudioFile(p, row["speaker"], split, row.get("text"), row.get("phonemes")))
    notes = []
    if absent:
        msg = f"{len(absent)} file(s) of the manifest are missing (e.g. {', '.join(absent[:3])})"
        warnings.warn(f"{root}: {msg}; rebuild with `lightdvae corpus build {root}`", DataWarning, stacklevel=3)
        notes.append(msg)
    for s in ("train", "val"):
        if not splits[s]:
            raise DataError(f"the built-in corpus at {root} has no {s} files; rebuild it with --force")
    return Corpus(
        "builtin", root, "builtin", {k: sorted(v, key=lambda f: str(f.path)) for k, v in splits.items()}, notes
    )

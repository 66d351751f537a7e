"""Finding the audio files of a corpus and its train / val / test split (SPEC section 3).

Layouts recognised (``layout=`` of :func:`discover`, or the prefix of a spec string for :func:`resolve_corpus`):

``folder``
    A folder with split sub-folders ``train/``, ``val/`` and ``test/`` (also ``training``, ``valid``,
    ``validation``, ``dev``, ``eval``, ...), each searched recursively for ``.wav`` / ``.flac``.
``lists``
    A folder with list files ``train.txt``, ``val.txt``, ``test.txt`` (or ``.lst``, ``.list``, ``.scp``): one audio
    path per line, relative to the list's folder or absolute; ``#`` starts a comment.
``wsj0``
    WSJ0: ``si_tr_s`` (train), ``si_dt_05`` (validation), ``si_et_05`` (test), found anywhere up to a few folders
    deep (the LDC discs nest them, e.g. ``csr_1/11-1.1/wsj0/si_tr_s``); the speaker is the sub-folder name.
``vb``
    VoiceBank-DEMAND: ``clean_trainset_28spk_wav`` (speakers p226 and p287 are the validation split, the other
    26 train) and ``clean_testset_wav`` (test).  The 48 kHz files are resampled on loading.
``builtin``
    A corpus written by ``lightdvae corpus build``: split folders plus ``manifest.jsonl`` (speaker, text and
    phoneme transcript of every file) and ``corpus.json``.

The test split may be missing from a ``folder`` or ``lists`` corpus (training still works; evaluation raises a
clear error); train and validation are required.  Every problem is a :class:`DataError` naming what was
expected and what was found.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lightdvae.audio import AUDIO_EXTENSIONS
from lightdvae.cli import UserError

SPLITS = ("train", "val", "test")
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
BUILTIN_MARKER = "corpus.json"
BUILTIN_MANIFEST = "manifest.jsonl"
LAYOUTS = ("auto", "folder", "lists", "wsj0", "vb", "builtin")
SEARCH_DEPTH = 5  #: how deep below the given folder the WSJ0 / VoiceBank folders are looked for

__all__ = [
    "DataError",
    "DataWarning",
    "AudioFile",
    "Corpus",
    "SPLITS",
    "discover",
    "resolve_corpus",
    "data_root",
    "builtin_corpus_dir",
    "default_cache_dir",
    "list_audio_files",
]


class DataError(UserError):
    """A problem with the data the user pointed at (missing or incomplete folders, nothing usable, ...).

    A subclass of :class:`lightdvae.cli.UserError`, so every ``lightdvae`` command prints it as one line.
    """


class DataWarning(UserWarning):
    """Files were skipped (unreadable, silent, too short, ...): the message counts them by reason."""


# --------------------------------------------------------------------------------------------------------------
# Where things live
# --------------------------------------------------------------------------------------------------------------
def data_root() -> Path:
    """Root of lightdvae's data: ``$LIGHTDVAE_DATA``, else ``$XDG_CACHE_HOME/lightdvae``, else
    ``~/.cache/lightdvae``."""
    env = os.environ.get("LIGHTDVAE_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lightdvae"


def builtin_corpus_dir() -> Path:
    """Where ``resolve_corpus("builtin")`` keeps the built-in corpus: ``data_root() / "corpus"``."""
    return data_root() / "corpus"


def default_cache_dir() -> Path:
    """Spectrogram cache: ``$LIGHTDVAE_CACHE``, else ``data_root() / "spectrograms"``."""
    env = os.environ.get("LIGHTDVAE_CACHE", "").strip()
    return Path(env).expanduser() if env else data_root() / "spectrograms"


# --------------------------------------------------------------------------------------------------------------
# Corpus description
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFile:
    """One utterance of a corpus.  ``text`` and ``phonemes`` are known for the built-in corpus only."""

    path: Path
    speaker: str
    split: str
    text: str | None = None
    phonemes: str | None = None

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass
class Corpus:
    """A corpus: its files per split.  ``splits[name]`` is a list of :class:`AudioFile` sorted by path."""

    name: str
    root: Path
    layout: str
    splits: dict[str, list[AudioFile]]
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[AudioFile]:
        """The files of split ``name`` ("train", "val" or "test"); a :class:`DataError` when it has none."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        files = self.splits.get(name) or []
        if not files:
            raise DataError(f"corpus {self.name!r} ({self.root}) has no {name} files")
        return files

    def paths(self, name: str) -> list[Path]:
        return [f.path for f in self.split(name)]

    def has(self, name: str) -> bool:
        return bool(self.splits.get(name))

    def speakers(self, name: str | None = None) -> list[str]:
        names = [name] if name else list(self.splits)
        return sorted({f.speaker for n in names for f in self.splits.get(n, [])})

    def describe(self) -> str:
        lines = [f"corpus {self.name} ({self.layout}) at {self.root}"]
        for s in SPLITS:
            files = self.splits.get(s) or []
            lines.append(f"  {s:<5} {len(files):6d} files, {len({f.speaker for f in files}):4d} speakers")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self.splits.get(s) or [])}" for s in SPLITS)
        return f"Corpus(name={self.name!r}, layout={self.layout!r}, root={str(self.root)!r}, {counts})"


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


def _find_dirs(root: Path, names: set[str], max_depth: int = SEARCH_DEPTH) -> dict[str, list[Path]]:
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


def _split_dirs(root: Path) -> dict[str, Path]:
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


def _list_files(root: Path) -> dict[str, Path]:
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


def _folder_corpus(root: Path) -> Corpus:
    dirs = _split_dirs(root)
    missing = [s for s in ("train", "val") if s not in dirs]
    if missing:
        raise _expect(
            root,
            "split-folder",
            [f"{s}/" for s in missing],
            "sub-folders train/, val/ and test/ (or training/, valid/, dev/, eval/ ...) holding wav/flac files",
        )
    splits, notes = {}, []
    for split in SPLITS:
        if split not in dirs:
            notes.append(f"no {split} folder: evaluation on the test split is unavailable")
            continue
        paths = list_audio_files(dirs[split])
        if not paths and split != "test":
            raise _empty_split_error(root, split, dirs[split])
        splits[split] = [AudioFile(p, _speaker_from_path(p, dirs[split]), split) for p in paths]
    return Corpus(root.name, root, "folder", splits, notes)


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


def _lists_corpus(root: Path) -> Corpus:
    lists = _list_files(root)
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


def _wsj0_corpus(root: Path, found: dict[str, list[Path]] | None = None) -> Corpus:
    found = found if found is not None else _find_dirs(root, set(WSJ0_FOLDERS.values()))
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


def _vb_corpus(root: Path, found: dict[str, list[Path]] | None = None) -> Corpus:
    found = found if found is not None else _find_dirs(root, {VB_TRAIN_FOLDER, VB_TEST_FOLDER})
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


def _builtin_corpus(root: Path) -> Corpus:
    manifest = root / BUILTIN_MANIFEST
    if not (root / BUILTIN_MARKER).is_file() or not manifest.is_file():
        raise DataError(
            f"{root} is not a finished built-in corpus ({BUILTIN_MARKER} or {BUILTIN_MANIFEST} missing); "
            f"build it with `lightdvae corpus build {root}`"
        )
    splits: dict[str, list[AudioFile]] = {s: [] for s in SPLITS}
    absent = []
    try:
        with open(manifest, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
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


def _check_disjoint(corpus: Corpus) -> None:
    """The built-in corpus promises speaker-disjoint splits; say so loudly if a hand-edited one breaks that."""
    if corpus.layout != "builtin":
        return  # WSJ0 and VoiceBank are disjoint by construction; a generic folder's speakers are only guessed
    first_split: dict[str, str] = {}
    shared = set()
    for split in SPLITS:
        for spk in {f.speaker for f in corpus.splits.get(split) or []}:
            if first_split.setdefault(spk, split) != split:
                shared.add(spk)
    if shared:
        names = ", ".join(sorted(shared))
        corpus.notes.append(f"speakers shared between splits: {names}")
        warnings.warn(f"{corpus.root}: splits are not speaker-disjoint ({names})", DataWarning, stacklevel=3)


def discover(root: str | os.PathLike, layout: str = "auto") -> Corpus:
    """Find the files of the corpus at ``root`` and its train / val / test split.

    Args:
        root: the corpus folder.
        layout: one of ``auto`` (detect), ``folder``, ``lists``, ``wsj0``, ``vb``, ``builtin`` (see the module doc).
    Returns:
        a :class:`Corpus`.
    Raises:
        DataError: the folder does not exist, is not a folder, is empty, or the layout is incomplete; the message
        names the folders (or list files) that were expected.
    """
    if layout not in LAYOUTS:
        raise DataError(f"unknown corpus layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"corpus folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"corpus path {root} is not a folder")
    root = root.resolve()
    if layout == "folder":
        corpus = _folder_corpus(root)
    elif layout == "lists":
        corpus = _lists_corpus(root)
    elif layout == "wsj0":
        corpus = _wsj0_corpus(root)
    elif layout == "vb":
        corpus = _vb_corpus(root)
    elif layout == "builtin":
        corpus = _builtin_corpus(root)
    else:
        corpus = _detect(root)
    _check_disjoint(corpus)
    return corpus


def _detect(root: Path) -> Corpus:
    if (root / BUILTIN_MARKER).is_file():
        return _builtin_corpus(root)
    if (root / ".lightdvae-build.json").is_file():
        raise DataError(
            f"{root} holds an unfinished built-in corpus (the build was interrupted); "
            f"finish it with `lightdvae corpus build {root}` (the same options resume it)"
        )
    dirs = _split_dirs(root)
    if "train" in dirs or "val" in dirs:
        return _folder_corpus(root)
    lists = _list_files(root)
    if "train" in lists or "val" in lists:
        return _lists_corpus(root)
    found = _find_dirs(root, set(WSJ0_FOLDERS.values()) | {VB_TRAIN_FOLDER, VB_TEST_FOLDER})
    if any(name in found for name in WSJ0_FOLDERS.values()):
        return _wsj0_corpus(root, found)
    if VB_TRAIN_FOLDER in found or VB_TEST_FOLDER in found:
        return _vb_corpus(root, found)
    try:
        has_anything = any(not p.name.startswith(".") for p in root.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {root}: {exc.strerror or exc}") from None
    if not has_anything:
        raise DataError(f"corpus folder {root} is empty")
    n_audio = len(list_audio_files(root))
    what = f"{n_audio} wav/flac files but no split" if n_audio else "no wav/flac files"
    raise DataError(
        f"cannot tell the layout of {root} ({what}). Expected one of: sub-folders train/, val/, test/; list files "
        f"train.txt, val.txt, test.txt; WSJ0 folders {', '.join(WSJ0_FOLDERS.values())}; VoiceBank-DEMAND folders "
        f"{VB_TRAIN_FOLDER} and {VB_TEST_FOLDER}; or a corpus built by `lightdvae corpus build`"
    )


# --------------------------------------------------------------------------------------------------------------
# Spec strings
# --------------------------------------------------------------------------------------------------------------
_PREFIXES = {"wsj0": "wsj0", "vb": "vb", "voicebank": "vb", "folder": "folder", "lists": "lists", "builtin": "builtin"}


def resolve_corpus(
    spec: str | os.PathLike | Corpus,
    *,
    build: bool = True,
    minutes: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Corpus:
    """Turn what a user typed into a :class:`Corpus`; what the training and evaluation commands call.

    Accepted specs:

    * ``"builtin"``: the built-in espeak-ng corpus in :func:`builtin_corpus_dir` (``$LIGHTDVAE_DATA/corpus``,
      default ``~/.cache/lightdvae/corpus``).  Built there on first use when ``build`` is true (``minutes`` of
      speech, 30 by default; needs espeak-ng), resumed when an earlier build was interrupted, reused otherwise.
      Concurrent callers (several DDP ranks) wait for one build through a lock file.
    * ``"builtin:DIR"``: a built-in corpus built elsewhere with ``lightdvae corpus build DIR``.
    * ``"wsj0:DIR"``, ``"vb:DIR"`` (or ``voicebank:``), ``"folder:DIR"``, ``"lists:DIR"``: that layout at DIR.
    * ``"DIR"``: layout detected (see :func:`discover`).
    * A :class:`Corpus` is returned unchanged.

    Raises:
        DataError: unknown or incomplete corpus, or espeak-ng missing when the built-in corpus must be built.
    """
    if isinstance(spec, Corpus):
        return spec
    text = os.fspath(spec).strip()
    if not text:
        raise DataError("empty corpus spec; give 'builtin', a folder, or wsj0:DIR / vb:DIR")
    prefix, sep, rest = text.partition(":")
    layout = _PREFIXES.get(prefix.lower()) if sep else None
    if text.lower() == "builtin":
        return _resolve_builtin(builtin_corpus_dir(), build=build, minutes=minutes, seed=seed, progress=progress)
    if layout is None:  # a plain path (possibly with a colon in it)
        return discover(text, "auto")
    if not rest.strip():
        raise DataError(f"corpus spec {text!r} names no folder; write {prefix}:DIR")
    if layout == "builtin":
        return discover(rest.strip(), "builtin")
    return discover(rest.strip(), layout)


def _resolve_builtin(root: Path, *, build: bool, minutes: float | None, seed: int, progress: bool | None) -> Corpus:
    if (root / BUILTIN_MARKER).is_file():
        return discover(root, "builtin")
    if not build:
        raise DataError(
            f"the built-in corpus is not built yet at {root}; build it with `lightdvae corpus build {root}`"
        )
    from lightdvae.data.builtin import build_corpus

    root.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(root.parent / f".{root.name}.lock"):
        if (root / BUILTIN_MARKER).is_file():  # another process built it while we waited
            return discover(root, "builtin")
        kwargs = {"seed": seed, "progress": progress}
        if minutes is not None:
            kwargs["minutes"] = minutes
        if (root / ".lightdvae-build.json").is_file():  # resume an interrupted build with its own settings
            kwargs = {"resume": True, "progress": progress}
        return build_corpus(root, **kwargs)


class _FileLock:
    """An exclusive ``flock`` on a lock file (no-op where fcntl is unavailable)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        return False

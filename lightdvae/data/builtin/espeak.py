"""espeak-ng, wrapped: finding the executable (:func:`espeak_path`, :class:`EspeakNotFound` with the install
command), speaking a sentence at 16 kHz (:func:`synthesize`) and its phoneme transcript (:func:`transcribe`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lightdvae.audio import SAMPLE_RATE, resample, save_audio
from lightdvae.errors import DataError

ESPEAK_INSTALL = "sudo apt-get install espeak-ng"
ESPEAK_INSTALL_HINT = (
    f"install it with `{ESPEAK_INSTALL}` (Debian/Ubuntu), `dnf install espeak-ng` (Fedora) or "
    "`brew install espeak-ng` (macOS), or set LIGHTDVAE_ESPEAK to the espeak-ng executable"
)
PEAK = 0.9  #: peak level of the written files

__all__ = [
    "ESPEAK_INSTALL",
    "ESPEAK_INSTALL_HINT",
    "PEAK",
    "EspeakNotFound",
    "espeak_path",
    "espeak_version",
    "synthesize",
    "transcribe",
]


class EspeakNotFound(DataError):
    """espeak-ng is not installed (or LIGHTDVAE_ESPEAK points nowhere)."""


# --------------------------------------------------------------------------------------------------------------
# espeak-ng
# --------------------------------------------------------------------------------------------------------------
def espeak_path() -> str:
    """The espeak-ng executable (``$LIGHTDVAE_ESPEAK`` or ``espeak-ng`` on PATH); raises :class:`EspeakNotFound`
    with the install command when there is none."""
    env = os.environ.get("LIGHTDVAE_ESPEAK", "").strip()
    if env:
        found = shutil.which(env)
        if not found:
            raise EspeakNotFound(f"LIGHTDVAE_ESPEAK={env!r} is not an executable; {ESPEAK_INSTALL_HINT}")
        return found
    found = shutil.which("espeak-ng")
    if not found:
        raise EspeakNotFound(
            f"the built-in corpus is synthesised with espeak-ng, which is not installed; {ESPEAK_INSTALL_HINT}"
        )
    return found


def espeak_version() -> str:
    """``espeak-ng --version``'s version number, e.g. ``"1.51"``."""
    out = subprocess.run([espeak_path(), "--version"], capture_output=True, text=True, timeout=30).stdout
    parts = out.split()
    for i, word in enumerate(parts):
        if word == "NG" and i + 1 < len(parts) and "speech:" in parts[i + 1]:
            return parts[i + 2] if i + 2 < len(parts) else out.strip()
    for word in parts:
        if word[:1].isdigit():
            return word
    return out.strip()


def _espeak(args: list[str], text: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [espeak_path(), *args, "--stdin"], input=text, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"espeak-ng did not finish within {timeout:.0f} s (args {' '.join(args)})") from None


def _parse_phonemes(stdout: str) -> tuple[str, list[list[str]]]:
    """``--sep=" "`` output -> (plain ``-x`` transcript, tokens per word).  Words are separated by two spaces."""
    words: list[list[str]] = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        for word in line.split("  "):
            tokens = [t for t in word.split(" ") if t]
            if tokens:
                words.append(tokens)
    plain = " ".join("".join(w) for w in words)
    return plain, words


def synthesize(
    text: str,
    voice: str,
    out_wav: str | os.PathLike | None = None,
    *,
    pitch: int | None = None,
    speed: int | None = None,
) -> tuple[np.ndarray, str, list[list[str]]]:
    """Speak ``text`` with espeak-ng.

    Returns ``(wave, phonemes, phoneme_tokens)``: ``wave`` is ``(samples,)`` float32 at 16 kHz (peak
    :data:`PEAK`), also written to ``out_wav`` (16-bit PCM, atomically) when given.  Raises :class:`DataError`
    when espeak-ng fails (unknown voice, ...).
    """
    import soundfile as sf

    args = ["-v", voice, "-x", "--sep= "]
    if pitch is not None:
        args += ["-p", str(int(pitch))]
    if speed is not None:
        args += ["-s", str(int(speed))]
    with tempfile.TemporaryDirectory(prefix="lightdvae-espeak-") as tmp:
        raw = Path(tmp) / "raw.wav"
        proc = _espeak([*args, "-w", str(raw)], text)
        if proc.returncode != 0 or not raw.is_file():
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise DataError(f"espeak-ng failed for voice {voice!r}: {msg[-1] if msg else f'exit {proc.returncode}'}")
        data, sr = sf.read(str(raw), dtype="float32", always_2d=True)
    wave = resample(data.mean(axis=1), sr, SAMPLE_RATE)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak <= 0:
        raise DataError(f"espeak-ng produced silence for voice {voice!r} and text {text[:40]!r}")
    wave = (wave * (PEAK / peak)).astype(np.float32)
    if out_wav is not None:
        save_audio(out_wav, wave, SAMPLE_RATE)
    plain, tokens = _parse_phonemes(proc.stdout)
    return wave, plain, tokens


def transcribe(text: str, voice: str) -> tuple[str, list[list[str]]]:
    """Phoneme transcript of ``text`` in ``voice``'s accent (``espeak-ng -q -x``), plain and per-word tokens."""
    proc = _espeak(["-v", voice, "-q", "-x", "--sep= "], text)
    if proc.returncode != 0:
        raise DataError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.strip()}")
    return _parse_phonemes(proc.stdout)

"""Generation from the prior, its FDSD, and the w exchange (SPEC section 5).

Generation (:func:`generate_run`, ``lightdvae generate``): ``n`` sequences of ``frames`` frames are sampled from the
model's prior and decoded autoregressively (``model.generate``: the native sampling loops and the KV-cached
decoders), in batches of ``batch_size``; each batch then goes through Griffin-Lim (100 iterations by default, the
protocol's STFT, batched) to waveforms.  Batch ``k`` draws from its own ``torch.Generator`` seeded with
``SeedSequence([seed, k])`` (prior sampling, then Griffin-Lim's random initial phases), so a batch can be redone
alone with the same result and an interrupted generation resumes batch by batch.  Each waveform is scaled to a
peak of 0.95 (the level of a generated sample is arbitrary; the real data are peak-normalised too) and written as
16-bit PCM.

Output folder (default ``RUN_DIR/generate/<which>-n<N>-f<F>-t<temperature>-s<seed>``)::

    wav/sample_000.wav ...       the n generated waveforms, 16 kHz, (frames - 1) * 256 samples each
    spectrograms/sample_000.npy  the model's power spectrograms (variances) of the first ``figures`` samples
    generation.png               those spectrograms on one colour scale (time in s, frequency in kHz)
    real_vs_generated.png        real utterances of the corpus split (cut to ``frames``) above generated ones
    generation.json              manifest, kind "lightdvae-generation": model, checkpoint digest, settings, seconds
                                 of audio, timings (prior sampling, Griffin-Lim), versions, the FDSD summary
    fdsd.json                    with ``fdsd=True``: kind "lightdvae-fdsd", the format ``lightdvae report`` reads
    state.json                   what the folder holds (fingerprint) and the batches done, with their timings

A folder whose fingerprint (checkpoint weights, n, frames, temperature, seed, batch size, Griffin-Lim iterations,
device type) matches is reused: finished batches are not redone, and a finished generation is returned as it is
(FDSD is computed again only when its settings changed).  A folder holding another generation is refused unless
``overwrite`` (which deletes only the files listed above).

FDSD, and what is fair.  The real set is every usable file of the run's corpus split (default ``test``), through
the front end (16 kHz, 30 dB trim, peak normalisation); the generated files are read back from ``wav/`` through
the same front end, exactly as ``lightdvae fdsd score REAL_DIR OUT/wav`` would.  FD is biased upwards for small
sets, so numbers are comparable only at the same sample size.  With ``R`` real files and ``n`` generated ones the
reported FDSD (``"fdsd"``) uses ``m = min(n, R // 2)`` utterances of each set per draw (``draws`` draws, mean ±
std), and the real-vs-real floors (``"floor"``: two disjoint real halves, ``exact_phase``; real against the
Griffin-Lim resynthesis of real, ``griffin_lim``) are computed at that same ``m``, so the model's row and the floor
rows of the report are apples to apples.  When ``min(n, R)`` is larger than ``m`` (the real set is smaller than
``2 n``), the model's FDSD at ``min(n, R)`` (less biased, but with no floor at that size) is reported as well
(``"fdsd_all_real"``).  With fewer than 4 real files there is no floor and ``m = min(n, R)``.

w exchange (:func:`swap_w`, ``lightdvae swap-w``; :func:`exchange_w` on tensors): for the models with a
sequence-level latent w (HiT-DVAE, LigHT-DVAE and their Inv-s / Inv-s-NR variants), two utterances are encoded
(posterior means: ``w = E[q(w | s)]``, then ``z = E[q(z | s, w)]`` with the utterance's own w), and each is decoded
with its own z and the other's w, and, for reference, with its own w, which is exactly
``model.resynthesize(power, past)``.  ``past="gen"`` (default, the paper's main setting) feeds the decoder its own
past outputs; ``"gt"`` the true past of the utterance whose z is decoded.  Waveforms are resynthesised with the
phase of that utterance's STFT (same length), optionally also with Griffin-Lim.

The quantitative check in ``swap_w.json`` says whether w carries global (speaker) traits: each output's waveform is
encoded again by the w encoder (``w' = E[q(w | output)]``), and ``w_transfer = d(w', w_source) / (d(w', w_source) +
d(w', w_donor))`` (Euclidean distances of posterior means) is 0 when the output keeps its source's w and 1 when it
has the donor's; and the long-term average spectra (mean power per bin over the utterance, in dB, overall level
removed) are compared: ``ltas_db_to_donor`` / ``ltas_db_to_source`` are RMS differences in dB over the 513 bins.
The own-w resyntheses give the floor of both measures (re-encoding and reconstruction error).
"""

from __future__ import annotations

import io
import json
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lightdvae._io import atomic_write_bytes, atomic_write_text, sha256_file, utc_now
from lightdvae.audio import GRIFFIN_LIM_ITERS, HOP, SAMPLE_RATE
from lightdvae.cli import UserError

logger = logging.getLogger("lightdvae.generation")

GENERATION_KIND = "lightdvae-generation"
SWAP_KIND = "lightdvae-swap-w"
FDSD_KIND = "lightdvae-fdsd"  #: what ``lightdvae report`` looks for (see :mod:`lightdvae.report`)
FORMAT_VERSION = 1
MANIFEST = "generation.json"
FDSD_FILE = "fdsd.json"
STATE = "state.json"
SWAP_FILE = "swap_w.json"
WAV_DIR = "wav"
SPEC_DIR = "spectrograms"
GENERATION_FIGURE = "generation.png"
COMPARISON_FIGURE = "real_vs_generated.png"
SWAP_FIGURE = "swap_w.png"

DEFAULT_N = 100
DEFAULT_FRAMES = 200  #: 3.2 s, about the length of a built-in corpus test utterance (1.5 to 4.6 s, mean 2.7 s)
DEFAULT_BATCH = 32
DEFAULT_FIGURES = 8
DEFAULT_DRAWS = 10
MAX_N = 100_000
MIN_FRAMES = 2  #: a waveform needs (frames - 1) * 256 > 0 samples
MAX_FRAMES = 100_000  #: 26.7 min per sample
PEAK = 0.95  #: peak level of the written generated waveforms
COMPARISON_PANELS = 4  #: real and generated spectrograms per row of the comparison figure
W_MODELS = ("hit-dvae", "light-dvae")

__all__ = [
    "GenerationError",
    "generate_run",
    "generate_model",
    "default_out_dir",
    "swap_w",
    "exchange_w",
    "read_manifest",
    "fdsd_line",
    "GENERATION_KIND",
    "SWAP_KIND",
]


class GenerationError(UserError):
    """A generation or w exchange that cannot run as asked: one line from ``lightdvae generate`` / ``swap-w``."""


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------
def _write_json(path: Path, value) -> Path:
    from lightdvae.evaluate import _jsonable

    return atomic_write_text(path, json.dumps(_jsonable(value), indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _versions(device: torch.device) -> dict:
    import lightdvae
    from lightdvae import _ext

    return {
        "lightdvae": lightdvae.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "backend": _ext.backend(),
        "native_extension": bool(_ext.HAS_NATIVE),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of batch ``index``: seeded from ``SeedSequence([seed, index])`` (independent streams)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    value = (int(state[0]) << 31) ^ int(state[1])  # 63 bits
    return torch.Generator(device=device).manual_seed(value)


def _load(run_dir, which: str, device) -> tuple:
    """``(model, checkpoint path, run meta, torch device, model description)`` with one-line errors."""
    from lightdvae.evaluate import _load_model, _resolve_device, _run_meta, _training_mode, model_label

    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise GenerationError(f"which must be 'best' or 'last', got {which!r}")
    dev = _resolve_device(device)
    model, ckpt = _load_model(run_dir, which, dev)
    meta = _run_meta(run_dir)
    name = meta.get("model") or getattr(model, "name", type(model).__name__)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    info = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint": {"which": which, "path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)},
        "model": {
            "name": name,
            "label": model_label(name, config, _training_mode(meta)),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": _training_mode(meta),
        },
    }
    return model, meta, dev, info


def _corpus_spec(meta: dict, data, run_dir: Path, hint: str):
    if data is not None:
        return data
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    recorded = (meta.get("data") or {}).get("spec") if isinstance(meta.get("data"), dict) else None
    spec = recorded or training.get("data")
    if not spec or str(spec).startswith("<"):
        raise GenerationError(f"{run_dir} does not record the corpus it was trained on; pass --data SPEC{hint}")
    return spec


def _resolve_corpus(spec, hint: str):
    from lightdvae.data import DataError, resolve_corpus

    try:
        return resolve_corpus(spec, build=False)
    except DataError as exc:
        raise GenerationError(f"{exc}{hint}") from None


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._") or "x"


def _progress_bar(total: int, initial: int, desc: str, progress: bool | None):
    import sys

    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=disable, dynamic_ncols=True, leave=False)


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GenerationError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise GenerationError(f"{name} must be {bound}, got {value}")
    return value


def _figure(make: Callable, path: Path, notes: list[str]) -> str | None:
    """Draw and save one figure; a missing matplotlib or a drawing error is a note, never a failed run."""
    try:
        from lightdvae.figures import save_figure

        save_figure(make(), path)
    except ImportError:
        notes.append(f"{path.name} left out: matplotlib is not installed (pip install matplotlib)")
        return None
    except Exception as exc:  # a figure is not worth the run
        logger.warning("no figure %s: %s: %s", path.name, type(exc).__name__, exc)
        notes.append(f"{path.name} left out: {type(exc).__name__}: {exc}")
        return None
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------
def default_out_dir(run_dir, n: int, frames: int, temperature: float = 1.0, seed: int = 0, which: str = "best"):
    """``RUN_DIR/generate/<which>-n<N>-f<F>-t<temperature>-s<seed>``."""
    return Path(run_dir) / "generate" / f"{which}-n{int(n)}-f{int(frames)}-t{float(temperature):g}-s{int(seed)}"


def read_manifest(path) -> dict:
    """A ``generation.json`` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    value = _read_json(path)
    if value is None or value.get("kind") != GENERATION_KIND:
        raise GenerationError(f"{path} is not a generation manifest")
    return value


def _sample_name(i: int, n: int) -> str:
    return f"sample_{i:0{max(3, len(str(n - 1)))}d}"


def _clear_outputs(out: Path) -> None:
    for name in (MANIFEST, FDSD_FILE, STATE):
        (out / name).unlink(missing_ok=True)
    for name in (GENERATION_FIGURE, COMPARISON_FIGURE):
        (out / name).unlink(missing_ok=True)
    for sub in (WAV_DIR, SPEC_DIR):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)


def _check_state(out: Path, fingerprint: dict, overwrite: bool) -> dict:
    """The state to continue from (``{"fingerprint", "batches": {index: timings}, "sessions", "finished"}``);
    refuses a folder holding another generation (or files of an unknown one) unless ``overwrite``."""
    state = _read_json(out / STATE)
    old = None
    if state is not None:
        old = state.get("fingerprint")
    elif (out / STATE).is_file() or (out / MANIFEST).is_file() or (out / WAV_DIR).is_dir():
        old = {"unknown": True}
    if overwrite:
        _clear_outputs(out)
        old, state = None, None
    elif old is not None and old != fingerprint:
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        what = ", ".join("checkpoint weights" if k == "checkpoint_sha256" else k for k in diff)
        raise GenerationError(
            f"{out} holds another generation (differs in: {what}); pass --overwrite to replace it, "
            "or --out DIR to keep both"
        )
    if state is None:
        state = {"fingerprint": fingerprint}
    state.setdefault("batches", {})
    state.setdefault("sessions", 0)
    state.setdefault("finished", False)
    return state


def generate_run(
    run_dir,
    n: int = DEFAULT_N,
    frames: int = DEFAULT_FRAMES,
    out=None,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    which: str = "best",
    device: str | torch.device | None = "auto",
    batch_size: int = DEFAULT_BATCH,
    griffin_lim_iters: int | None = None,
    figures: int = DEFAULT_FIGURES,
    fdsd: bool = True,
    data=None,
    split: str = "test",
    fdsd_draws: int = DEFAULT_DRAWS,
    features: str = "ds2-builtin",
    overwrite: bool = False,
    threads: int | None = None,
    quiet: bool = True,
    progress: bool | None = None,
) -> dict:
    """Sample ``n`` utterances of ``frames`` frames from the prior of the model in ``run_dir`` and write them,
    figures, a manifest and (``fdsd``) their FDSD against the run's corpus split; see the module docstring.

    Args:
        run_dir: a run directory (``config.json`` + ``checkpoints/<which>.pt``).
        n: number of samples (1 .. 100000; at least 2 with ``fdsd``).
        frames: frames per sample (2 .. 100000); a sample has ``(frames - 1) * 256`` samples at 16 kHz.
        out: output folder (default :func:`default_out_dir`).
        temperature: scales the prior's standard deviations (1: the model's prior; 0: the prior means).
        seed: seeds the sampling, Griffin-Lim's initial phases and the FDSD draws.
        which: checkpoint, ``"best"`` or ``"last"``.
        device: ``"auto"`` (the GPU when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: samples generated (and Griffin-Lim'ed) together; part of the fingerprint (a batch has its own
            random stream).
        griffin_lim_iters: Griffin-Lim iterations (default 100, the protocol's); the floor uses the same.
        figures: spectrograms of the first ``figures`` samples go into ``generation.png``.
        fdsd: compute FDSD against the corpus split and write ``fdsd.json``.
        data: corpus spec of the real set (default: the corpus the run was trained on).
        split: which split is the real set (``"test"``).
        fdsd_draws: repeated draws of FDSD (mean ± std).
        features: the FDSD feature network (``"ds2-builtin"``, ``"ds2:FILE"``, ``"module:factory"``).
        overwrite: replace another generation found in ``out``.
        threads: torch threads during this call (default: as they are).  The autoregressive decoding is many small
            ops: on a busy CPU one thread is often faster, and far steadier, than several.
        quiet: no messages on stdout.  progress: progress bar (None: on a terminal).
    Returns:
        the manifest (also in ``generation.json``), with ``"fdsd"`` (the FDSD summary or None) and, not written to
        the file, ``"out"`` (the folder), ``"reused"`` (True when a finished generation was found and reused) and
        ``["fdsd"]["reused"]`` (True when ``fdsd.json`` with the same settings was found and reused).
    Raises:
        GenerationError and the package's other :class:`~lightdvae.cli.UserError`: missing run or checkpoint, an
        option out of range, a corpus that is missing or has fewer than 2 usable files in the split, a folder
        holding another generation.
    """
    n = _check_int(n, "n", 1, MAX_N)
    frames = _check_int(frames, "frames", MIN_FRAMES, MAX_FRAMES)
    seed = _check_int(seed, "seed", 0)
    batch_size = _check_int(batch_size, "batch_size", 1)
    figures = _check_int(figures, "figures", 0)
    griffin_lim_iters = _check_int(
        GRIFFIN_LIM_ITERS if griffin_lim_iters is None else griffin_lim_iters, "griffin_lim_iters", 0
    )
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        raise GenerationError(f"temperature must be a number, got {temperature!r}") from None
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"temperature must be a finite number >= 0, got {temperature}")
    if split not in ("train", "val", "test"):
        raise GenerationError(f"split must be train, val or test, got {split!r}")
    if threads is not None:
        threads = _check_int(threads, "threads", 1)
    if fdsd:
        fdsd_draws = _check_int(fdsd_draws, "fdsd_draws", 1)
        if n < 2:
            raise GenerationError("FDSD needs at least 2 generated samples: pass --n 2 or more, or --no-fdsd")

    run_dir = Path(run_dir)
    model, meta, dev, info = _load(run_dir, which, device)
    corpus = spec = None
    if fdsd:  # fail before the long part
        spec = _corpus_spec(meta, data, run_dir, ", or --no-fdsd to skip FDSD")
        corpus = _resolve_corpus(spec, " (build it with `lightdvae corpus build`), or pass --no-fdsd to skip FDSD")
        _real_files(corpus, split, need=2)
    else:  # only for the figure of real beside generated spectrograms: no corpus, no figure
        try:
            spec = _corpus_spec(meta, data, run_dir, "")
            corpus = _resolve_corpus(spec, "")
            corpus.split(split)
        except UserError as exc:
            logger.info("no real-vs-generated figure: %s", exc)
            corpus = None
    out = Path(out) if out is not None else default_out_dir(run_dir, n, frames, temperature, seed, which)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"output folder {out} exists and is not a folder")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return generate_model(
            model,
            out,
            n=n,
            frames=frames,
            temperature=temperature,
            seed=seed,
            batch_size=batch_size,
            griffin_lim_iters=griffin_lim_iters,
            figures=figures,
            corpus=corpus,
            data_spec=None if corpus is None else str(spec),
            split=split,
            fdsd=fdsd,
            fdsd_draws=fdsd_draws,
            features=features,
            overwrite=overwrite,
            quiet=quiet,
            progress=progress,
            info=info,
            device=dev,
        )
    finally:
        torch.set_num_threads(before)


def generate_model(
    model,
    out,
    *,
    n: int,
    frames: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    griffin_lim_iters: int = GRIFFIN_LIM_ITERS,
    figures: int = DEFAULT_FIGURES,
    corpus=None,
    data_spec: str | None = None,
    split: str = "test",
    fdsd: bool = False,
    fdsd_draws: int = DEFAULT_DRAWS,
    features: str = "ds2-builtin",
    overwrite: bool = False,
    quiet: bool = True,
    progress: bool | None = None,
    info: dict | None = None,
    device: torch.device | None = None,
) -> dict:
    """The generation behind :func:`generate_run`, for a model already in memory (eval mode).

    ``info`` (``run_dir``, ``checkpoint`` with its ``sha256``, ``model``) describes the model in the outputs; without
    it the model describes itself and its weights are hashed for the fingerprint.  ``corpus`` (a
    :class:`~lightdvae.data.Corpus` or spec) is the real set of FDSD (needed with ``fdsd``) and of the comparison
    figure (left out without it).  Other arguments as for :func:`generate_run` (not validated again here).
    """
    from lightdvae.audio import griffin_lim, save_audio

    out = Path(out)
    dev = device or next(model.parameters()).device
    info = dict(info or _describe(model))
    if corpus is not None:
        corpus = _resolve_corpus(corpus, "")
    if fdsd and corpus is None:
        raise GenerationError("FDSD needs the real set: pass a corpus (--data SPEC), or --no-fdsd")
    fingerprint = {
        "checkpoint_sha256": info["checkpoint"]["sha256"],
        "n": n,
        "frames": frames,
        "temperature": temperature,
        "seed": seed,
        "batch_size": batch_size,
        "griffin_lim_iters": griffin_lim_iters,
        "device": dev.type,
    }
    out.mkdir(parents=True, exist_ok=True)
    state = _check_state(out, fingerprint, overwrite)
    old_manifest = _read_json(out / MANIFEST)
    if old_manifest is not None and old_manifest.get("fingerprint") != fingerprint:
        old_manifest = None
    names = [_sample_name(i, n) for i in range(n)]
    batches = [(k, k * batch_size, min(n, (k + 1) * batch_size)) for k in range(math.ceil(n / batch_size))]
    n_figures = min(figures, n)

    def batch_done(k: int, lo: int, hi: int) -> bool:
        if str(k) not in state["batches"]:
            return False
        wavs = all((out / WAV_DIR / f"{names[i]}.wav").is_file() for i in range(lo, hi))
        specs = all((out / SPEC_DIR / f"{names[i]}.npy").is_file() for i in range(lo, min(hi, n_figures)))
        return wavs and specs

    todo = [(k, lo, hi) for k, lo, hi in batches if not batch_done(k, lo, hi)]
    reused = not todo and bool(state["finished"]) and old_manifest is not None
    samples = (frames - 1) * HOP
    if todo:
        if len(todo) < len(batches) and not quiet:
            print(f"resuming {out}: {len(batches) - len(todo)} of {len(batches)} batches already generated", flush=True)
        state["sessions"] += 1
        state["finished"] = False
        _write_json(out / STATE, state)
        bar = _progress_bar(len(batches), len(batches) - len(todo), f"generate {info['model']['label']}", progress)
        try:
            for k, lo, hi in todo:
                gen = _batch_generator(seed, k, dev)
                t0 = time.perf_counter()
                with torch.no_grad():
                    power = model.generate(hi - lo, frames, temperature=temperature, generator=gen)
                _sync(dev)
                t1 = time.perf_counter()
                waves = griffin_lim(power, griffin_lim_iters, length=samples, generator=gen)
                _sync(dev)
                t2 = time.perf_counter()
                waves = waves.float().cpu().numpy()
                peaks = np.abs(waves).max(axis=-1)
                for row, i in enumerate(range(lo, hi)):
                    wave = waves[row] * (PEAK / peaks[row]) if peaks[row] > 0 else waves[row]
                    save_audio(out / WAV_DIR / f"{names[i]}.wav", wave)
                    if i < n_figures:
                        buf = io.BytesIO()
                        np.save(buf, power[row].float().cpu().numpy())
                        atomic_write_bytes(out / SPEC_DIR / f"{names[i]}.npy", buf.getvalue(), fsync=False)
                state["batches"][str(k)] = {
                    "samples": hi - lo,
                    "prior_s": t1 - t0,
                    "griffin_lim_s": t2 - t1,
                    "griffin_lim_peak_min": float(peaks.min()),
                    "griffin_lim_peak_max": float(peaks.max()),
                }
                _write_json(out / STATE, state)
                bar.update(1)
        finally:
            bar.close()
        state["finished"] = True
        _write_json(out / STATE, state)
    elif not state["finished"]:  # every batch was there, the closing write was not
        state["finished"] = True
        _write_json(out / STATE, state)

    notes: list[str] = []
    drawn_before = len(((old_manifest or {}).get("outputs") or {}).get("spectrograms") or [])
    redraw = bool(todo) or drawn_before != n_figures
    figures_made = _generation_figures(out, names, n_figures, frames, temperature, info, corpus, split, notes, redraw)
    manifest = {
        "kind": GENERATION_KIND,
        "format": FORMAT_VERSION,
        "created": (old_manifest or {}).get("created") if reused else utc_now(),
        "run_dir": info.get("run_dir"),
        "checkpoint": info["checkpoint"],
        "model": info["model"],
        "n": n,
        "frames": frames,
        "samples_per_file": samples,
        "seconds_per_sample": samples / SAMPLE_RATE,
        "seconds_of_audio": n * samples / SAMPLE_RATE,
        "sample_rate": SAMPLE_RATE,
        "temperature": temperature,
        "seed": seed,
        "batch_size": batch_size,
        "griffin_lim_iters": griffin_lim_iters,
        "peak": PEAK,
        "fingerprint": fingerprint,
        "timings": _timings(state, n, samples),
        "sessions": state["sessions"],
        "outputs": {
            "wav_dir": WAV_DIR,
            "wav": [f"{WAV_DIR}/{nm}.wav" for nm in names],
            "spectrograms": [f"{SPEC_DIR}/{names[i]}.npy" for i in range(n_figures)],
            "figures": figures_made,
        },
        "notes": notes,
        "versions": (old_manifest or {}).get("versions") if reused else _versions(dev),
        "fdsd": (old_manifest or {}).get("fdsd") if reused else None,
    }
    fdsd_reused = None
    if fdsd:
        summary = _fdsd_for(
            out,
            info=info,
            corpus=corpus,
            data_spec=data_spec,
            split=split,
            names=names,
            manifest=manifest,
            draws=fdsd_draws,
            features=features,
            device=dev,
        )
        fdsd_reused = bool(summary.pop("reused", False))
        manifest["fdsd"] = summary
    if manifest["fdsd"]:
        manifest["timings"]["fdsd_s"] = manifest["fdsd"].get("seconds")
    _write_json(out / MANIFEST, manifest)
    result = {**manifest, "out": str(out), "reused": reused}
    if fdsd_reused is not None:
        result["fdsd"] = {**manifest["fdsd"], "reused": fdsd_reused}
    return result


def _generation_figures(
    out: Path,
    names: list[str],
    n_figures: int,
    frames: int,
    temperature: float,
    info: dict,
    corpus,
    split: str,
    notes: list[str],
    redraw: bool,
) -> dict:
    """``generation.png`` (the first samples' spectrograms) and ``real_vs_generated.png`` (with a corpus), each
    drawn when missing or ``redraw``.  Returns ``{kind: file name}`` of those present."""
    label = info["model"]["label"]
    spectra = [np.load(out / SPEC_DIR / f"{names[i]}.npy") for i in range(n_figures)]
    grid_path, compare_path = out / GENERATION_FIGURE, out / COMPARISON_FIGURE
    if not spectra:  # --figures 0: none of this generation's figures
        grid_path.unlink(missing_ok=True)
        compare_path.unlink(missing_ok=True)
    if spectra and (redraw or not grid_path.is_file()):

        def make_grid():
            from lightdvae.figures import spectrogram_grid

            panels = [(f"sample {i}", s) for i, s in enumerate(spectra)]
            title = f"{label}: samples from the prior (temperature {temperature:g})"
            return spectrogram_grid(panels, ncols=min(4, len(panels)), suptitle=title)

        _figure(make_grid, grid_path, notes)
    if corpus is not None and spectra and (redraw or not compare_path.is_file()):
        real_names, real_waves = _load_real(corpus, split, pick=COMPARISON_PANELS)
        if real_waves:

            def make_comparison():
                from lightdvae.audio import power_spectrogram
                from lightdvae.figures import spectrogram_grid

                real = [
                    (f"real: {Path(nm).name}", power_spectrogram(w).numpy()[:frames])
                    for nm, w in zip(real_names, real_waves, strict=True)
                ]
                fake = [(f"generated: sample {i}", s) for i, s in enumerate(spectra[:COMPARISON_PANELS])]
                title = f"corpus {corpus.name}, {split} split (at most {frames} frames), above {label} samples"
                return spectrogram_grid([real, fake], suptitle=title, share_time=False)

            _figure(make_comparison, compare_path, notes)
    made = {}
    for key, path in (("generation", grid_path), ("real_vs_generated", compare_path)):
        if path.is_file():
            made[key] = path.name
    return made


def _describe(model) -> dict:
    from lightdvae.evaluate import model_label
    from lightdvae.runs import weights_sha256

    name = getattr(model, "name", type(model).__name__)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    return {
        "run_dir": None,
        "checkpoint": {"which": None, "path": None, "sha256": weights_sha256(model)},
        "model": {
            "name": name,
            "label": model_label(name, config),
            "parameters": int(model.num_parameters()),
            "config": config,
            "training": None,
        },
    }


def _timings(state: dict, n: int, samples: int) -> dict:
    rows = list(state["batches"].values())
    prior = float(sum(r["prior_s"] for r in rows))
    gl = float(sum(r["griffin_lim_s"] for r in rows))
    audio = n * samples / SAMPLE_RATE
    return {
        "prior_sampling_s": prior,
        "prior_sampling_s_per_audio_s": prior / audio if audio else None,
        "griffin_lim_s": gl,
        "griffin_lim_s_per_audio_s": gl / audio if audio else None,
        "batches": len(rows),
        "note": "prior sampling = model.generate (latents and autoregressive decoding) per batch; summed over "
        "batches, over every session that generated them; the device is synchronised around each timed call",
    }


# ----------------------------------------------------------------------------------------------------------------
# The real set and FDSD
# ----------------------------------------------------------------------------------------------------------------
def _real_files(corpus, split: str, need: int) -> list:
    from lightdvae.data import DataError

    try:
        files = corpus.split(split)
    except DataError as exc:
        raise GenerationError(f"{exc}; pass --data SPEC or --split, or --no-fdsd") from None
    if len(files) < need:
        raise GenerationError(
            f"the {split} split of corpus {corpus.name!r} ({corpus.root}) has {len(files)} file(s); FDSD needs at "
            f"least {need} real utterances: pass another --data / --split, or --no-fdsd"
        )
    return files


def _load_real(corpus, split: str, pick: int | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Names and front-end waveforms of the split's files (``pick``: that many, evenly spaced over the sorted split,
    so that they come from several speakers); unusable files are skipped with a warning."""
    from lightdvae.audio import AudioError, load_audio

    files = corpus.split(split)
    if pick is not None:
        idx = sorted({int(round(x)) for x in np.linspace(0, len(files) - 1, min(pick, len(files)))})
        files = [files[i] for i in idx]
    names, waves = [], []
    for f in files:
        try:
            waves.append(load_audio(f.path, log=False))
            names.append(str(f.path))
        except AudioError as exc:
            logger.warning("real set: skipped %s", exc)
    return names, waves


def _stats(r) -> dict:
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


def _fdsd_for(
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
    """Compute (or reuse) ``fdsd.json``; returns the short summary that goes into the manifest."""
    from lightdvae.audio import AudioError, load_audio
    from lightdvae.fdsd import extract_features, fdsd_floor, fdsd_from_features, get_extractor

    fingerprint = manifest["fingerprint"]
    n = len(names)
    files = _real_files(corpus, split, need=2)
    settings = {
        "generation": fingerprint,
        "corpus": str(Path(corpus.root).resolve()),
        "split": split,
        "real_files": len(files),
        "features": str(features),
        "draws": draws,
        "seed": fingerprint["seed"],
        "griffin_lim_iters": fingerprint["griffin_lim_iters"],
    }
    old = _read_json(out / FDSD_FILE)
    if old is not None and old.get("kind") == FDSD_KIND and old.get("settings") == settings:
        return {**_fdsd_summary(old), "reused": True}

    t0 = time.perf_counter()
    try:
        ext = get_extractor(features, device=str(device))
    except (KeyError, ValueError, ImportError, FileNotFoundError) as exc:
        raise GenerationError(f"FDSD feature network: {str(exc).strip(chr(39))}") from None
    _, real = _load_real(corpus, split)
    if len(real) < 2:
        raise GenerationError(
            f"the {split} split of corpus {corpus.name!r} has {len(real)} usable file(s); FDSD needs at least 2: "
            "pass another --data / --split, or --no-fdsd"
        )
    fake, skipped = [], []
    for nm in names:
        try:  # the same front end as the real set (and as `lightdvae fdsd score`)
            fake.append(load_audio(out / WAV_DIR / f"{nm}.wav", log=False))
        except AudioError as exc:
            skipped.append(str(exc))
    if len(fake) < 2:
        raise GenerationError(f"only {len(fake)} generated file(s) are usable for FDSD: {'; '.join(skipped[:2])}")
    real_feats = extract_features(ext, real)
    fake_feats = extract_features(ext, fake)
    r_count, f_count = len(real), len(fake)
    has_floor = r_count // 2 >= 2
    m = min(f_count, r_count // 2) if has_floor else min(f_count, r_count)
    kw = dict(draws=draws, seed=fingerprint["seed"], features=ext.name, description=getattr(ext, "description", ""))
    main = fdsd_from_features(real_feats, fake_feats, sample_size=m, **kw)
    notes = list(main.notes)
    full = None
    if min(f_count, r_count) > m:
        full = fdsd_from_features(real_feats, fake_feats, sample_size=min(f_count, r_count), **kw)
        notes.append(
            f"the real set ({r_count}) is smaller than twice the generated set: FDSD and its floors use {m} "
            f"utterances per set (half the real set, the most the floor can use); fdsd_all_real uses {full.sample_size}"
        )
    floor = None
    if has_floor:
        floors = fdsd_floor(
            real,
            ext,
            draws=draws,
            sample_size=m,
            seed=fingerprint["seed"],
            griffin_lim_iters=fingerprint["griffin_lim_iters"],
            device=str(device),
        )
        floor = {"exact_phase": _stats(floors["halves"]), "griffin_lim": _stats(floors["griffin_lim"])}
    else:
        notes.append(f"no real-vs-real floor: it needs 2 disjoint halves of at least 2 files ({r_count} real files)")
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
            "files": r_count,
            "listed": len(files),
        },
        "feature_network": getattr(ext, "description", ext.name),
        "features": ext.name,
        "fdsd": _stats(main),
        **({"fdsd_all_real": _stats(full)} if full is not None else {}),
        **({"floor": floor} if floor is not None else {}),
        "sample_size_rule": "m = min(generated, real // 2) utterances of each set per draw, the floors at the same m "
        "(fdsd_all_real: min(generated, real) when larger); real and generated audio through the same front end",
        "generation": {
            "out": str(out),
            "n": n,
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
    _write_json(out / FDSD_FILE, result)
    return _fdsd_summary(result)


def _fdsd_summary(result: dict) -> dict:
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


# ----------------------------------------------------------------------------------------------------------------
# w exchange
# ----------------------------------------------------------------------------------------------------------------
def _has_w(model) -> bool:
    return all(hasattr(model, a) for a in ("encode_w", "encode_z", "decode", "decode_stepwise", "features"))


@torch.no_grad()
def _encode(model, power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means ``(w (1, w_dim), z (1, T, z_dim))`` of one power spectrogram ``(1, T, F)``."""
    feats = model.features(power)
    w, _ = model.encode_w(feats)
    z, _ = model.encode_z(feats, w)
    return w, z


@torch.no_grad()
def _decode(model, z: torch.Tensor, w: torch.Tensor, power: torch.Tensor, past: str) -> torch.Tensor:
    """Variance ``exp(logvar)`` (1, T, F) of z with w; ``power`` is the true past for ``past="gt"``."""
    if past == "gen":
        logvar = model.decode_stepwise(w, z.shape[1], z=z, prior=False)["logvar"]
    else:
        logvar = model.decode(z, w, power)[0]
    return torch.exp(logvar)


@torch.no_grad()
def exchange_w(model, power_a: torch.Tensor, power_b: torch.Tensor, past: str = "gen") -> dict[str, torch.Tensor]:
    """Swap the sequence latents of two utterances (models with w: HiT-DVAE, LigHT-DVAE, their ablations).

    Args:
        model: a hierarchical transformer DVAE in eval mode.
        power_a, power_b: ``(T_a, F)`` / ``(T_b, F)`` (or ``(1, T, F)``) power spectrograms on the model's device.
        past: ``"gen"`` (the decoder's own past) or ``"gt"`` (the true past of the utterance whose z is decoded).
    Returns:
        ``w_a``, ``w_b`` (w_dim,) posterior means; variances ``(T, F)``: ``a_with_w_of_a`` (equal to
        ``model.resynthesize(power_a, past, sample=False)``), ``b_with_w_of_b``, ``a_with_w_of_b`` (a's z, b's w),
        ``b_with_w_of_a``.  Each decode runs alone (batch 1): the encoders are not causal, so padding would change them.
    """
    if not _has_w(model):
        raise GenerationError(f"{getattr(model, 'name', type(model).__name__)} has no sequence latent w")
    if past not in ("gen", "gt"):
        raise GenerationError(f"past must be 'gen' (own past) or 'gt' (true past), got {past!r}")
    pa = power_a if power_a.dim() == 3 else power_a[None]
    pb = power_b if power_b.dim() == 3 else power_b[None]
    w_a, z_a = _encode(model, pa)
    w_b, z_b = _encode(model, pb)
    return {
        "w_a": w_a[0],
        "w_b": w_b[0],
        "a_with_w_of_a": _decode(model, z_a, w_a, pa, past)[0],
        "b_with_w_of_b": _decode(model, z_b, w_b, pb, past)[0],
        "a_with_w_of_b": _decode(model, z_a, w_b, pa, past)[0],
        "b_with_w_of_a": _decode(model, z_b, w_a, pb, past)[0],
    }


def _ltas_db(power: torch.Tensor) -> np.ndarray:
    """Long-term average spectrum in dB with the overall level removed: (F,)."""
    p = power.double().mean(0).clamp_min(1e-12)
    db = 10.0 * torch.log10(p)
    return (db - db.mean()).cpu().numpy()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def swap_w(
    run_dir,
    a,
    b,
    out=None,
    *,
    which: str = "best",
    device: str | torch.device | None = "auto",
    past: str = "gen",
    griffin_lim: bool = False,
    griffin_lim_iters: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Exchange the w of two utterances with the model of ``run_dir``; write wavs, a figure and ``swap_w.json``.

    Args:
        run_dir: a HiT-DVAE or LigHT-DVAE run (any other model is refused: it has no w).
        a, b: audio files (wav/flac; resampled to 16 kHz, mixed down, trimmed and peak-normalised like the corpus).
        out: output folder (default ``RUN_DIR/swap_w/<a>--<b>-<past>[-<which>]``).
        which: checkpoint.  device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        past: ``"gen"`` (default) or ``"gt"``; see :func:`exchange_w`.
        griffin_lim: also write Griffin-Lim resyntheses (``*_gl.wav``), which keep none of the source's phase.
        griffin_lim_iters: their iterations (default 100).  seed: their random initial phases.
        overwrite: replace the w exchange of other inputs or settings found in ``out``.
    Writes (into ``out``): ``a_with_w_of_b.wav``, ``b_with_w_of_a.wav``, ``a_with_w_of_a.wav``,
    ``b_with_w_of_b.wav`` (each with the phase of its z's utterance and its length; all four scaled by one common
    gain so that none clips), ``swap_w.png`` (a, b, a with w of b, b with w of a: the front end's spectrograms of the
    inputs and the model's decoded variances, one colour scale) and ``swap_w.json`` (see the module docstring).
    Returns the contents of ``swap_w.json`` with ``"out"``.
    """
    from lightdvae.audio import (
        AudioError,
        load_audio,
        peak_normalize,
        power_spectrogram,
        resynthesize,
        save_audio,
        stft,
    )
    from lightdvae.audio import griffin_lim as run_griffin_lim

    if past not in ("gen", "gt"):
        raise GenerationError(f"past must be 'gen' (own past) or 'gt' (true past), got {past!r}")
    iters = _check_int(GRIFFIN_LIM_ITERS if griffin_lim_iters is None else griffin_lim_iters, "griffin_lim_iters", 0)
    seed = _check_int(seed, "seed", 0)
    run_dir = Path(run_dir)
    model, meta, dev, info = _load(run_dir, which, device)
    if not _has_w(model):
        raise GenerationError(
            f"{run_dir} holds a {info['model']['label']} model, which has no sequence latent w; swap-w needs a model "
            f"with w: {', '.join(W_MODELS)} (and their Inv-s / Inv-s-NR variants)"
        )
    paths = {"a": Path(a), "b": Path(b)}
    waves = {}
    for key, path in paths.items():
        if not path.is_file():
            raise GenerationError(f"audio file {path} does not exist")
        try:
            waves[key] = load_audio(path)
        except AudioError as exc:
            raise GenerationError(f"cannot use {path}: {exc.detail}") from None
    if out is None:
        tag = f"{_safe(paths['a'].stem)}--{_safe(paths['b'].stem)}-{past}" + ("" if which == "best" else f"-{which}")
        out = run_dir / "swap_w" / tag
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"output folder {out} exists and is not a folder")
    fingerprint = {
        "checkpoint_sha256": info["checkpoint"]["sha256"],
        "a": sha256_file(paths["a"]),
        "b": sha256_file(paths["b"]),
        "past": past,
        "griffin_lim": bool(griffin_lim),
        "griffin_lim_iters": iters if griffin_lim else None,
        "seed": seed if griffin_lim else None,
        "device": dev.type,
    }
    old = _read_json(out / SWAP_FILE)
    if old is not None and old.get("fingerprint") != fingerprint and not overwrite:
        was = old.get("fingerprint") or {}
        diff = sorted(k for k in set(was) | set(fingerprint) if was.get(k) != fingerprint.get(k))
        what = ", ".join("checkpoint weights" if k == "checkpoint_sha256" else k for k in diff)
        raise GenerationError(
            f"{out} holds another w exchange (differs in: {what}); pass --overwrite to replace it, or --out DIR"
        )
    if (out / MANIFEST).is_file() and not overwrite:
        raise GenerationError(f"{out} holds a generation; pass another --out")

    power = {k: power_spectrogram(torch.from_numpy(w)).to(dev) for k, w in waves.items()}
    spec = {k: stft(torch.from_numpy(w)).to(dev) for k, w in waves.items()}
    ex = exchange_w(model, power["a"], power["b"], past=past)
    outputs = {  # name -> (variance, the utterance giving z and phase)
        "a_with_w_of_b": (ex["a_with_w_of_b"], "a"),
        "b_with_w_of_a": (ex["b_with_w_of_a"], "b"),
        "a_with_w_of_a": (ex["a_with_w_of_a"], "a"),
        "b_with_w_of_b": (ex["b_with_w_of_b"], "b"),
    }
    resynth = {
        name: resynthesize(v, spec[src], len(waves[src])).float().cpu().numpy() for name, (v, src) in outputs.items()
    }
    if griffin_lim:
        gen = torch.Generator(device=dev).manual_seed(seed)
        for name, (v, src) in list(outputs.items()):
            resynth[f"{name}_gl"] = run_griffin_lim(v, iters, length=len(waves[src]), generator=gen).float().cpu()
            resynth[f"{name}_gl"] = resynth[f"{name}_gl"].numpy()
    peak = max(float(np.max(np.abs(w))) for w in resynth.values() if w.size)
    gain = min(1.0, 0.99 / peak) if peak > 0 else 1.0
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, wave in resynth.items():
        save_audio(out / f"{name}.wav", wave * gain)
        files[name] = f"{name}.wav"

    # The check: w of each output (encoded again from its waveform) and its long-term average spectrum, against
    # both inputs; a swapped output is compared with the own-w resynthesis of its source (the baseline).
    w_in = {"a": ex["w_a"], "b": ex["w_b"]}
    ltas_in = {k: _ltas_db(p) for k, p in power.items()}
    measured = {}
    for name in outputs:
        p_out = power_spectrogram(torch.from_numpy(peak_normalize(resynth[name]))).to(dev)
        w_out = _encode(model, p_out[None])[0][0]
        ltas = _ltas_db(p_out)
        measured[name] = {
            k: (float(torch.linalg.vector_norm(w_out - w_in[k])), _rms(ltas - ltas_in[k])) for k in ("a", "b")
        }
    check = {}
    for name, (_, src) in outputs.items():
        donor = name.rsplit("_", 1)[-1]  # "a_with_w_of_b" -> "b"
        other = "b" if src == "a" else "a"
        m, own = measured[name], measured[f"{src}_with_w_of_{src}"]
        entry = {"source": src, "w_donor": donor, "w_dist_to_source": m[src][0], "ltas_db_to_source": m[src][1]}
        if donor != src:
            d_src, d_don = m[src][0], m[donor][0]
            o_src, o_don = own[src][0], own[donor][0]
            entry.update(
                w_dist_to_donor=d_don,
                w_transfer=d_src / (d_src + d_don) if d_src + d_don > 0 else None,
                ltas_db_to_donor=m[donor][1],
                own_w_transfer=o_src / (o_src + o_don) if o_src + o_don > 0 else None,
                own_ltas_db_to_donor=own[donor][1],
                ltas_db_toward_donor=own[donor][1] - m[donor][1],
            )
        else:
            entry.update(w_dist_to_other=m[other][0], ltas_db_to_other=m[other][1])
        check[name] = entry
    check["w_dist_a_b"] = float(torch.linalg.vector_norm(w_in["a"] - w_in["b"]))
    check["ltas_db_a_b"] = _rms(ltas_in["a"] - ltas_in["b"])

    notes: list[str] = []
    label = info["model"]["label"]

    def make_figure():
        from lightdvae.figures import spectrogram_grid

        pa, pb = power["a"], power["b"]
        rows = [
            [(f"a: {paths['a'].name}", pa), (f"a with w of b ({past.upper()})", ex["a_with_w_of_b"])],
            [(f"b: {paths['b'].name}", pb), (f"b with w of a ({past.upper()})", ex["b_with_w_of_a"])],
        ]
        return spectrogram_grid(rows, suptitle=f"{label}: w exchange", share_time=False)

    figure = _figure(make_figure, out / SWAP_FIGURE, notes)
    result = {
        "kind": SWAP_KIND,
        "format": FORMAT_VERSION,
        "created": utc_now(),
        "run_dir": info["run_dir"],
        "checkpoint": info["checkpoint"],
        "model": info["model"],
        "past": past,
        "inputs": {
            k: {
                "path": str(paths[k].resolve()),
                "seconds": len(waves[k]) / SAMPLE_RATE,
                "frames": int(power[k].shape[0]),
            }
            for k in ("a", "b")
        },
        "w": {"a": ex["w_a"].tolist(), "b": ex["w_b"].tolist()},
        "latents": "posterior means: w = E[q(w|s)], z = E[q(z|s, w)] with the utterance's own w",
        "phase": "each output uses the phase of the STFT of the utterance whose z it decodes, and its length",
        "gain": gain,
        "outputs": {"wav": files, "figure": SWAP_FIGURE if figure else None},
        "check": check,
        "check_description": "w_dist_*: Euclidean distance between the w encoder's posterior mean of the output "
        "(its waveform, peak-normalised, encoded again) and that of the source / donor utterance; w_transfer = "
        "d_source / (d_source + d_donor): 0 = the output keeps its source's w, 1 = it has the donor's. ltas_db_*: "
        "RMS difference in dB over the bins of the long-term average spectra (mean power per bin, overall level "
        "removed). own_*: the same measures of the own-w resynthesis of the source (the baseline: re-encoding and "
        "reconstruction error); ltas_db_toward_donor = own_ltas_db_to_donor - ltas_db_to_donor (> 0: exchanging w "
        "moved the spectrum toward the donor's). w carries global traits when w_transfer > own_w_transfer and "
        "ltas_db_toward_donor > 0.",
        "fingerprint": fingerprint,
        "notes": notes,
        "versions": _versions(dev),
    }
    _write_json(out / SWAP_FILE, result)
    return {**result, "out": str(out)}

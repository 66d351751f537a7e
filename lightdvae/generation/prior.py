"""Generation from the prior (:func:`generate_run`, ``lightdvae generate``; :func:`generate_model` for a model in
memory).

``n`` sequences of ``frames`` frames are sampled from the model's prior and decoded autoregressively
(``model.generate``: the native sampling loops and the KV-cached decoders), in batches of ``batch_size``; each batch
then goes through Griffin-Lim (100 iterations by default, the protocol's STFT, batched) to waveforms.  Batch ``k``
draws from its own ``torch.Generator`` seeded with ``SeedSequence([seed, k])`` (prior sampling, then Griffin-Lim's
random initial phases), so a batch can be redone alone with the same result and an interrupted generation resumes
batch by batch.  Each waveform is scaled to a peak of 0.95 (the level of a generated sample is arbitrary; the real
data are peak-normalised too) and written as 16-bit PCM.

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
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from lightdvae import resultdir, runtime
from lightdvae._io import atomic_write_bytes, read_json, write_json
from lightdvae.audio import GRIFFIN_LIM_ITERS
from lightdvae.errors import GenerationError, UserError
from lightdvae.generation import journal
from lightdvae.generation.common import (
    DEFAULT_BATCH,
    DEFAULT_DRAWS,
    DEFAULT_FIGURES,
    DEFAULT_FRAMES,
    DEFAULT_N,
    MANIFEST,
    PEAK,
    SPEC_DIR,
    WAV_DIR,
    logger,
)
from lightdvae.generation.fdsd import fdsd_for
from lightdvae.generation.figures import generation_figures
from lightdvae.generation.manifest import build_manifest, describe_model
from lightdvae.generation.realset import FDSD_BUILD_HINT, FDSD_SPEC_HINT, open_corpus, real_files, run_corpus_spec
from lightdvae.generation.settings import GenerationSettings, validated
from lightdvae.runs import GENERATE_DIR, open_run
from lightdvae.runtime import STEP_LOOP_THREADS


def default_out_dir(run_dir, n: int, frames: int, temperature: float = 1.0, seed: int = 0, which: str = "best"):
    """``RUN_DIR/generate/<which>-n<N>-f<F>-t<temperature>-s<seed>``."""
    return Path(run_dir) / GENERATE_DIR / f"{which}-n{int(n)}-f{int(frames)}-t{float(temperature):g}-s{int(seed)}"


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
    figures, a manifest and (``fdsd``) their FDSD against the run's corpus split; see the module docstring and
    :mod:`lightdvae.generation.fdsd`.

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
        threads: torch threads during this call (default: 1 on the CPU, restored after).  The autoregressive
            decoding is many small ops: a second thread gains nothing at batch size 1-32 and, when another process
            shares the cores, makes every step wait for a busy core (8x slower measured on 2 cores).
        quiet: no messages on stdout.  progress: progress bar (None: on a terminal).
    Returns:
        the manifest (also in ``generation.json``), with ``"fdsd"`` (the FDSD summary or None) and, not written to
        the file, ``"out"`` (the folder), ``"reused"`` (True when a finished generation was found and reused) and
        ``["fdsd"]["reused"]`` (True when ``fdsd.json`` with the same settings was found and reused).
    Raises:
        GenerationError and the package's other :class:`~lightdvae.errors.UserError`: missing run or checkpoint, an
        option out of range, a corpus that is missing or has fewer than 2 usable files in the split, a folder
        holding another generation.
    """
    s, threads = validated(
        n, frames, temperature, seed, batch_size, griffin_lim_iters, figures, split, threads, fdsd, fdsd_draws, features
    )
    run = open_run(run_dir, which, runtime.resolve_device(device, GenerationError), error=GenerationError)
    corpus, spec = _real_set(run.meta, data, run.run_dir, s)
    out = Path(out) if out is not None else default_out_dir(run.run_dir, s.n, s.frames, s.temperature, s.seed, which)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"output folder {out} exists and is not a folder")
    check_memory(s, run.device)
    if threads is None and run.device.type == "cpu":
        threads = STEP_LOOP_THREADS
    with runtime.thread_scope(threads):
        return _generate(
            run.model,
            out,
            s,
            corpus=corpus,
            data_spec=None if corpus is None else str(spec),
            overwrite=overwrite,
            quiet=quiet,
            progress=progress,
            info=run.info,
            device=run.device,
        )


#: Memory of one generated frame of one sample, decoding and Griffin-Lim together: 57-65 KB measured with the
#: default LigHT-DVAE on the CPU (2 000 and 8 000 frames, peak RSS), 55 KB reported at 100 000 frames.
BYTES_PER_FRAME = 64_000
#: The share of the available memory a generation may plan to use.
MEMORY_SHARE = 0.8


def check_memory(s: GenerationSettings, device) -> None:
    """Refuse a batch that cannot fit in memory, with the estimate and the batch size that fits."""
    available = runtime.available_memory(device)
    if available is None:
        return
    per_sample = s.frames * BYTES_PER_FRAME
    batch = min(s.batch_size, s.n)
    budget = MEMORY_SHARE * available
    if batch * per_sample <= budget:
        return
    fits = int(budget // per_sample)
    hint = (
        f"pass --batch-size {fits} (or less)"
        if fits >= 1
        else f"generate fewer frames: about {int(budget // BYTES_PER_FRAME):,} fit in one sample"
    )
    raise GenerationError(
        f"{batch} samples of {s.frames:,} frames at once need about {batch * per_sample / 2**30:.1f} GiB "
        f"({per_sample / 2**30:.2f} GiB each), more than the {available / 2**30:.1f} GiB available on {device}; {hint}"
    )


def _real_set(meta: dict, data, run_dir: Path, settings: GenerationSettings) -> tuple:
    """``(corpus, spec)`` of the real set.  With FDSD its problems fail here, before the long part; without, the
    corpus only serves the real-vs-generated figure: no corpus, no figure."""
    if settings.fdsd:
        spec = run_corpus_spec(meta, data, run_dir, FDSD_SPEC_HINT)
        corpus = open_corpus(spec, FDSD_BUILD_HINT)
        real_files(corpus, settings.split, need=2)
        return corpus, spec
    spec = None
    try:
        spec = run_corpus_spec(meta, data, run_dir, "")
        corpus = open_corpus(spec, "")
        corpus.split(settings.split)
    except UserError as exc:
        logger.info("no real-vs-generated figure: %s", exc)
        corpus = None
    return corpus, spec


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
    settings = GenerationSettings(
        n, frames, temperature, seed, batch_size, griffin_lim_iters, figures, split, fdsd, fdsd_draws, features
    )
    return _generate(
        model,
        out,
        settings,
        corpus=corpus,
        data_spec=data_spec,
        overwrite=overwrite,
        quiet=quiet,
        progress=progress,
        info=info,
        device=device,
    )


def _generate(model, out, s: GenerationSettings, *, corpus, data_spec, overwrite, quiet, progress, info, device):
    """:func:`generate_model` with its settings gathered: the batches still to do, the figures, the manifest and
    (``s.fdsd``) the FDSD."""
    out = Path(out)
    dev = device or next(model.parameters()).device
    info = dict(info or describe_model(model))
    if corpus is not None:
        corpus = open_corpus(corpus, "")
    if s.fdsd and corpus is None:
        raise GenerationError("FDSD needs the real set: pass a corpus (--data SPEC), or --no-fdsd")
    fingerprint = s.fingerprint(info["checkpoint"]["sha256"], dev)
    with resultdir.folder_lock(out, command="lightdvae generate", error=GenerationError):
        return _generate_locked(model, out, s, fingerprint, corpus, data_spec, overwrite, quiet, progress, info, dev)


def _generate_locked(model, out, s, fingerprint, corpus, data_spec, overwrite, quiet, progress, info, dev) -> dict:
    """The batches still to do, the figures, the manifest and the FDSD, in the locked folder ``out``."""
    state = journal.open_state(out, fingerprint, overwrite)
    old_manifest = read_json(out / MANIFEST)
    if old_manifest is not None and old_manifest.get("fingerprint") != fingerprint:
        old_manifest = None
    names = [journal.sample_name(i, s.n) for i in range(s.n)]
    batches = journal.batches(s.n, s.batch_size)
    n_figures = min(s.figures, s.n)
    todo = [(k, lo, hi) for k, lo, hi in batches if not journal.batch_done(out, state, names, n_figures, lo, hi, k)]
    reused = not todo and bool(state["finished"]) and old_manifest is not None
    _run_batches(
        model, out, s, state, todo, len(batches), names, n_figures, dev, info["model"]["label"], quiet, progress
    )

    notes: list[str] = []
    drawn_before = len(((old_manifest or {}).get("outputs") or {}).get("spectrograms") or [])
    redraw = bool(todo) or drawn_before != n_figures
    made = generation_figures(out, names, n_figures, s.frames, s.temperature, info, corpus, s.split, notes, redraw)
    manifest = build_manifest(
        s,
        info=info,
        state=state,
        fingerprint=fingerprint,
        names=names,
        n_figures=n_figures,
        figures=made,
        notes=notes,
        old=old_manifest if reused else None,
        device=dev,
    )
    fdsd_reused = None
    if s.fdsd:
        summary = fdsd_for(
            out,
            info=info,
            corpus=corpus,
            data_spec=data_spec,
            split=s.split,
            names=names,
            manifest=manifest,
            draws=s.fdsd_draws,
            features=s.features,
            device=dev,
        )
        fdsd_reused = bool(summary.pop("reused", False))
        manifest["fdsd"] = summary
    if manifest["fdsd"]:
        manifest["timings"]["fdsd_s"] = manifest["fdsd"].get("seconds")
    write_json(out / MANIFEST, manifest)
    result = {**manifest, "out": str(out), "reused": reused}
    if fdsd_reused is not None:
        result["fdsd"] = {**manifest["fdsd"], "reused": fdsd_reused}
    return result


def _run_batches(
    model, out: Path, s: GenerationSettings, state: dict, todo, total, names, n_figures, dev, label, quiet, progress
):
    """Generate the batches of ``todo`` (of ``total``), recording each in the journal as soon as its files are
    written; with none to do, close the journal if the last session could not."""
    if not todo:
        if not state["finished"]:  # every batch was there, the closing write was not
            state["finished"] = True
            journal.save_state(out, state)
        return
    if len(todo) < total and not quiet:
        print(f"resuming {out}: {total - len(todo)} of {total} batches already generated", flush=True)
    state["sessions"] += 1
    state["finished"] = False
    journal.save_state(out, state)
    bar = runtime.progress_bar(
        total=total, initial=total - len(todo), desc=f"generate {label}", unit="batch", progress=progress
    )
    try:
        for k, lo, hi in todo:
            state["batches"][str(k)] = _one_batch(model, out, s, k, names[lo:hi], lo, n_figures, dev)
            journal.save_state(out, state)
            bar.update(1)
    finally:
        bar.close()
    state["finished"] = True
    journal.save_state(out, state)


def _one_batch(model, out: Path, s: GenerationSettings, k: int, names: list[str], lo: int, n_figures: int, dev) -> dict:
    """Batch ``k`` (samples ``lo``, ``lo + 1``, ... named ``names``): prior sampling, Griffin-Lim, the wavs at peak
    0.95 and the spectrograms of the figures; returns its journal entry (timings, peaks before scaling)."""
    from lightdvae.audio import griffin_lim, save_audio

    gen = journal.batch_generator(s.seed, k, dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        power = model.generate(len(names), s.frames, temperature=s.temperature, generator=gen)
    runtime.sync(dev)
    t1 = time.perf_counter()
    waves = griffin_lim(power, s.griffin_lim_iters, length=s.samples, generator=gen)
    runtime.sync(dev)
    t2 = time.perf_counter()
    waves = waves.float().cpu().numpy()
    peaks = np.abs(waves).max(axis=-1)
    for row, name in enumerate(names):
        wave = waves[row] * (PEAK / peaks[row]) if peaks[row] > 0 else waves[row]
        save_audio(out / WAV_DIR / f"{name}.wav", wave)
        if lo + row < n_figures:
            buf = io.BytesIO()
            np.save(buf, power[row].float().cpu().numpy())
            atomic_write_bytes(out / SPEC_DIR / f"{name}.npy", buf.getvalue(), fsync=False)
    return {
        "samples": len(names),
        "prior_s": t1 - t0,
        "griffin_lim_s": t2 - t1,
        "griffin_lim_peak_min": float(peaks.min()),
        "griffin_lim_peak_max": float(peaks.max()),
    }

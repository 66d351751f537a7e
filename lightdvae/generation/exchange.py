"""The w exchange (:func:`swap_w`, ``lightdvae swap-w``; :func:`exchange_w` on tensors).

For the models with a sequence-level latent w (HiT-DVAE, LigHT-DVAE and their Inv-s / Inv-s-NR variants), two
utterances are encoded (posterior means: ``w = E[q(w | s)]``, then ``z = E[q(z | s, w)]`` with the utterance's own
w), and each is decoded with its own z and the other's w, and, for reference, with its own w, which is exactly
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

from pathlib import Path

import numpy as np
import torch

from lightdvae import resultdir, runtime
from lightdvae._io import sha256_file, slug, utc_now, write_json
from lightdvae.audio import GRIFFIN_LIM_ITERS, SAMPLE_RATE
from lightdvae.errors import GenerationError
from lightdvae.generation.common import (
    FORMAT_VERSION,
    MANIFEST,
    SWAP_DIR,
    SWAP_FIGURE,
    SWAP_FILE,
    SWAP_KIND,
    check_int,
    save_figure_or_note,
)
from lightdvae.models import HAS_W
from lightdvae.runs import open_run

W_MODELS = tuple(sorted(HAS_W))  #: the model families with a sequence latent w, as the messages name them

CHECK_DESCRIPTION = (
    "w_dist_*: Euclidean distance between the w encoder's posterior mean of the output "
    "(its waveform, peak-normalised, encoded again) and that of the source / donor utterance; w_transfer = "
    "d_source / (d_source + d_donor): 0 = the output keeps its source's w, 1 = it has the donor's. ltas_db_*: "
    "RMS difference in dB over the bins of the long-term average spectra (mean power per bin, overall level "
    "removed). own_*: the same measures of the own-w resynthesis of the source (the baseline: re-encoding and "
    "reconstruction error); ltas_db_toward_donor = own_ltas_db_to_donor - ltas_db_to_donor (> 0: exchanging w "
    "moved the spectrum toward the donor's). w carries global traits when w_transfer > own_w_transfer and "
    "ltas_db_toward_donor > 0."
)


def exchange_verdict(check: dict) -> str:
    """One line (Markdown) on whether w carries global traits, from the ``check`` of a ``swap_w.json``: both
    exchanged outputs have their w moved toward the donor's (beyond the own-w resynthesis) and their spectrum
    too (:data:`CHECK_DESCRIPTION`), one of them, or neither."""
    moved, parts = [], []
    for name in ("a_with_w_of_b", "b_with_w_of_a"):
        c = check.get(name) or {}
        w_moved = (c.get("w_transfer") or 0.0) > (c.get("own_w_transfer") or 0.0)
        moved.append(w_moved and (c.get("ltas_db_toward_donor") or 0.0) > 0)
        if all(isinstance(c.get(k), float) for k in ("w_transfer", "own_w_transfer", "ltas_db_toward_donor")):
            parts.append(
                f"{name.replace('_', ' ')}: w transfer {c['w_transfer']:.2f} (own-w {c['own_w_transfer']:.2f}), "
                f"spectrum {c['ltas_db_toward_donor']:+.2f} dB toward the donor"
            )
    verdict = "carries" if all(moved) else "partly carries" if any(moved) else "does not carry"
    return f"**w {verdict} global traits** ({', '.join(parts)})."


def exchange_pair(spec: str) -> tuple[Path, Path] | None:
    """Two test utterances of two speakers for a w exchange: the first file (by name) of the first two test
    speakers (by name) of the corpus ``spec`` (not built when missing); None when its test split has fewer than
    two speakers."""
    from lightdvae.data import resolve_corpus

    first: dict[str, Path] = {}
    for item in sorted(resolve_corpus(spec, build=False).splits.get("test", []), key=lambda a: str(a.path)):
        first.setdefault(item.speaker, Path(item.path))
    speakers = sorted(first)
    return (first[speakers[0]], first[speakers[1]]) if len(speakers) >= 2 else None


# ----------------------------------------------------------------------------------------------------------------
# On tensors
# ----------------------------------------------------------------------------------------------------------------
def has_w(model) -> bool:
    """Whether ``model`` has the encoders and decoders of a sequence latent w."""
    return all(hasattr(model, a) for a in ("encode_w", "encode_z", "decode", "decode_stepwise", "features"))


def _check_past(past: str) -> None:
    if past not in ("gen", "gt"):
        raise GenerationError(f"past must be 'gen' (own past) or 'gt' (true past), got {past!r}")


@torch.no_grad()
def encode(model, power: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means ``(w (1, w_dim), z (1, T, z_dim))`` of one power spectrogram ``(1, T, F)``."""
    feats = model.features(power)
    w, _ = model.encode_w(feats)
    z, _ = model.encode_z(feats, w)
    return w, z


@torch.no_grad()
def decode(model, z: torch.Tensor, w: torch.Tensor, power: torch.Tensor, past: str) -> torch.Tensor:
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
    if not has_w(model):
        raise GenerationError(f"{getattr(model, 'name', type(model).__name__)} has no sequence latent w")
    _check_past(past)
    pa = power_a if power_a.dim() == 3 else power_a[None]
    pb = power_b if power_b.dim() == 3 else power_b[None]
    w_a, z_a = encode(model, pa)
    w_b, z_b = encode(model, pb)
    return {
        "w_a": w_a[0],
        "w_b": w_b[0],
        "a_with_w_of_a": decode(model, z_a, w_a, pa, past)[0],
        "b_with_w_of_b": decode(model, z_b, w_b, pb, past)[0],
        "a_with_w_of_b": decode(model, z_a, w_b, pa, past)[0],
        "b_with_w_of_a": decode(model, z_b, w_a, pb, past)[0],
    }


def _ltas_db(power: torch.Tensor) -> np.ndarray:
    """Long-term average spectrum in dB with the overall level removed: (F,)."""
    p = power.double().mean(0).clamp_min(1e-12)
    db = 10.0 * torch.log10(p)
    return (db - db.mean()).cpu().numpy()


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


# ----------------------------------------------------------------------------------------------------------------
# The command: files in, wavs, a figure and swap_w.json out
# ----------------------------------------------------------------------------------------------------------------
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
    _check_past(past)
    iters = check_int(GRIFFIN_LIM_ITERS if griffin_lim_iters is None else griffin_lim_iters, "griffin_lim_iters", 0)
    seed = check_int(seed, "seed", 0)
    run = open_run(run_dir, which, runtime.resolve_device(device, GenerationError), error=GenerationError)
    model, dev, info = run.model, run.device, run.info
    if not has_w(model):
        raise GenerationError(
            f"{run.run_dir} holds a {info['model']['label']} model, which has no sequence latent w; swap-w needs a "
            f"model with w: {', '.join(W_MODELS)} (and their Inv-s / Inv-s-NR variants)"
        )
    paths, waves = _read_inputs(a, b)
    if out is None:
        tag = f"{slug(paths['a'].stem)}--{slug(paths['b'].stem)}-{past}" + ("" if which == "best" else f"-{which}")
        out = run.run_dir / SWAP_DIR / tag
    out = Path(out)
    fingerprint = {
        "checkpoint_sha256": info["checkpoint"]["sha256"],
        **{k: sha256_file(p) for k, p in paths.items()},
        "past": past,
        "griffin_lim": bool(griffin_lim),
        "griffin_lim_iters": iters if griffin_lim else None,
        "seed": seed if griffin_lim else None,
        "device": dev.type,
    }
    with resultdir.folder_lock(out, command="lightdvae swap-w", error=GenerationError):
        _claim(out, fingerprint, overwrite)
        result = _write_exchange(run, out, paths, waves, past, iters if griffin_lim else None, seed, fingerprint)
    return {**result, "out": str(out)}


def _write_exchange(run, out: Path, paths: dict, waves: dict, past: str, gl_iters, seed: int, fingerprint) -> dict:
    """The exchange itself, once the inputs and the folder are checked: the wavs, the check, the figure and
    ``swap_w.json`` (whose contents it returns)."""
    from lightdvae.audio import power_spectrogram, stft

    model, dev, info = run.model, run.device, run.info
    power = {k: power_spectrogram(torch.from_numpy(w)).to(dev) for k, w in waves.items()}
    spec = {k: stft(torch.from_numpy(w)).to(dev) for k, w in waves.items()}
    ex = exchange_w(model, power["a"], power["b"], past=past)
    outputs = {  # name -> (variance, the utterance giving z and phase)
        "a_with_w_of_b": (ex["a_with_w_of_b"], "a"),
        "b_with_w_of_a": (ex["b_with_w_of_a"], "b"),
        "a_with_w_of_a": (ex["a_with_w_of_a"], "a"),
        "b_with_w_of_b": (ex["b_with_w_of_b"], "b"),
    }
    resynth = _resynthesize(outputs, spec, waves, gl_iters, seed, dev)
    gain, files = _write_wavs(out, resynth)
    check = _check(model, ex, power, resynth, outputs, dev)
    notes: list[str] = []
    figure = _swap_figure(out, info["model"]["label"], paths, power, ex, past, notes)
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
        "check_description": CHECK_DESCRIPTION,
        "fingerprint": fingerprint,
        "notes": notes,
        "versions": runtime.versions(dev, threads=True),
    }
    write_json(out / SWAP_FILE, result)
    return result


def _read_inputs(a, b) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """The paths of ``a`` and ``b`` and their waveforms through the corpus front end, with one-line errors."""
    from lightdvae.audio import AudioError, load_audio

    paths = {"a": Path(a), "b": Path(b)}
    waves = {}
    for key, path in paths.items():
        if not path.is_file():
            raise GenerationError(f"audio file {path} does not exist")
        try:
            waves[key] = load_audio(path)
        except AudioError as exc:
            raise GenerationError(f"cannot use {path}: {exc.detail}") from None
    return paths, waves


def _claim(out: Path, fingerprint: dict, overwrite: bool) -> None:
    """Refuse an ``out`` that is not a folder, holds the w exchange of other inputs or settings, or holds a
    generation (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise GenerationError(f"output folder {out} exists and is not a folder")
    resultdir.claim(
        out,
        fingerprint,
        state_file=SWAP_FILE,
        overwrite=overwrite,
        what="another w exchange",
        them="it",
        error=GenerationError,
    )
    if (out / MANIFEST).is_file() and not overwrite:
        raise GenerationError(f"{out} holds a generation; pass another --out")


def _resynthesize(outputs: dict, spec: dict, waves: dict, gl_iters: int | None, seed: int, dev) -> dict:
    """Waveforms of the decoded variances with their utterance's phase and length; with ``gl_iters`` also their
    Griffin-Lim resyntheses (``*_gl``), all from one generator seeded with ``seed``."""
    from lightdvae.audio import griffin_lim, resynthesize

    resynth = {
        name: resynthesize(v, spec[src], len(waves[src])).float().cpu().numpy() for name, (v, src) in outputs.items()
    }
    if gl_iters is not None:
        gen = torch.Generator(device=dev).manual_seed(seed)
        for name, (v, src) in list(outputs.items()):
            resynth[f"{name}_gl"] = (
                griffin_lim(v, gl_iters, length=len(waves[src]), generator=gen).float().cpu().numpy()
            )
    return resynth


def _write_wavs(out: Path, resynth: dict) -> tuple[float, dict[str, str]]:
    """Write every waveform scaled by one common gain so that none clips; ``(gain, {name: file})``."""
    from lightdvae.audio import save_audio

    peak = max(float(np.max(np.abs(w))) for w in resynth.values() if w.size)
    gain = min(1.0, 0.99 / peak) if peak > 0 else 1.0
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, wave in resynth.items():
        save_audio(out / f"{name}.wav", wave * gain)
        files[name] = f"{name}.wav"
    return gain, files


def _check(model, ex: dict, power: dict, resynth: dict, outputs: dict, dev) -> dict:
    """The check of the module docstring: the w of each output (encoded again from its waveform) and its long-term
    average spectrum, against both inputs; a swapped output beside the own-w resynthesis of its source."""
    from lightdvae.audio import peak_normalize, power_spectrogram

    w_in = {"a": ex["w_a"], "b": ex["w_b"]}
    ltas_in = {k: _ltas_db(p) for k, p in power.items()}
    measured = {}  # name -> {input: (w distance, LTAS dB)}
    for name in outputs:
        p_out = power_spectrogram(torch.from_numpy(peak_normalize(resynth[name]))).to(dev)
        w_out = encode(model, p_out[None])[0][0]
        ltas = _ltas_db(p_out)
        measured[name] = {
            k: (float(torch.linalg.vector_norm(w_out - w_in[k])), _rms(ltas - ltas_in[k])) for k in ("a", "b")
        }
    check = {name: _check_entry(name, src, measured) for name, (_, src) in outputs.items()}
    check["w_dist_a_b"] = float(torch.linalg.vector_norm(w_in["a"] - w_in["b"]))
    check["ltas_db_a_b"] = _rms(ltas_in["a"] - ltas_in["b"])
    return check


def _check_entry(name: str, src: str, measured: dict) -> dict:
    donor = name.rsplit("_", 1)[-1]  # "a_with_w_of_b" -> "b"
    other = "b" if src == "a" else "a"
    m, own = measured[name], measured[f"{src}_with_w_of_{src}"]
    entry = {"source": src, "w_donor": donor, "w_dist_to_source": m[src][0], "ltas_db_to_source": m[src][1]}
    if donor == src:
        entry.update(w_dist_to_other=m[other][0], ltas_db_to_other=m[other][1])
        return entry
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
    return entry


def _swap_figure(out: Path, label: str, paths: dict, power: dict, ex: dict, past: str, notes: list[str]):
    """``swap_w.png``: a and b (the front end's spectrograms) beside a with w of b and b with w of a."""

    def make_figure():
        from lightdvae.figures import spectrogram_grid

        pa, pb = power["a"], power["b"]
        rows = [
            [(f"a: {paths['a'].name}", pa), (f"a with w of b ({past.upper()})", ex["a_with_w_of_b"])],
            [(f"b: {paths['b'].name}", pb), (f"b with w of a ({past.upper()})", ex["b_with_w_of_a"])],
        ]
        return spectrogram_grid(rows, suptitle=f"{label}: w exchange", share_time=False)

    return save_figure_or_note(make_figure, out / SWAP_FIGURE, notes)

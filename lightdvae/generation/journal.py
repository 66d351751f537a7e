"""The batch journal of a generation folder (``state.json``): what the folder holds (the fingerprint), which batches
are done and how long each took, so that an interrupted generation resumes batch by batch and a finished one is
reused.  Also what makes a batch redoable alone: its own seeded generator and its samples' names."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lightdvae import resultdir
from lightdvae._io import write_json
from lightdvae.audio import SAMPLE_RATE
from lightdvae.errors import GenerationError
from lightdvae.generation.common import (
    COMPARISON_FIGURE,
    FDSD_FILE,
    GENERATION_FIGURE,
    MANIFEST,
    SPEC_DIR,
    STATE,
    WAV_DIR,
)


def sample_name(i: int, n: int) -> str:
    """``sample_007``: zero-padded to at least 3 digits, more when ``n`` needs them."""
    return f"sample_{i:0{max(3, len(str(n - 1)))}d}"


def batch_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of batch ``index``: seeded from ``SeedSequence([seed, index])`` (independent streams)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    value = (int(state[0]) << 31) ^ int(state[1])  # 63 bits
    return torch.Generator(device=device).manual_seed(value)


def batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """``(index, first sample, end)`` of each batch."""
    return [(k, k * batch_size, min(n, (k + 1) * batch_size)) for k in range(math.ceil(n / batch_size))]


def open_state(out: Path, fingerprint: dict, overwrite: bool) -> dict:
    """The state to continue from (``{"fingerprint", "batches": {index: timings}, "sessions", "finished"}``);
    refuses a folder holding another generation (or files of an unknown one) unless ``overwrite``, which deletes
    this command's files (and nothing else)."""
    # state.json, generation.json or wav/ mark a generation; --overwrite deletes every file a generation writes
    state = resultdir.claim(
        out,
        fingerprint,
        state_file=STATE,
        files=(MANIFEST,),
        dirs=(WAV_DIR,),
        overwrite=overwrite,
        what="another generation",
        them="it",
        error=GenerationError,
    )
    if overwrite:
        resultdir.clear(out, (FDSD_FILE, GENERATION_FIGURE, COMPARISON_FIGURE), (SPEC_DIR,))
    if state is None:
        state = {"fingerprint": fingerprint}
    state.setdefault("batches", {})
    state.setdefault("sessions", 0)
    state.setdefault("finished", False)
    return state


def save_state(out: Path, state: dict) -> None:
    write_json(out / STATE, state)


def batch_done(out: Path, state: dict, names: list[str], n_figures: int, lo: int, hi: int, k: int) -> bool:
    """Batch ``k`` (samples ``lo:hi``) is recorded as done and its files are all there."""
    if str(k) not in state["batches"]:
        return False
    wavs = all((out / WAV_DIR / f"{names[i]}.wav").is_file() for i in range(lo, hi))
    specs = all((out / SPEC_DIR / f"{names[i]}.npy").is_file() for i in range(lo, min(hi, n_figures)))
    return wavs and specs


def timings(state: dict, n: int, samples: int) -> dict:
    """The manifest's ``timings``: prior sampling and Griffin-Lim, summed over the batches of every session."""
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

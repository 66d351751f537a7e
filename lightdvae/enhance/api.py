"""The public entry points: :func:`enhance` (one mixture) and :func:`enhance_batch` (many, enhanced together where
the model allows).

Front end (SPEC section 2): the 16 kHz mixture is divided by its peak, its STFT ``X`` taken with the protocol's
sine window; the estimate is the Wiener filter applied to ``X`` (so with the noisy phase), inverted by the
protocol's iSTFT and multiplied back by the peak.

Batching (:mod:`lightdvae.enhance.inference`): a VAE, DKF, RVAE and SRNN batch utterances of any lengths (padding
is neutral); HiT-DVAE and LigHT-DVAE batch utterances of equal lengths (buckets by frame count).  With
``one_at_a_time=True`` every utterance runs alone (DKF, RVAE and SRNN through the model's own ``forward``: the
reference path).  In every case utterance ``i`` of a call draws all its random numbers from its own stream,
seeded by ``(seed, indices[i])``, and has its own noise model and its own copy of the inference network with its
own Adam state: it gets the result it gets alone with the same seed and index (to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lightdvae.audio import SILENCE_PEAK, istft, stft
from lightdvae.enhance.engines import engine_class, engine_for, settings_for
from lightdvae.enhance.inference import inference_names
from lightdvae.enhance.settings import EnhanceResult, EnhanceSettings, resolve_settings
from lightdvae.enhance.vem import run_vem
from lightdvae.errors import EnhanceError
from lightdvae.models import DVAE
from lightdvae.runtime import flush_denormals, keep_freed_memory, parse_device

__all__ = ["enhance", "enhance_batch", "stream_seed", "batches", "POWER_FLOOR"]

#: The least power of a bin of the peak-normalised mixture that the EM sees.  Digital silence (exact zeros: a
#: zero-padded or synthetic file) would drive the gain and the noise's activations of its frames to zero, after which
#: the mixture variance there is zero and the updates divide by it (NaN everywhere).  A bin of 16-bit audio holds at
#: least its quantisation noise (about 4e-7 with the protocol's window), so recordings are left as they are; the
#: Wiener filter is applied to the mixture itself, whose zeros stay zeros.
POWER_FLOOR = 1e-10


def stream_seed(seed: int, index: int) -> int:
    """The seed of utterance ``index``'s random stream under ``seed`` (NumPy's SeedSequence of the pair)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _checked_wave(wave, where: str) -> tuple[Tensor, float]:
    """A mixture as a float64 ``(samples,)`` tensor on the CPU, and its peak; raises :class:`EnhanceError`."""
    if not isinstance(wave, Tensor):
        try:
            wave = torch.as_tensor(np.asarray(wave, dtype=np.float64))
        except (TypeError, ValueError):
            raise EnhanceError(f"{where} is not a waveform (an array of samples)") from None
    wave = wave.detach().to("cpu", torch.float64)
    if wave.dim() != 1:
        raise EnhanceError(f"{where} must be a mono waveform (samples,), got shape {tuple(wave.shape)}")
    if wave.numel() == 0:
        raise EnhanceError(f"{where} has no samples")
    if not torch.isfinite(wave).all():
        raise EnhanceError(f"{where} contains NaN or infinite samples")
    peak = float(wave.abs().max())
    if peak < SILENCE_PEAK:
        raise EnhanceError(f"{where} is silent (peak {peak:.2e} < {SILENCE_PEAK:g}): there is nothing to enhance")
    return wave, peak


def batches(
    model: DVAE, lengths: Sequence[int], batch_size: int | None = None, one_at_a_time: bool = False
) -> list[list[int]]:
    """The utterances (indices into ``lengths``, frame counts) that one EM run enhances together, in order of first
    appearance: all of them for the VAE, DKF, RVAE and SRNN, equal lengths for HiT/LigHT-DVAE, one each with
    ``one_at_a_time``; at most ``batch_size`` per run."""
    engine = engine_class(model, one_at_a_time)
    groups: dict[object, list[int]] = {}
    for i, n in enumerate(lengths):
        key = i if one_at_a_time or not engine.batched else (None if engine.padding_neutral else int(n))
        groups.setdefault(key, []).append(i)
    size = batch_size or len(lengths)
    return [members[k : k + size] for members in groups.values() for k in range(0, len(members), size)]


@contextlib.contextmanager
def _eval_mode(model: DVAE) -> Iterator[None]:
    """The model in eval mode (no dropout) inside the block, its mode restored after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _model_on(model: DVAE, device) -> DVAE:
    """The model on ``device`` (None: where it is); a copy when it has to move (the caller's model stays put)."""
    target = parse_device(device, EnhanceError)
    if target is None or target == model.device or (target.index is None and target.type == model.device.type):
        return model
    if target.type == "cuda" and not torch.cuda.is_available():
        raise EnhanceError(f"device {str(device)!r} asks for a GPU but torch sees no CUDA device; use cpu")
    import copy

    return copy.deepcopy(model).to(target)


def enhance_batch(
    model: DVAE,
    waveforms: Sequence,
    settings: EnhanceSettings | None = None,
    *,
    device: str | torch.device | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
    one_at_a_time: bool = False,
    **options,
) -> list[EnhanceResult]:
    """Enhance many noisy utterances with ``model`` as the clean-speech prior; one :class:`EnhanceResult` each.

    Args:
        model: a trained DVAE of the package (its weights are not modified).
        waveforms: mono 16 kHz mixtures, each ``(samples,)`` (NumPy or torch).
        settings: the EM's options (:class:`EnhanceSettings`; None: the defaults).
        device: where to run (None: the model's device; "auto", "cpu", "cuda", "cuda:N").
        indices: each utterance's index in its data set (default ``0 .. n-1``): with the seed it picks the
            utterance's random stream, so an utterance gets the same result in any batch.
        batch_size: at most this many utterances per EM run (None: no limit).
        one_at_a_time: enhance each utterance alone; DKF, RVAE and SRNN then run the model's own ``forward`` (the
            reference path the batched engine is checked against; slower).
        **options: EM options that replace those of ``settings`` (``iterations=300, seed=1``; the names of
            :class:`EnhanceSettings`).

    Raises :class:`lightdvae.errors.EnhanceError` for bad options, bad waveforms or a model without an inference
    network.  Runs in the model's dtype.
    """
    settings = resolve_settings(settings, options)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise EnhanceError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    waves = [_checked_wave(w, f"waveform {i}") for i, w in enumerate(waveforms)]
    indices = list(range(len(waves))) if indices is None else [int(i) for i in indices]
    if len(indices) != len(waves):
        raise EnhanceError(f"indices has {len(indices)} entries for {len(waves)} waveforms")
    inference_names(model)  # a model without an inference network fails before any work
    model = _model_on(model, device)
    settings = settings_for(model, settings)  # the E-step's rate, when left open, is the prior's
    param = next(model.parameters())
    results: list[EnhanceResult | None] = [None] * len(waves)
    specs = [stft((w / peak).to(param.device, param.dtype)) for w, peak in waves]
    keep_freed_memory()  # the EM's iterations reuse each other's pages (runtime.keep_freed_memory)
    # denormal gradients in oneDNN's LSTM backward cost the RVAE E-step 3x (as in training, issue #17)
    with _eval_mode(model), flush_denormals():
        for group in batches(model, [s.shape[0] for s in specs], batch_size, one_at_a_time):
            engine = engine_for(
                model, len(group), settings.lr, one_at_a_time, settings.latent_e_step, settings.speech_past
            )
            _enhance_group(engine, group, specs, waves, indices, settings, results)
    return results


def _enhance_group(engine, group, specs, waves, indices, settings, results) -> None:
    """One EM run over the utterances ``group`` (indices into ``specs``); fills their ``results``."""
    device = specs[group[0]].device
    lengths = [specs[i].shape[0] for i in group]
    spec = torch.zeros(len(group), max(lengths), specs[group[0]].shape[-1], dtype=specs[group[0]].dtype, device=device)
    for row, i in enumerate(group):
        spec[row, : lengths[row]] = specs[i]
    power = torch.view_as_real(spec).square().sum(-1)
    for row, n in enumerate(lengths):  # each utterance's own frames; padding stays zero
        power[row, :n].clamp_(min=POWER_FLOOR)
    gens = [torch.Generator(device).manual_seed(stream_seed(settings.seed, indices[i])) for i in group]
    out = run_vem(engine, power, lengths, gens, settings)
    for row, i in enumerate(group):
        n = lengths[row]
        wave, peak = waves[i]
        estimate = istft(out.filter[row, :n] * spec[row, :n], length=wave.numel()) * peak
        results[i] = EnhanceResult(
            waveform=estimate.detach().to("cpu", torch.float32).numpy(),
            speech_variance=out.speech[row, :n].cpu(),
            noise_variance=out.noise[row, :n].cpu(),
            loss=[float(v) for v in out.loss[:, row]],
            iterations=out.iterations,
            seconds=out.seconds,
            stopped_early=out.stopped_early,
            batch=len(group),
        )


def enhance(
    model: DVAE,
    noisy_waveform,
    settings: EnhanceSettings | None = None,
    *,
    device: str | torch.device | None = None,
    index: int = 0,
    one_at_a_time: bool = False,
    **options,
) -> EnhanceResult:
    """Enhance one noisy 16 kHz mono waveform ``(samples,)`` with ``model`` as the clean-speech prior.

    The arguments are those of :func:`enhance_batch` (``index``: the utterance's index for its random stream;
    ``one_at_a_time``: DKF, RVAE and SRNN through the model's own ``forward``, the reference path).
    Example::

        from lightdvae.models import pretrained
        result = enhance(pretrained("vae"), noisy, iterations=100, seed=0)
        result.waveform, result.loss[-1], result.seconds
        settings = EnhanceSettings(iterations=300, beta=0.01)    # or built once, and passed as it is
        result = enhance(pretrained("vae"), noisy, settings)
    """
    return enhance_batch(
        model, [noisy_waveform], settings, device=device, indices=[index], one_at_a_time=one_at_a_time, **options
    )[0]

"""What an enhancement is asked (:class:`EnhanceSettings`, checked once) and gives back (:class:`EnhanceResult`).

:class:`EnhanceSettings` is the one carrier of the variational EM's options: built once (by the command line from
its flags, by a user in Python), then handed unchanged to :func:`~lightdvae.enhance.enhance`,
:func:`~lightdvae.enhance.enhance_batch`, :func:`~lightdvae.enhance.enhance_set` and the EM loop.  Those entry
points also take the options as keywords (``enhance(model, noisy, iterations=300)``), merged by
:func:`resolve_settings` into the settings given (or the defaults).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from lightdvae.errors import EnhanceError

__all__ = ["EnhanceSettings", "EnhanceResult", "resolve_settings", "REFERENCE_LR", "SPEECH_PASTS"]

#: Adam's learning rate of the E-step in the reference implementation (Bie et al. 2022), for its VAE, DKF, RVAE and
#: SRNN priors (``lr=None`` resolves to it for those, :func:`lightdvae.enhance.engines.default_lr`).
REFERENCE_LR = 1e-3


def _integer(name: str, value, minimum: int) -> str | None:
    """What is wrong with ``value`` as an integer >= ``minimum`` (None: nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        return f"{name} must be an integer >= {minimum}, got {value!r}"
    return None


def _number(name: str, value, *, positive: bool) -> str | None:
    """What is wrong with ``value`` as a finite number > 0 (``positive``) or >= 0 (None: nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if value < 0 or (positive and value == 0):
        return f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}"
    return None


def _flag(name: str, value) -> str | None:
    """What is wrong with ``value`` as a flag (None: nothing)."""
    if not isinstance(value, (bool, np.bool_)):
        return f"{name} must be True or False, got {value!r}"
    return None


#: The values of ``EnhanceSettings.speech_past``.
SPEECH_PASTS = ("own", "estimate")


def _speech_past(value, latent_e_step) -> str | None:
    """What is wrong with ``value`` as the decoders' past (None: nothing)."""
    if value not in SPEECH_PASTS:
        return f"speech_past must be one of {', '.join(map(repr, SPEECH_PASTS))}, got {value!r}"
    if value == "estimate" and not (isinstance(latent_e_step, (bool, np.bool_)) and latent_e_step):
        return "speech_past='estimate' needs latent_e_step=True (the latent E-step; --latent-e-step)"
    return None


@dataclass(frozen=True)
class EnhanceSettings:
    """The options of the variational EM (defaults: the reference's runs).  Frozen; checked when built.

    iterations: EM iterations (100).  rank: K of the noise NMF (8).  lr: Adam's learning rate of the E-step (None:
    the prior's, :func:`lightdvae.enhance.engines.default_lr`: the reference's 1e-3, and 1e-4 for HiT/LigHT-DVAE).
    beta: weight of the KL terms in the E-step (1; the priors were trained with 0.01).  e_steps: Adam steps of the
    E-step per EM iteration, each on a new sample (1, the reference's: one gradient step, then the M-step).
    latent_e_step: the E-step's Adam moves each frame's posterior mean and log-variance, started from the encoder's,
    instead of the encoder's weights (False, the reference's; :mod:`lightdvae.enhance.latent`; its ``lr=None`` is
    :data:`~lightdvae.enhance.latent.LATENT_LR`).
    speech_past: what the decoders that see past speech (SRNN, HiT-DVAE, LigHT-DVAE) are fed as that past: ``"own"``
    (the reference's: their own predictions, frame by frame) or ``"estimate"`` (the EM's current estimate of the
    clean speech, ``E[|S|^2 | X]`` after each M-step, the mixture before the first: the decoder then runs over all
    frames at once); ``"estimate"`` needs ``latent_e_step`` and changes nothing for the VAE, DKF and RVAE.
    samples: z samples averaged in the final Wiener filter (1).  seed: with an utterance's index, its random stream (0).
    max_seconds: time budget of one EM run (a batch of utterances enhanced together); the loop stops before an
    iteration that would start after it (at least one iteration runs).  None: no budget.

    Every bad value raises :class:`~lightdvae.errors.EnhanceError`, one line naming each bad field::

        settings = EnhanceSettings(iterations=300, beta=0.01)
        longer = settings.replace(iterations=500)       # a checked copy
        settings.to_dict()                              # what summary.json and the resumption guard record
    """

    iterations: int = 100
    rank: int = 8
    lr: float | None = None
    beta: float = 1.0
    e_steps: int = 1
    latent_e_step: bool = False
    speech_past: str = "own"
    samples: int = 1
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        problems = [
            _integer("iterations", self.iterations, 1),
            _integer("rank", self.rank, 1),
            None if self.lr is None else _number("lr", self.lr, positive=True),
            _number("beta", self.beta, positive=False),
            _integer("e_steps", self.e_steps, 1),
            _flag("latent_e_step", self.latent_e_step),
            _speech_past(self.speech_past, self.latent_e_step),
            _integer("samples", self.samples, 1),
            _integer("seed", self.seed, 0),
            None if self.max_seconds is None else _number("max_seconds", self.max_seconds, positive=True),
        ]
        problems = [p for p in problems if p]
        if problems:
            raise EnhanceError("; ".join(problems))
        for name in ("iterations", "rank", "e_steps", "samples", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "latent_e_step", bool(self.latent_e_step))
        for name in ("lr", "beta", "max_seconds"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> EnhanceSettings:
        """A copy with ``changes`` (checked); :class:`EnhanceError` for a name that is not an option."""
        unknown = [k for k in changes if k not in self.names()]
        if unknown:
            raise EnhanceError(
                f"unknown enhancement option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(self.names())}"
            )
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        """``{name: value}`` of every option (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> EnhanceSettings:
        """The settings a :meth:`to_dict` recorded (keys that are not options are ignored: a summary's
        ``"settings"`` also holds the set's own)."""
        if not isinstance(data, Mapping):
            raise EnhanceError(f"enhancement settings must be a mapping of option names, got {type(data).__name__}")
        return cls(**{k: data[k] for k in cls.names() if k in data})


def resolve_settings(settings: EnhanceSettings | None, overrides: Mapping) -> EnhanceSettings:
    """The settings of a call: ``settings`` (None: the defaults) with the options passed as keywords
    (``overrides``) replaced.  :class:`EnhanceError` for a ``settings`` that is not an :class:`EnhanceSettings`,
    an unknown option or a bad value."""
    if settings is None:
        settings = EnhanceSettings()
    elif not isinstance(settings, EnhanceSettings):
        raise EnhanceError(
            f"settings must be an EnhanceSettings (or None for the defaults), got {type(settings).__name__}"
        )
    return settings.replace(**overrides)


@dataclass
class EnhanceResult:
    """One enhanced utterance.

    waveform: the speech estimate ``(samples,)`` float32 at 16 kHz, at the input's scale (the Wiener filter of the
    peak-normalised mixture, times the mixture's peak).
    speech_variance: ``g v`` (averaged over the filter's z samples), ``(frames, F)`` on the CPU.
    noise_variance: ``WH``, ``(frames, F)`` on the CPU.
    loss: per iteration, ``d_IS(|X|^2, g v + WH)`` averaged over the time-frequency bins after the M-step (the
    reference's loss, up to a constant).
    iterations: EM iterations run.  seconds: wall time of the EM run the utterance was part of.
    stopped_early: True when ``max_seconds`` ended the run before ``iterations``.
    batch: how many utterances that EM run enhanced together.
    """

    waveform: np.ndarray
    speech_variance: Tensor
    noise_variance: Tensor
    loss: list[float]
    iterations: int
    seconds: float
    stopped_early: bool
    batch: int = 1
    sample_rate: int = 16000

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / self.iterations if self.iterations else math.nan

    def summary(self) -> str:
        """One line: iterations, time, and the early stop if any."""
        stop = " (stopped early: time budget)" if self.stopped_early else ""
        per = f"{self.seconds_per_iteration * 1000:.1f} ms/iteration"
        return f"{self.iterations} iterations in {self.seconds:.2f} s ({per}){stop}"

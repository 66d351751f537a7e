"""Objective metrics of analysis-resynthesis (SPEC section 5) and their summary over files.

Per file, between a reference waveform ``x`` and an estimate ``x_hat`` of the same length (16 kHz):

* :func:`rmse`: RMSE after least-squares scaling of the estimate, ``a = <x_hat, x> / <x_hat, x_hat>``,
  ``sqrt(mean((a x_hat - x)^2))``.  Lower is better.
* :func:`si_sdr`: scale-invariant SDR of Le Roux et al. (ICASSP 2019), ``a = <x, x_hat> / ||x||^2``,
  ``10 log10(||a x||^2 / ||x_hat - a x||^2)`` in dB.  Higher is better.
* :func:`pesq`: ITU-T PESQ through the ``pesq`` package, ``mode="wb"`` (P.862.2 wide-band MOS-LQO) or
  ``mode="nb"`` (P.862.1 narrow-band MOS-LQO; the package returns the mapped score, the raw P.862 MOS is
  recovered exactly by :func:`pesq_nb_raw`).  Tables must say which one they show.
* :func:`estoi`: extended STOI (Jensen & Taal 2016) through ``pystoi.stoi(..., extended=True)``.

PESQ and ESTOI fail on some inputs (all-zero or too-short signals, no speech detected).  They never raise for
that: they return a :class:`Score` whose value is NaN and whose ``error`` says why, so an evaluation counts
and lists the failed files and goes on.  Shapes that do not match are a caller's bug and raise ``ValueError``.

:func:`compute_metrics` runs any subset of the metrics on one file and never raises (what the evaluation's
worker processes call); :func:`summarize` gives mean, median, standard deviation and a 95 % confidence interval
of the mean (Student-t interval by default, percentile bootstrap on request) plus the count of failed files.

This module needs NumPy only (SciPy for the t quantile); ``pesq`` and ``pystoi`` are imported when used.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from lightdvae.errors import first_line
from lightdvae.runtime import run_isolated

SAMPLE_RATE = 16000  #: the rate every metric here assumes (the package's rate, lightdvae.audio.SAMPLE_RATE).
PESQ_MIN_SECONDS = 0.25  #: the pesq library refuses shorter signals ("Buffer needs to be at least 1/4 of a second").

#: The metrics an evaluation computes, in table order.
METRICS = ("rmse", "si_sdr", "pesq_wb", "pesq_nb", "estoi")
#: Per-file columns: the metrics plus ``pesq_nb_raw`` (derived from ``pesq_nb``, not computed separately).
COLUMNS = ("rmse", "si_sdr", "pesq_wb", "pesq_nb", "pesq_nb_raw", "estoi")
#: Whether a larger value is better, per column.
HIGHER_IS_BETTER = {
    "rmse": False,
    "si_sdr": True,
    "pesq_wb": True,
    "pesq_nb": True,
    "pesq_nb_raw": True,
    "estoi": True,
}
#: Short names for tables.
LABELS = {
    "rmse": "RMSE",
    "si_sdr": "SI-SDR (dB)",
    "pesq_wb": "PESQ-WB",
    "pesq_nb": "PESQ-NB",
    "pesq_nb_raw": "PESQ-NB raw",
    "estoi": "ESTOI",
}
#: What each PESQ column is, for every table and summary that shows it.
PESQ_VARIANTS = {
    "pesq_wb": "ITU-T P.862.2 wide-band PESQ, MOS-LQO (pesq package, 16 kHz)",
    "pesq_nb": "ITU-T P.862.1 narrow-band PESQ, MOS-LQO (pesq package, 16 kHz input)",
    "pesq_nb_raw": "ITU-T P.862 narrow-band PESQ, raw MOS (inverse of the P.862.1 mapping of pesq_nb)",
}

# P.862.1 maps the raw narrow-band score r to MOS-LQO m = 0.999 + 4 / (1 + exp(-1.4945 r + 4.6607)).
_P8621_A, _P8621_B = 1.4945, 4.6607

__all__ = [
    "METRICS",
    "COLUMNS",
    "HIGHER_IS_BETTER",
    "LABELS",
    "PESQ_VARIANTS",
    "SAMPLE_RATE",
    "Score",
    "MetricUnavailable",
    "rmse",
    "si_sdr",
    "pesq",
    "pesq_nb_raw",
    "estoi",
    "compute_metrics",
    "check_available",
    "summarize",
]


class Score(NamedTuple):
    """A metric value, or NaN and the reason it could not be computed (``error``: ``"silent"``,
    ``"too-short"``, ``"no-utterances"``, ``"non-finite"``, or ``"<library> error: <message>"``)."""

    value: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class MetricUnavailable(ImportError):
    """A metric's package is not installed; the message has the install command."""


def _pair(reference, estimate) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as 1-D float64 arrays of one length (torch tensors are accepted)."""
    arrays = []
    for name, x in (("reference", reference), ("estimate", estimate)):
        if hasattr(x, "detach"):  # a torch tensor, without importing torch here
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            x = np.squeeze(x)
            if x.ndim != 1:
                raise ValueError(f"{name} must be a 1-D waveform (samples,), got shape {np.shape(x)}")
        arrays.append(x)
    ref, est = arrays
    if ref.shape != est.shape:
        raise ValueError(f"reference and estimate must have the same length, got {ref.shape[0]} and {est.shape[0]}")
    return ref, est


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``<a, b>`` by NumPy's pairwise summation, not BLAS: BLAS threads (np.dot) are up to 100x slower when the
    cores are busy with other work, as they are in the evaluation's worker pool."""
    return float(np.add.reduce(a * b))


# ----------------------------------------------------------------------------------------------------------------
# Waveform metrics
# ----------------------------------------------------------------------------------------------------------------
def rmse(reference, estimate) -> float:
    """RMSE of ``a * estimate`` against ``reference``, with the least-squares gain ``a = <x_hat, x> / ||x_hat||^2``.

    Args:
        reference, estimate: ``(samples,)`` real waveforms of the same length (NumPy or torch).
    Returns:
        ``sqrt(mean((a x_hat - x)^2))`` as a float, computed in float64.  An all-zero estimate gets ``a = 0``
        (every gain is then optimal), i.e. the RMS of the reference.  NaN for empty or non-finite input.
    """
    x, y = _pair(reference, estimate)
    if x.size == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    energy = _dot(y, y)
    a = _dot(y, x) / energy if energy > 0 else 0.0
    return math.sqrt(float(np.mean((a * y - x) ** 2)))


def si_sdr(reference, estimate) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux, Wisdom, Erdogan, Hershey, ICASSP 2019).

    ``a = <x, x_hat> / ||x||^2`` scales the reference (``x``) onto the estimate; the result is
    ``10 log10(||a x||^2 / ||x_hat - a x||^2)``.  Invariant to the gain of the estimate (and of the reference).

    Args:
        reference, estimate: ``(samples,)`` real waveforms of the same length (NumPy or torch).
    Returns:
        a float in dB, computed in float64; ``+inf`` when the estimate is an exact multiple of the reference;
        NaN when the reference or the estimate is all zeros, or for empty or non-finite input.
    """
    x, y = _pair(reference, estimate)
    if x.size == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    ref_energy = _dot(x, x)
    if ref_energy == 0.0 or not np.any(y):
        return math.nan
    target = (_dot(x, y) / ref_energy) * x
    noise = y - target
    num, den = _dot(target, target), _dot(noise, noise)
    if den == 0.0:
        return math.inf
    if num == 0.0:
        return -math.inf
    return 10.0 * math.log10(num / den)


# ----------------------------------------------------------------------------------------------------------------
# PESQ and ESTOI (never raise on bad signals)
# ----------------------------------------------------------------------------------------------------------------
def _signal_problem(x: np.ndarray, y: np.ndarray, min_samples: int) -> str | None:
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return "non-finite"
    if not np.any(x) or not np.any(y):
        return "silent"
    if x.size < min_samples:
        return "too-short"
    return None


def pesq(reference, estimate, mode: str = "wb", sample_rate: int = SAMPLE_RATE) -> Score:
    """PESQ of ``estimate`` against ``reference`` with the ``pesq`` package.

    Args:
        reference, estimate: ``(samples,)`` waveforms of the same length.
        mode: ``"wb"`` (ITU-T P.862.2 wide-band, MOS-LQO in [1.04, 4.64]) or ``"nb"`` (P.862.1 narrow-band
            MOS-LQO in [1.02, 4.55]; see :func:`pesq_nb_raw` for the raw P.862 score).
        sample_rate: 16000 (or 8000 for ``"nb"``).
    Returns:
        a :class:`Score`.  All-zero, non-finite and shorter-than-0.25 s signals, and the library's own failures
        (no utterances detected, ...), give ``Score(nan, reason)``: this function does not raise for them.
    Raises:
        ValueError: unknown mode or rate, or signals of different lengths (a caller's bug).
        MetricUnavailable: the ``pesq`` package is not installed.
    """
    if mode not in ("wb", "nb"):
        raise ValueError(f"PESQ mode must be 'wb' (wide-band) or 'nb' (narrow-band), got {mode!r}")
    if sample_rate not in (8000, 16000) or (sample_rate == 8000 and mode == "wb"):
        raise ValueError(f"PESQ needs 16000 Hz (or 8000 Hz for narrow-band), got {sample_rate} Hz in mode {mode!r}")
    x, y = _pair(reference, estimate)
    lib = _import_pesq()
    problem = _signal_problem(x, y, int(PESQ_MIN_SECONDS * sample_rate))
    if problem:
        return Score(math.nan, problem)
    # in a forked child: the pesq C library segfaults on some signals of tens of seconds
    crashed, value = run_isolated(_pesq_score, lib, sample_rate, x, y, mode)
    if crashed:
        return Score(math.nan, f"pesq crashed ({value}) on this signal")
    return (
        value if isinstance(value, Score) else Score(value) if math.isfinite(value) else Score(math.nan, "non-finite")
    )


def _pesq_score(lib, sample_rate: int, x: np.ndarray, y: np.ndarray, mode: str) -> float | Score:
    known = {lib.NoUtterancesError: "no-utterances", lib.BufferTooShortError: "too-short"}
    try:
        return float(lib.pesq(sample_rate, x, y, mode))
    except Exception as exc:  # the library's failures (NoUtterancesError, PesqError, MemoryError, ...)
        return Score(math.nan, known.get(type(exc)) or f"pesq error: {first_line(exc)}")


def pesq_nb_raw(mos_lqo: float) -> float:
    """The raw P.862 narrow-band PESQ score behind a P.862.1 MOS-LQO (what ``pesq(mode="nb")`` returns).

    Inverts ``m = 0.999 + 4 / (1 + exp(-1.4945 r + 4.6607))``: ``r = (4.6607 - ln(4 / (m - 0.999) - 1)) / 1.4945``.
    NaN in, NaN out (also for values outside the mapping's range (0.999, 4.999)).
    """
    m = float(mos_lqo)
    if not math.isfinite(m) or not 0.999 < m < 4.999:
        return math.nan
    return (_P8621_B - math.log(4.0 / (m - 0.999) - 1.0)) / _P8621_A


def estoi(reference, estimate, sample_rate: int = SAMPLE_RATE) -> Score:
    """Extended STOI (Jensen & Taal, IEEE/ACM TASLP 2016) with ``pystoi.stoi(x, y, fs, extended=True)``.

    Returns a :class:`Score` (about 0 to 1, higher is better).  All-zero or non-finite signals, and signals with
    fewer than 30 frames of speech after pystoi's silence removal (about 0.4 s; pystoi then warns and returns
    1e-5), give ``Score(nan, reason)``.
    Raises:
        ValueError: signals of different lengths.  MetricUnavailable: ``pystoi`` is not installed.
    """
    x, y = _pair(reference, estimate)
    stoi = _import_pystoi()
    problem = _signal_problem(x, y, 1)
    if problem:
        return Score(math.nan, problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(stoi(x, y, sample_rate, extended=True))
        except Exception as exc:
            return Score(math.nan, f"pystoi error: {first_line(exc)}")
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return Score(math.nan, "too-short")
    if not math.isfinite(value):
        return Score(math.nan, "non-finite")
    return Score(value)


def _import_pesq():
    try:
        import pesq as lib
    except ImportError:
        raise MetricUnavailable(
            "PESQ needs the pesq package: pip install numpy cython && pip install --no-build-isolation pesq"
        ) from None
    return lib


def _import_pystoi():
    try:
        from pystoi import stoi
    except ImportError:
        raise MetricUnavailable("ESTOI needs the pystoi package: pip install pystoi") from None
    return stoi


def check_available(metrics: Iterable[str] = METRICS) -> None:
    """Raise :class:`MetricUnavailable` (with the install command) when a package the metrics need is missing,
    and ``ValueError`` for an unknown metric name."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    if any(m.startswith("pesq") for m in metrics):
        _import_pesq()
    if "estoi" in metrics:
        _import_pystoi()


# ----------------------------------------------------------------------------------------------------------------
# One file, all metrics
# ----------------------------------------------------------------------------------------------------------------
def compute_metrics(
    reference, estimate, metrics: Sequence[str] = METRICS, sample_rate: int = SAMPLE_RATE
) -> dict[str, object]:
    """Every metric of ``metrics`` for one file; never raises.

    Returns a dict with one float per column (``pesq_nb_raw`` comes with ``pesq_nb``; NaN where it failed),
    ``"errors"``: ``{column: reason}`` for the failed ones, and ``"seconds"``: ``{metric: compute time}``.
    """
    out: dict[str, object] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in metrics:
        t0 = time.perf_counter()
        try:
            if name == "rmse":
                score = Score(rmse(reference, estimate))
            elif name == "si_sdr":
                score = Score(si_sdr(reference, estimate))
            elif name in ("pesq_wb", "pesq_nb"):
                score = pesq(reference, estimate, name[-2:], sample_rate)
            elif name == "estoi":
                score = estoi(reference, estimate, sample_rate)
            else:
                score = Score(math.nan, f"unknown metric {name!r}")
        except Exception as exc:  # shape errors, missing packages: recorded, not raised
            score = Score(math.nan, f"{type(exc).__name__}: {first_line(exc)}")
        seconds[name] = time.perf_counter() - t0
        value = float(score.value)
        if score.error is None and math.isnan(value):
            score = Score(math.nan, "nan")
        out[name] = value
        if score.error is not None:
            errors[name] = score.error
        if name == "pesq_nb":
            out["pesq_nb_raw"] = pesq_nb_raw(value)
            if "pesq_nb" in errors:
                errors["pesq_nb_raw"] = errors["pesq_nb"]
    out["errors"] = errors
    out["seconds"] = seconds
    return out


# ----------------------------------------------------------------------------------------------------------------
# Summary over files
# ----------------------------------------------------------------------------------------------------------------
def summarize(
    values: Iterable[float],
    *,
    level: float = 0.95,
    method: str = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, object]:
    """Statistics of one metric over files.

    Non-finite values (NaN for failed files, +-inf for degenerate ones) are left out and counted in ``n_failed``.

    Args:
        values: one value per file.
        level: confidence level of the interval of the mean (0.95).
        method: ``"t"``: Student-t interval ``mean +- t_{(1+level)/2, n-1} * std / sqrt(n)`` (std with ``ddof=1``);
            ``"bootstrap"``: percentile bootstrap of the mean, ``n_boot`` resamples drawn with NumPy's generator
            seeded by ``seed`` (asymmetric; ``ci_half`` is then half the interval's width).
    Returns:
        ``{"n", "n_failed", "mean", "median", "std", "min", "max", "ci_low", "ci_high", "ci_half", "level",
        "method"}``; the statistics are NaN when no value is finite, the interval too when fewer than two are.
    """
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arr = np.asarray([float(v) if v is not None else math.nan for v in values], dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    n = int(ok.size)
    nan = math.nan
    out: dict[str, object] = {
        "n": n,
        "n_failed": int(arr.size - n),
        "mean": float(ok.mean()) if n else nan,
        "median": float(np.median(ok)) if n else nan,
        "std": float(ok.std(ddof=1)) if n > 1 else nan,
        "min": float(ok.min()) if n else nan,
        "max": float(ok.max()) if n else nan,
        "ci_low": nan,
        "ci_high": nan,
        "ci_half": nan,
        "level": level,
        "method": "t-interval" if method == "t" else f"percentile bootstrap ({n_boot} resamples, seed {seed})",
    }
    if n < 2:
        return out
    mean = out["mean"]
    if method == "t":
        from scipy.stats import t as student_t

        half = float(student_t.ppf(0.5 + level / 2.0, n - 1)) * out["std"] / math.sqrt(n)
        lo, hi = mean - half, mean + half
    else:
        rng = np.random.default_rng(seed)
        means = np.empty(n_boot)
        for start in range(0, n_boot, 1000):  # chunks bound the memory to 1000 x n values
            stop = min(n_boot, start + 1000)
            means[start:stop] = ok[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
        lo, hi = (float(q) for q in np.quantile(means, [0.5 - level / 2.0, 0.5 + level / 2.0]))
        half = (hi - lo) / 2.0
    out.update(ci_low=float(lo), ci_high=float(hi), ci_half=float(half))
    return out

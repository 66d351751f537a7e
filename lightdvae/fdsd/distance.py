"""The Fréchet distance between Gaussians and the Fréchet DeepSpeech Distance (Bińkowski et al., ICLR 2020).

For feature sets ``A`` and ``B`` (one row per utterance), fit ``N(mu_a, S_a)`` and ``N(mu_b, S_b)`` (sample mean
and unbiased covariance) and report the squared 2-Wasserstein distance between them::

    FD = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^{1/2})

Numerics.  ``Tr((S_a S_b)^{1/2})`` is computed by default (``method="eigh"``) as the sum of the square roots of the
eigenvalues of the symmetric positive semi-definite matrix ``S_a^{1/2} S_b S_a^{1/2}`` (it has the eigenvalues of
``S_a S_b``), with ``S_a^{1/2}`` from a symmetric eigen-decomposition; tiny negative eigenvalues from round-off are
clipped to 0.  This route needs no regularisation when a covariance is singular (fewer utterances than feature
dimensions, or dead units), never produces complex numbers, and is evaluated in both orders and averaged so that
the result is exactly symmetric.  ``method="sqrtm"`` is the route of the FID/FDSD reference code
(``scipy.linalg.sqrtm(S_a @ S_b)``): if the square root is not finite, ``eps`` is added to both diagonals and it is
computed again; an imaginary part is dropped when the diagonal's is below 1e-3 (round-off) and an error otherwise.
Both routes agree to round-off on well-conditioned inputs; everything is float64.  The result is clipped at 0.

FDSD: features of real and generated audio from a feature network (:mod:`lightdvae.fdsd.features`), then the
Fréchet distance on equal-sized random subsets (``sample_size`` of each set), repeated ``draws`` times with a seeded
generator: the mean ± standard deviation over the draws.  The distance is biased upwards for small sets, so compare
numbers only at the same ``sample_size`` (and feature network).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_features",
    "FDSDResult",
    "fdsd_from_features",
    "fdsd",
    "fdsd_floor",
    "griffin_lim_resynthesis",
]

DEFAULT_DRAWS = 10


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(count, D)`` features -> ``(mean (D,), covariance (D, D))`` in float64 (unbiased, ``count - 1``).

    Raises ValueError for fewer than 2 rows or non-finite values.
    """
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (count, dim), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors to fit a Gaussian, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    # torch's LAPACK/BLAS calls run on torch's thread pool: NumPy's OpenBLAS spins up its own threads, which on a
    # busy machine made one 256 x 256 eigh take 2 s instead of 20 ms.
    a, b = torch.from_numpy(np.ascontiguousarray(s1)), torch.from_numpy(np.ascontiguousarray(s2))
    r = _psd_sqrt(a)
    m = r @ b @ r
    m = 0.5 * (m + m.T)
    return float(torch.linalg.eigvalsh(m).clamp_min(0.0).sqrt().sum())


def _trace_sqrt_product_sqrtm(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"matrix square root has an imaginary component {imag:.3g}; try method='eigh'")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    method: str = "eigh",
    eps: float = 1e-6,
) -> float:
    """Fréchet (2-Wasserstein squared) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1, mu2: ``(D,)`` means.
        sigma1, sigma2: ``(D, D)`` symmetric positive semi-definite covariances.
        method: ``"eigh"`` (default; symmetric eigen-decompositions, exactly symmetric in its arguments) or
            ``"sqrtm"`` (``scipy.linalg.sqrtm`` of the product, the reference FID/FDSD code); see the module doc.
        eps: diagonal offset of the ``"sqrtm"`` route's retry when the square root is not finite.
    Returns:
        A float >= 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {s1.shape} {s2.shape}")
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    if method == "eigh":
        tr_covmean = 0.5 * (_trace_sqrt_product_eigh(s1, s2) + _trace_sqrt_product_eigh(s2, s1))
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps)
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(value, 0.0)


def frechet_distance_features(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, **kwargs) -> float:
    """:func:`frechet_distance` between Gaussians fitted to two ``(count, D)`` feature sets."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b), **kwargs)


@dataclass
class FDSDResult:
    """FDSD over repeated draws: ``mean`` ± ``std`` (population std of ``values``, one per draw)."""

    mean: float
    std: float
    values: list[float]
    sample_size: int  #: utterances of each set per draw
    n_real: int
    n_fake: int
    seed: int
    features: str  #: the feature network's name, for tables
    description: str = ""  #: the feature network's one-line description
    kind: str = "real-vs-fake"  #: or "real-halves", "real-vs-griffin-lim"
    notes: list[str] = field(default_factory=list)

    @property
    def draws(self) -> int:
        return len(self.values)

    def __str__(self) -> str:
        return (
            f"{self.mean:.3f} ± {self.std:.3f} ({self.draws} draws of {self.sample_size} vs {self.sample_size}, "
            f"features {self.features})"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["draws"] = self.draws
        return d


def _check_size(sample_size: int | None, default: int, limit: int, what: str) -> int:
    n = default if sample_size is None else int(sample_size)
    if n < 2:
        raise ValueError(f"FDSD needs at least 2 utterances per set ({what}), got sample size {n}")
    if n > limit:
        raise ValueError(f"sample size {n} is larger than {what} ({limit})")
    return n


def fdsd_from_features(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    draws: int = DEFAULT_DRAWS,
    sample_size: int | None = None,
    seed: int = 0,
    features: str = "",
    description: str = "",
    method: str = "eigh",
) -> FDSDResult:
    """FDSD from precomputed features: ``draws`` times, ``sample_size`` rows drawn without replacement from each
    set (default: the smaller set's count), Fréchet distance; mean ± std.

    When both sets have exactly ``sample_size`` rows every draw is the same subset and the std is 0 (noted in
    ``notes``): generate more samples than there are real files to get a spread.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must be (count, D) with one D, got {real.shape} and {fake.shape}")
    n = _check_size(sample_size, min(len(real), len(fake)), min(len(real), len(fake)), "the smaller set")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(draws)):
        ri = np.sort(rng.choice(len(real), n, replace=False))
        fi = np.sort(rng.choice(len(fake), n, replace=False))
        values.append(frechet_distance_features(real[ri], fake[fi], method=method))
    notes = []
    if n == len(real) == len(fake) and draws > 1:
        notes.append("both sets have sample_size items: every draw uses all of them (std 0)")
    if n <= real.shape[1]:
        notes.append(f"sample size {n} <= feature dimension {real.shape[1]}: singular covariances (handled exactly)")
    return FDSDResult(
        mean=float(np.mean(values)),
        std=float(np.std(values)),
        values=[float(v) for v in values],
        sample_size=n,
        n_real=len(real),
        n_fake=len(fake),
        seed=int(seed),
        features=features,
        description=description,
        notes=notes,
    )


def _waves(x) -> list:
    from lightdvae.fdsd.features import load_waves

    if isinstance(x, (str, os.PathLike)):
        return load_waves(x)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return list(x) if x.ndim == 2 else [x]
    return list(x)


def fdsd(
    real,
    fake,
    extractor="ds2-builtin",
    *,
    draws: int = DEFAULT_DRAWS,
    sample_size: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    method: str = "eigh",
    **extractor_kwargs,
) -> FDSDResult:
    """Fréchet DeepSpeech Distance between real and generated audio.

    Args:
        real, fake: a folder of wav/flac files (loaded with :func:`~lightdvae.fdsd.features.load_waves`), a list
            of ``(samples,)`` waveforms (NumPy or torch, 16 kHz, any lengths) or a ``(count, samples)`` array.
        extractor: a registered feature network name (default ``"ds2-builtin"``), ``"ds2:FILE"``, a
            ``"module:factory"`` spec, or a :class:`~lightdvae.fdsd.features.FeatureExtractor`.
        draws: repeated draws of equal-sized subsets.
        sample_size: utterances per set per draw (default: the smaller set's count).
        seed: seeds the draws.
        batch_size: utterances per forward pass of the feature network.
        method: see :func:`frechet_distance`.
        extractor_kwargs: passed to the extractor's factory (e.g. ``device="cuda"``).
    Returns:
        :class:`FDSDResult` (``str(result)`` is ``"mean ± std (...)"``; ``result.features`` names the network).
    """
    from lightdvae.fdsd.features import extract_features, get_extractor

    ext = get_extractor(extractor, **extractor_kwargs)
    real_w, fake_w = _waves(real), _waves(fake)
    fr = extract_features(ext, real_w, batch_size=batch_size)
    ff = extract_features(ext, fake_w, batch_size=batch_size)
    return fdsd_from_features(
        fr,
        ff,
        draws=draws,
        sample_size=sample_size,
        seed=seed,
        features=ext.name,
        description=getattr(ext, "description", ext.name),
        method=method,
    )


def griffin_lim_resynthesis(
    waves: Sequence[np.ndarray | torch.Tensor],
    *,
    n_iter: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> list[np.ndarray]:
    """Each waveform resynthesised from its power spectrogram alone with the protocol's Griffin-Lim (the phase a
    generated sample would get): the real-data floor of generation.  Returns float32 arrays of the same lengths.

    Utterances of similar length run together; the padded frames have zero magnitude, so they add nothing but a few
    samples of overlap at the end, which are cut.
    """
    from lightdvae.audio import GRIFFIN_LIM_ITERS, griffin_lim, power_spectrogram

    items = [
        torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w, dtype=torch.float32) for w in waves
    ]
    n_iter = GRIFFIN_LIM_ITERS if n_iter is None else int(n_iter)
    gen = torch.Generator(device=device).manual_seed(seed)
    order = sorted(range(len(items)), key=lambda i: items[i].shape[-1])
    out: list[np.ndarray | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        longest = max(items[i].shape[-1] for i in idx)
        batch = torch.zeros(len(idx), longest, device=device)
        for row, i in enumerate(idx):
            batch[row, : items[i].shape[-1]] = items[i].to(device)
        rebuilt = griffin_lim(power_spectrogram(batch), n_iter, length=longest, generator=gen)
        for row, i in enumerate(idx):
            out[i] = rebuilt[row, : items[i].shape[-1]].cpu().numpy().astype(np.float32)
    return out


def fdsd_floor(
    real,
    extractor="ds2-builtin",
    *,
    draws: int = DEFAULT_DRAWS,
    sample_size: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    griffin_lim_iters: int | None = None,
    method: str = "eigh",
    **extractor_kwargs,
) -> dict[str, FDSDResult]:
    """The real-vs-real floors of FDSD, as the paper reports them, at one sample size ``n``.

    Each draw permutes the real set and takes two disjoint groups of ``n`` utterances (default ``n = count // 2``):

    * ``"halves"``: group 1 against group 2: the spread of the metric between two samples of real speech;
    * ``"griffin_lim"``: group 1 against the Griffin-Lim resynthesis (power spectrogram only, 100 iterations) of
      group 2: what discarding the phase costs, the best a generative model with Griffin-Lim can score.

    Compare a model's :func:`fdsd` at the same ``sample_size``.  Returns ``{"halves": ..., "griffin_lim": ...}``.
    """
    from lightdvae.fdsd.features import extract_features, get_extractor

    ext = get_extractor(extractor, **extractor_kwargs)
    real_w = _waves(real)
    count = len(real_w)
    n = _check_size(sample_size, count // 2, count // 2, "half the real set")
    feats = extract_features(ext, real_w, batch_size=batch_size)
    gl_device = extractor_kwargs.get("device") or "cpu"  # Griffin-Lim runs where the feature network runs
    gl = griffin_lim_resynthesis(real_w, n_iter=griffin_lim_iters, seed=seed, batch_size=batch_size, device=gl_device)
    feats_gl = extract_features(ext, gl, batch_size=batch_size)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {"halves": [], "griffin_lim": []}
    for _ in range(int(draws)):
        perm = rng.permutation(count)
        a, b = np.sort(perm[:n]), np.sort(perm[n : 2 * n])
        values["halves"].append(frechet_distance_features(feats[a], feats[b], method=method))
        values["griffin_lim"].append(frechet_distance_features(feats[a], feats_gl[b], method=method))
    out = {}
    for key, kind in (("halves", "real-halves"), ("griffin_lim", "real-vs-griffin-lim")):
        v = values[key]
        out[key] = FDSDResult(
            mean=float(np.mean(v)),
            std=float(np.std(v)),
            values=[float(x) for x in v],
            sample_size=n,
            n_real=count,
            n_fake=count,
            seed=int(seed),
            features=ext.name,
            description=getattr(ext, "description", ext.name),
            kind=kind,
        )
    return out

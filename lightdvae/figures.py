"""Spectrogram figures like the DVAE papers': log-power, one colour scale per figure, time in s, frequency in kHz.

Every function builds a :class:`matplotlib.figure.Figure` on the Agg canvas directly (no pyplot, no global
state, no display needed; safe in worker processes and threads) and :func:`save_figure` writes it as PNG
atomically.  Spectrograms use the package layout ``(frames, 513)`` (time before frequency), power (not
magnitude), NumPy or torch.

* :func:`spectrogram_grid`: the building block: panels in a grid (a flat list filled row by row, or explicit
  rows), one shared colour scale in dB and one colour bar.  Generation examples and the w-exchange figure
  (four spectrograms in a 2 x 2 grid) are calls of it.
* :func:`resynthesis_figure`: ground truth beside each model's resynthesis of the same utterance.

Typical use::

    from lightdvae.figures import resynthesis_figure, save_figure
    fig = resynthesis_figure(item["power"], {"LigHT-DVAE": v_light, "SRNN (TF)": v_srnn}, suptitle=name)
    save_figure(fig, "figures/resynthesis.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lightdvae._io import atomic_write
from lightdvae.audio import HOP, SAMPLE_RATE

DB_RANGE = 80.0  #: dB below the loudest bin of the figure that the colour scale spans.
POWER_FLOOR = 1e-12  #: powers below this are drawn at 10 log10(POWER_FLOOR) = -120 dB before clipping.
CMAP = "magma"
PANEL_SIZE = (4.2, 2.6)  #: inches (width, height) of one panel, colour bar excluded.

__all__ = [
    "DB_RANGE",
    "power_db",
    "color_limits",
    "plot_spectrogram",
    "spectrogram_grid",
    "resynthesis_figure",
    "save_figure",
]

Panel = tuple[str, object]  # (title, power (frames, F))


def _as_power(power) -> np.ndarray:
    if hasattr(power, "detach"):  # torch tensor
        power = power.detach().cpu().float().numpy()
    p = np.asarray(power, dtype=np.float64)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2:
        raise ValueError(f"a spectrogram must be (frames, frequency bins), got shape {p.shape}")
    return p


def power_db(power) -> np.ndarray:
    """``10 log10(max(power, 1e-12))``: a ``(frames, F)`` power spectrogram in dB (float64)."""
    return 10.0 * np.log10(np.maximum(_as_power(power), POWER_FLOOR))


def color_limits(powers: Sequence, db_range: float = DB_RANGE, vmax: float | None = None) -> tuple[float, float]:
    """One colour scale for several spectrograms: ``(vmax - db_range, vmax)`` in dB, where ``vmax`` is the
    loudest finite bin over all of them unless given."""
    if vmax is None:
        tops = [float(np.max(power_db(p))) for p in powers if _as_power(p).size]
        vmax = max(tops) if tops else 0.0
    return float(vmax) - float(db_range), float(vmax)


def plot_spectrogram(
    ax,
    power,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    cmap: str = CMAP,
    sample_rate: int = SAMPLE_RATE,
    hop: int = HOP,
    xlabel: bool = True,
    ylabel: bool = True,
):
    """Draw one ``(frames, F)`` power spectrogram on ``ax`` in dB: time in s on x (frame ``t`` centred at
    ``t * hop / sample_rate``), frequency in kHz on y (0 to ``sample_rate / 2``).  Returns the image artist."""
    db = power_db(power)
    frames, bins = db.shape
    if vmin is None or vmax is None:
        lo, hi = color_limits([power])
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    dt = hop / sample_rate
    df = sample_rate / 2.0 / max(bins - 1, 1) / 1000.0
    extent = (-dt / 2, (frames - 0.5) * dt, -df / 2, (bins - 0.5) * df)
    image = ax.imshow(
        db.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=extent,
    )
    ax.set_ylim(0.0, (bins - 1) * df)
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel("time (s)")
    if ylabel:
        ax.set_ylabel("frequency (kHz)")
    return image


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(panels, ncols: int | None) -> list[list[Panel | None]]:
    """Rows of panels: explicit rows (a sequence of sequences of panels) or a flat list filled row by row."""
    panels = list(panels)
    if not panels:
        raise ValueError("a figure needs at least one spectrogram")
    explicit = all(r is None or (isinstance(r, Sequence) and not _is_panel(r)) for r in panels)
    if explicit:
        rows = [list(r) if r is not None else [] for r in panels]
    else:
        ncols = ncols or min(len(panels), 4)
        rows = [panels[i : i + ncols] for i in range(0, len(panels), ncols)]
    for row in rows:
        for p in row:
            if p is not None and not _is_panel(p):
                raise ValueError(f"each panel must be (title, power spectrogram), got {type(p).__name__}")
    return rows


def _is_panel(p) -> bool:
    return isinstance(p, tuple) and len(p) == 2 and (p[0] is None or isinstance(p[0], str)) and hasattr(p[1], "shape")


def spectrogram_grid(
    panels,
    *,
    ncols: int | None = None,
    suptitle: str | None = None,
    db_range: float = DB_RANGE,
    vmax: float | None = None,
    cmap: str = CMAP,
    panel_size: tuple[float, float] = PANEL_SIZE,
    colorbar: bool = True,
    share_time: bool | None = None,
):
    """A grid of log-power spectrograms with one colour scale and one colour bar.

    Args:
        panels: ``[(title, power), ...]`` filled row by row into ``ncols`` columns (default: up to 4), or explicit
            rows ``[[(title, power), ...], ...]`` (``None`` leaves a cell empty).  ``power`` is ``(frames, F)``.
        suptitle: title of the whole figure.
        db_range, vmax: the colour scale is ``[vmax - db_range, vmax]`` dB; ``vmax`` defaults to the loudest bin of
            all panels, so every panel is drawn on the same scale.
        cmap: matplotlib colour map.
        panel_size: (width, height) of one panel in inches.
        colorbar: draw one colour bar (power in dB) for the figure.
        share_time: one time axis for all panels (default: when all have the same number of frames).
    Returns:
        the :class:`matplotlib.figure.Figure` (Agg canvas); pass it to :func:`save_figure`.
    """
    rows = _grid(panels, ncols)
    ncols = max(len(r) for r in rows)
    nrows = len(rows)
    flat = [p for r in rows for p in r if p is not None]
    if not flat:
        raise ValueError("a figure needs at least one spectrogram")
    vmin, vmax = color_limits([p[1] for p in flat], db_range=db_range, vmax=vmax)
    if share_time is None:
        share_time = len({_as_power(p[1]).shape[0] for p in flat}) == 1
    width = panel_size[0] * ncols + (0.9 if colorbar else 0.0)
    height = panel_size[1] * nrows + (0.4 if suptitle else 0.0)
    fig = _figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=bool(share_time), sharey=True)
    image = None
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r][c]
            panel = rows[r][c] if c < len(rows[r]) else None
            if panel is None:
                ax.set_axis_off()
                continue
            title, power = panel
            below_empty = r + 1 < nrows and (c >= len(rows[r + 1]) or rows[r + 1][c] is None)
            image = plot_spectrogram(
                ax,
                power,
                vmin=vmin,
                vmax=vmax,
                title=title,
                cmap=cmap,
                xlabel=(r == nrows - 1) or below_empty or not share_time,
                ylabel=(c == 0),
            )
    if colorbar and image is not None:
        cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, pad=0.01)
        cbar.set_label("power (dB)")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def resynthesis_figure(
    reference,
    estimates: Mapping[str, object] | Sequence[Panel],
    *,
    reference_title: str = "ground truth",
    ncols: int | None = None,
    suptitle: str | None = None,
    **kwargs,
):
    """Ground truth beside each model's resynthesis of one utterance, on one colour scale.

    Args:
        reference: ``(frames, F)`` power spectrogram of the original.
        estimates: ``{label: (frames, F) power}`` (the models' variance estimates ``v_hat``, or the power of their
            resynthesised waveforms), or a sequence of ``(label, power)``; drawn in this order after the reference.
        ncols: panels per row (default: all in one row up to 4, then rows of up to 4).
        suptitle, kwargs: passed to :func:`spectrogram_grid`.
    """
    items = list(estimates.items()) if isinstance(estimates, Mapping) else list(estimates)
    frames = _as_power(reference).shape[0]
    for label, power in items:
        if _as_power(power).shape[0] != frames:
            raise ValueError(f"{label}: {_as_power(power).shape[0]} frames, the reference has {frames}")
    panels = [(reference_title, reference), *items]
    ncols = ncols or min(len(panels), 4 if len(panels) != 5 else 3)
    return spectrogram_grid(panels, ncols=ncols, suptitle=suptitle, **kwargs)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG (or the format of ``path``'s suffix) under a temporary name, then rename it into
    place, so a reader never sees half a file.  Returns the path."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi))
    return path


def learning_curves(curves: Mapping[str, Sequence[Mapping]], title: str | None = None):
    """Learning curves of several runs: validation loss, and the GEN / GT SI-SDR of ``--curve-every``, against
    epochs (top) and against training wall time (bottom).

    ``curves``: label -> the run's ``log.csv`` rows (dicts with ``epoch``, ``val_loss``, ``seconds`` and, where
    measured, ``val_si_sdr_gen`` / ``val_si_sdr_gt``; numbers or numeric strings).  Returns a matplotlib Figure.
    """
    fig = _figure(11.0, 6.5)
    axes = fig.subplots(2, 2)
    for k, (label, rows) in enumerate(curves.items()):
        color = f"C{k}"
        epoch = np.array([float(r["epoch"]) for r in rows])
        minutes = np.cumsum([float(r["seconds"]) for r in rows]) / 60.0
        loss = np.array([float(r["val_loss"]) for r in rows])
        points = [i for i, r in enumerate(rows) if str(r.get("val_si_sdr_gen") or "") not in ("", "nan", "None")]
        gen = np.array([float(rows[i]["val_si_sdr_gen"]) for i in points])
        gt = np.array([float(rows[i]["val_si_sdr_gt"]) for i in points])
        for row, x in enumerate((epoch, minutes)):
            axes[row][0].plot(x, loss, color=color, lw=1.2, label=label)
            if points:
                axes[row][1].plot(x[points], gen, color=color, lw=1.4, marker="o", ms=2.5, label=f"{label} GEN")
                axes[row][1].plot(x[points], gt, color=color, lw=1.0, ls="--", label=f"{label} GT")
    for row, xlabel in enumerate(("epoch", "training wall time (min)")):
        axes[row][0].set(xlabel=xlabel, ylabel="validation loss (neg. ELBO / frame)")
        axes[row][1].set(xlabel=xlabel, ylabel="validation SI-SDR (dB)")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    lows = [float(r["val_loss"]) for rows in curves.values() for r in rows]
    if lows:  # the first epochs' losses would flatten the rest
        top = float(np.percentile(lows, 95))
        for row in range(2):
            axes[row][0].set_ylim(min(lows) - 0.05 * abs(min(lows)), top)
    axes[0][0].legend(fontsize=8)
    axes[0][1].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    return fig

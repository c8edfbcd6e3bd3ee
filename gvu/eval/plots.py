"""Small matplotlib helpers shared by the analyses and reports: a bar chart, line plots of metrics over steps,
and image grids with a green/red border for correct/incorrect.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas, never through pyplot, so
nothing here touches a global backend or leaves figures open in a long training process.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

GREEN = (40, 170, 70)
RED = (215, 40, 40)
GREY = (200, 200, 200)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def bar_chart(labels: Sequence[str], values: Sequence[float], path: str | os.PathLike, *,
              reference: Sequence[float | None] | None = None, annotations: Sequence[str] | None = None,
              title: str = "", ylabel: str = "", value_label: str = "value",
              reference_label: str = "reference") -> Path:
    """Bars of `values`; where `reference` is given, an outlined bar beside each (e.g. the same prompts before an
    ablation) so a drop reads off the picture; `annotations` are written above each bar pair."""
    n = len(labels)
    if len(values) != n or (reference is not None and len(reference) != n) or (
            annotations is not None and len(annotations) != n):
        raise ValueError("labels, values, reference and annotations must have the same length")
    fig = _figure(max(4.0, 1.0 + 0.9 * n), 4.0)
    ax = fig.add_subplot()
    x = np.arange(n, dtype=float)
    ref = [None] * n if reference is None else list(reference)
    paired = np.array([r is not None for r in ref])
    width = 0.38 if paired.any() else 0.7
    if paired.any():
        ax.bar(x[paired] - width / 2, [r for r in ref if r is not None], width, facecolor="white",
               edgecolor="0.35", hatch="//", label=reference_label)
    vx = np.where(paired, x + width / 2, x)  # a bar without a reference sits in the middle of its slot
    ax.bar(vx, values, width, color="#3b75af", label=value_label)
    finite = [v for v in list(values) + [r for r in ref if r is not None] if v is not None and np.isfinite(v)]
    top = max(finite + [0.0]) or 1.0
    if annotations is not None:
        for i, text in enumerate(annotations):
            if text:
                h = max(values[i], ref[i] if ref[i] is not None else 0.0)
                ax.text(x[i], h + 0.02 * top, text, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, top * (1.35 if paired.any() else 1.2))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if paired.any():
        ax.legend(fontsize=8, loc="upper left", ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def labelled_scatter(series: Mapping[str, Sequence[tuple[float, float, str]]], path: str | os.PathLike, *,
                     title: str = "", xlabel: str = "", ylabel: str = "", hline: float | None = None,
                     vline: float | None = None) -> Path:
    """One marker style per series, each point (x, y, name) annotated with its name; optional reference lines."""
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot()
    markers = "osD^v<>"
    for k, (label, pts) in enumerate(series.items()):
        if not pts:
            continue
        x, y, names = zip(*pts)
        ax.scatter(x, y, marker=markers[k % len(markers)], s=45, label=label)
        for xi, yi, n in zip(x, y, names):
            ax.annotate(n, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if hline is not None:
        ax.axhline(hline, color="0.6", lw=0.8)
    if vline is not None:
        ax.axvline(vline, color="0.6", lw=0.8, ls=":")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
              title: str = "", xlabel: str = "step", ylabel: str = "") -> Path:
    """Several named (x, y) lines on one axes."""
    fig = _figure(6.0, 3.5)
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=name, lw=1.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def metrics_plot(records: Sequence[Mapping], keys: Sequence[str], path: str | os.PathLike, *,
                 step_key: str = "step", ncols: int = 3, title: str = "",
                 empty_notes: Mapping[str, str] | None = None) -> Path:
    """One small panel per metric from a log (a list of dicts, e.g. JSON lines); records without the metric,
    or with None/NaN for it, are skipped (evaluation metrics are logged only every few steps). A panel with no
    value at all says so in words (`empty_notes[key]`, or a plain 'no finite value logged') instead of
    standing blank."""
    if not keys:
        raise ValueError("no metrics to plot")
    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = _figure(3.2 * ncols, 2.4 * nrows)
    for k, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        pts = [(r[step_key], float(r[key])) for r in records
               if isinstance(r.get(key), (int, float)) and step_key in r and np.isfinite(r[key])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, lw=1.2, marker="." if len(pts) < 30 else None)
        else:
            note = (empty_notes or {}).get(key, "no finite value logged")
            ax.text(0.5, 0.5, "\n".join(textwrap.wrap(note, 30)), transform=ax.transAxes, ha="center",
                    va="center", fontsize=7, color="0.35")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def tile_images(images: Sequence[np.ndarray] | np.ndarray, correct: Sequence[bool | None] | None = None,
                ncols: int | None = None, border: int = 3, pad: int = 2, background: int = 255) -> np.ndarray:
    """uint8 [H', W', 3]: images in a grid, each framed green (correct), red (incorrect) or grey (None/unknown)."""
    imgs = [np.asarray(im) for im in images]
    if not imgs:
        raise ValueError("no images to tile")
    h, w = imgs[0].shape[:2]
    for im in imgs:
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape != (h, w, 3):
            raise ValueError(f"images must all be uint8 [{h}, {w}, 3], got {im.dtype} {im.shape}")
    if correct is not None and len(correct) != len(imgs):
        raise ValueError(f"{len(correct)} verdicts for {len(imgs)} images")
    ncols = ncols or min(len(imgs), 8)
    nrows = math.ceil(len(imgs) / ncols)
    ch, cw = h + 2 * border + 2 * pad, w + 2 * border + 2 * pad
    out = np.full((nrows * ch, ncols * cw, 3), background, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncols)
        y, x = r * ch + pad, c * cw + pad
        verdict = None if correct is None else correct[i]
        out[y:y + h + 2 * border, x:x + w + 2 * border] = GREY if verdict is None else GREEN if verdict else RED
        out[y + border:y + border + h, x + border:x + border + w] = im
    return out


def image_grid(images: Sequence[np.ndarray] | np.ndarray, path: str | os.PathLike, *,
               captions: Sequence[str] | None = None, correct: Sequence[bool | None] | None = None,
               ncols: int | None = None, title: str = "", caption_width: int = 28) -> Path:
    """A PNG grid of images with a wrapped caption under each and a green/red border for correct/incorrect."""
    imgs = list(images)
    if captions is not None and len(captions) != len(imgs):
        raise ValueError(f"{len(captions)} captions for {len(imgs)} images")
    ncols = ncols or min(len(imgs), 6)
    nrows = math.ceil(len(imgs) / ncols)
    lines = max((len(textwrap.wrap(c, caption_width)) for c in captions), default=0) if captions else 0
    fig = _figure(1.9 * ncols, (1.9 + 0.11 * lines) * nrows + (0.4 if title else 0))
    for i, im in enumerate(imgs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        tile = tile_images([im], None if correct is None else [correct[i]], ncols=1, pad=0)
        ax.imshow(tile, interpolation="nearest")
        ax.set_axis_off()
        if captions is not None:
            ax.text(0.5, -0.03, "\n".join(textwrap.wrap(captions[i], caption_width)), transform=ax.transAxes,
                    ha="center", va="top", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

"""Scaling-law fits and their plot: L(N) = a * N^-b + c per architecture, loss against parameters
and against training compute.

The fit is exact least squares in L over (a, b) for each irreducible loss c on a fine grid below
the smallest observed loss (for fixed c, log(L - c) = log a - b log N is a line), keeping the c
with the smallest squared error. Three parameters from a handful of points: no optimizer, no
starting guess to get wrong, and the same answer every time.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def fit_power_law(n: list[float], loss: list[float], grid: int = 2000) -> dict:
    """{a, b, c, rmse} of L = a * N^-b + c; ValueError with fewer than 3 points."""
    if len(n) < 3:
        raise ValueError(f"a power law with an offset needs at least 3 points, got {len(n)}")
    N, L = np.asarray(n, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    logN = np.log(N)
    best = None
    for c in np.linspace(0.0, L.min(), grid, endpoint=False):
        slope, intercept = np.polyfit(logN, np.log(L - c), 1)
        pred = np.exp(intercept) * N**slope + c
        sse = float(((pred - L) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, math.exp(intercept), -slope, c)
    sse, a, b, c = best
    return {"a": a, "b": b, "c": float(c), "rmse": math.sqrt(sse / len(L))}


def predict(fit: dict, n) -> np.ndarray:
    return fit["a"] * np.asarray(n, dtype=np.float64) ** -fit["b"] + fit["c"]


def plot_scaling(rows: list[dict], fits: dict[str, dict], title: str) -> Figure:
    """Two panels: final val loss against parameters (with the fitted curves) and against compute."""
    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    ax_n, ax_c = fig.subplots(1, 2)
    for i, arch in enumerate(sorted({r["arch"] for r in rows})):
        mine = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["params"])
        colour = f"C{i}"
        n = [r["params"] for r in mine]
        ax_n.plot(n, [r["val_loss"] for r in mine], "o", color=colour)
        ax_c.plot([r["compute_flops"] for r in mine], [r["val_loss"] for r in mine], "o-", color=colour, label=arch)
        if arch in fits:
            f = fits[arch]
            xs = np.geomspace(min(n) / 1.5, max(n) * 1.5, 100)
            ax_n.plot(xs, predict(f, xs), "-", color=colour,
                      label=f"{arch}: {f['a']:.3g} N^-{f['b']:.3f} + {f['c']:.3f}")
        else:
            ax_n.plot(n, [r["val_loss"] for r in mine], "-", color=colour, label=arch)
    ax_n.set(xscale="log", xlabel="parameters N", ylabel="final val loss (nats/token)", title="loss vs parameters")
    ax_c.set(xscale="log", xlabel="training compute (model FLOPs)", ylabel="final val loss (nats/token)",
             title="loss vs compute")
    for ax in (ax_n, ax_c):
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

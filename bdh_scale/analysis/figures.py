"""Figures and JSON files of the analyses: Agg canvas (no display, works headless and in tests)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bdh_scale.utils.atomic import write_json_atomic


def new_figure(n_axes: int = 1, width: float = 9.0, height: float = 5.0):
    """(figure, list of axes) stacked vertically."""
    fig = Figure(figsize=(width, height * n_axes), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(n_axes, 1, i + 1) for i in range(n_axes)]
    return fig, axes


def save(fig, report: dict, out: Path, name: str) -> tuple[Path, Path]:
    """Write <out>/<name>.json and <out>/<name>.png; return their paths."""
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, report)
    fig.tight_layout()
    fig.savefig(png_path, format="png")
    return json_path, png_path


def head_labels(report_layers: list[dict]) -> list[str]:
    """'<layer>/h<i>' for every head of every layer entry (entries have 'layer' and per-head lists)."""
    return [f"{e['layer']}/h{h}" for e in report_layers for h in range(e["n_head"])]


def mark_out_of_reach(ax, xs: list, reach: int | None) -> None:
    """A grey band at each x a stateless model cannot read from (in_window.py), one legend entry:
    out of reach is shown as such, never drawn as a value. vlines, not axvline: its limits wait
    for the axis scale (a symlog axis set afterwards would otherwise get linear margins)."""
    if xs:
        ax.vlines(xs, 0, 1, transform=ax.get_xaxis_transform(), color="0.6", lw=10, alpha=0.35, zorder=0,
                  label=f"out of reach (past its {reach}-token window)")

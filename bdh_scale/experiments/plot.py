"""bdh-plot: loss curves of one or more runs in one PNG.

Each run directory holds `metrics.jsonl` written by the trainer, one JSON object per line
(step, tokens, loss, lr, tokens_per_s; val_loss / val_bpb on eval steps). Train loss is a
solid line and val loss a dashed line with markers in the same colour, one colour per run.
Rendering uses the Agg canvas directly (no pyplot, no display needed), so it works on
headless nodes and from tests.

Runs that were resumed append records for steps they had already logged; the latest
record for an x value wins, so the curve shows the history that led to the final model.
A line that is not valid JSON (e.g. the half-written last line of a live run) is skipped.

`--reference LABEL=FILE.csv` adds published figures to compare with (black markers): a CSV whose
header names the x axis (step, tokens or elapsed_s) and val_loss.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bdh_scale import rundir


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of run_dir/metrics.jsonl; ValueError with a one-line reason if unusable."""
    if not run_dir.is_dir():
        raise ValueError(f"run directory not found: {run_dir}")
    path = run_dir / rundir.METRICS
    if not path.is_file():
        raise ValueError(f"no {rundir.METRICS} in {run_dir}")
    records = rundir.read_metrics(run_dir)
    if not records:
        raise ValueError(f"{path} has no metrics records")
    return records


def series(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) for records that have both keys, sorted by x, last record per x kept."""
    points = {r[x]: r[y] for r in records if r.get(x) is not None and r.get(y) is not None}
    xs = sorted(points)
    return xs, [points[k] for k in xs]


def read_reference(spec: str, x: str) -> tuple[str, list[float], list[float]]:
    """'LABEL=FILE.csv' -> (label, xs, val_losses); ValueError with a one-line reason if unusable."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"--reference {spec!r}: expected LABEL=FILE.csv, e.g. 'M1 log=figures.csv'")
    if not Path(path).is_file():
        raise ValueError(f"--reference {label}: no file {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or x not in rows[0] or "val_loss" not in rows[0]:
        raise ValueError(f"--reference {label}: {path} needs a header with columns {x} and val_loss")
    try:
        points = sorted((float(r[x]), float(r["val_loss"])) for r in rows if r["val_loss"] not in ("", None))
    except ValueError as err:
        raise ValueError(f"--reference {label}: {path} has a value that is not a number ({err})") from None
    return label, [p[0] for p in points], [p[1] for p in points]


AXIS = {"step": "step", "tokens": "tokens", "elapsed_s": "seconds of training"}


def plot_runs(run_dirs: list[Path], out: Path, x: str = "step", logy: bool = False, title: str | None = None,
              references: list[str] = ()) -> Figure:
    fig = Figure(figsize=(9, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drew = False
    for i, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        colour = f"C{i % 10}"
        name = run_dir.resolve().name
        xs, ys = series(records, x, "loss")
        if xs:
            ax.plot(xs, ys, color=colour, lw=1.2, label=f"{name} train")
            drew = True
        xs, ys = series(records, x, "val_loss")
        if xs:
            ax.plot(xs, ys, color=colour, lw=1.6, ls="--", marker="o", ms=3, label=f"{name} val")
            drew = True
    if not drew:
        raise ValueError(f"no loss values against '{x}' in any run")
    for spec in references:
        label, xs, ys = read_reference(spec, x)
        ax.plot(xs, ys, color="black", ls="none", marker="s", ms=5, label=f"{label} val")
    ax.set_xlabel(AXIS[x])
    ax.set_ylabel("loss (nats/token)")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "loss")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bdh-plot", description="Plot train/val loss of bdh-scale runs into a PNG.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, each with metrics.jsonl")
    parser.add_argument("--out", type=Path, default=Path("loss.png"), help="PNG path (default: loss.png)")
    parser.add_argument("--x", choices=("step", "tokens", "elapsed_s"), default="step",
                        help="x axis: step, tokens, or elapsed_s (seconds of training: equal wall-clock; default: step)")
    parser.add_argument("--logy", action="store_true", help="log-scale loss axis")
    parser.add_argument("--title", default=None)
    parser.add_argument("--reference", action="append", default=[], metavar="LABEL=FILE.csv",
                        help="published val_loss figures to compare with: a CSV with columns <x> and val_loss")
    args = parser.parse_args(argv)
    try:
        plot_runs(args.runs, args.out, x=args.x, logy=args.logy, title=args.title, references=args.reference)
    except ValueError as err:
        sys.exit(f"bdh-plot: error: {err}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

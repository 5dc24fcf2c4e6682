"""The memory experiment's figures (experiments/memory.py measures, this draws): loss by context
per dataset and T, passkey recall per T, MQAR recall per dataset and T. Each run is one colour,
its carried reading solid and its independent windows dotted; a run without a state has its
window reading alone, and grey bands where a distance or a context bucket is out of its reach.
"""
from __future__ import annotations

import math

from bdh_scale.analysis.figures import mark_out_of_reach, new_figure
from bdh_scale.analysis.in_window import value


def draw_pair(ax, i: int, label: str, xs, carried, window):
    """One run on one panel: its carried reading solid, its independent windows dotted, one colour.
    A stateless run (carried None) gets its window reading solid with square markers, where it
    reaches (a window value of None is out of reach: left out, marked by the caller)."""
    if carried is None:
        near = [(x, w) for x, w in zip(xs, window) if w is not None]
        ax.plot([x for x, _ in near], [w for _, w in near], "s-", color=f"C{i}", label=f"{label} in window, no state")
        return
    ax.plot(xs, carried, "o-", color=f"C{i}", label=f"{label} carried")
    ax.plot(xs, window, ":", color=f"C{i}", alpha=0.7)


def readings(points: list[dict], metric: str | None) -> tuple[list | None, list]:
    """(carried values, or None for a stateless run; window values, None where out of reach)."""
    stateful = all("carried" in p for p in points)
    carried = [value(p["carried"], metric) for p in points] if stateful else None
    return carried, [value(p["window"], metric) for p in points]


def out_of_reach(ax, rows: list[dict], key: str, at) -> None:
    """Grey bands where the stateless runs of a panel cannot reach (one set per panel)."""
    far = sorted({at(p) for r in rows for p in r[key] if p.get("out_of_reach")})
    mark_out_of_reach(ax, far, min((r["reach_tokens"] for r in rows if "reach_tokens" in r), default=None))


def finish_panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("symlog", base=2, linthresh=1)  # log from 1 on, and room for a distance of 0
    ax.set_title(f"{title} (solid: carried state, dotted: independent windows)", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def plot_context(rows: list[dict]):
    rows = [r for r in rows if "context" in r]
    groups = sorted({(r["dataset"], r["T"]) for r in rows})
    fig, axes = new_figure(len(groups), height=3.8)
    for ax, (dataset, T) in zip(axes, groups):
        here = [r for r in rows if (r["dataset"], r["T"]) == (dataset, T)]
        for i, r in enumerate(here):
            b = [x for x in r["context"] if "carried" not in x or x["carried"] is not None]  # buckets read
            draw_pair(ax, i, r["variant"], [max(x["context_from"], 1) for x in b], *readings(b, None))
        out_of_reach(ax, here, "context", lambda x: max(x["context_from"], 1))
        finish_panel(ax, f"{dataset}, T = {T}: loss by context",
                     "tokens of context before the token (bucket start)", "nats/token")
    return fig


def plot_recall(rows: list[dict]):
    """Per T: exact-match recall and the loss on the answer's tokens against the distance."""
    rows = [r for r in rows if "recall" in r]
    Ts = sorted({r["T"] for r in rows})
    fig, axes = new_figure(2 * max(1, len(Ts)), height=3.4)
    for k, T in enumerate(Ts):
        here = [r for r in rows if r["T"] == T]
        for ax, metric, ylabel in ((axes[2 * k], "exact_match", "exact match"),
                                   (axes[2 * k + 1], "answer_loss", "answer loss, nats/token")):
            for i, r in enumerate(here):
                draw_pair(ax, i, r["variant"], [d["distance_windows"] for d in r["recall"]],
                          *readings(r["recall"], metric))
            out_of_reach(ax, here, "recall", lambda d: d["distance_windows"])
            if metric == "answer_loss":  # a model that only knows the answer is digits: log 10 nats
                ax.axhline(math.log(10), color="k", lw=0.8, ls="--", label="uniform over digits")
            finish_panel(ax, f"passkey, T = {T}: {ylabel}", "distance between fact and question (windows of T)",
                         ylabel)
        axes[2 * k].set_ylim(-0.02, 1.02)
    return fig


def plot_mqar(rows: list[dict]):
    """Per MQAR dataset and T: answer accuracy against the distance between pairs and queries."""
    rows = [r for r in rows if "mqar_recall" in r]
    groups = sorted({(r["dataset"], r["T"]) for r in rows})
    fig, axes = new_figure(len(groups), height=3.8)
    for ax, (dataset, T) in zip(axes, groups):
        here = [r for r in rows if (r["dataset"], r["T"]) == (dataset, T)]
        for i, r in enumerate(here):
            draw_pair(ax, i, r["variant"], [d["distance_windows"] for d in r["mqar_recall"]],
                      *readings(r["mqar_recall"], "accuracy"))
        out_of_reach(ax, here, "mqar_recall", lambda d: d["distance_windows"])
        ax.axhline(here[0]["chance_accuracy"], color="k", lw=0.8, ls="--", label="chance, pairs in view")
        ax.axhline(here[0]["chance_without_pairs"], color="k", lw=0.8, ls="-.", label="chance, pairs out of view")
        finish_panel(ax, f"{dataset} ({here[0]['pairs']} pairs), T = {T}: MQAR recall",
                     "windows between pairs and queries", "accuracy on the values")
        ax.set_ylim(-0.02, 1.02)
    return fig


def save_figure(fig, path: str) -> None:
    fig.tight_layout()  # panel titles clear of the axis labels above them
    fig.savefig(path, dpi=110)

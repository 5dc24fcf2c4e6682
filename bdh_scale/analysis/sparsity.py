"""How many neurons fire: fractions of x_sparse > 0, y_sparse > 0 and of their product, per layer
and head, over validation windows. The paper reports about 5% of neurons active per token."""
from __future__ import annotations

from collections import defaultdict

import torch

from bdh_scale.analysis.figures import head_labels, new_figure
from bdh_scale.analysis.inputs import windows
from bdh_scale.model.bdh.probes import capture_codes

PAPER_ACTIVE = 0.05


@torch.no_grad()
def activation_sparsity(model, tokens: torch.Tensor, seq_len: int, batch_size: int) -> dict:
    """Report: per layer, per head fractions of active neurons (x, y, xy), and their means."""
    device = next(model.parameters()).device
    active = defaultdict(lambda: torch.zeros(3, dtype=torch.float64))  # per (layer, head): x, y, xy
    total = defaultdict(int)  # neuron-token pairs seen per (layer, head)

    def sink(name, x_sparse, y_sparse):
        per_head = torch.stack([(x_sparse > 0), (y_sparse > 0), (x_sparse * y_sparse > 0)])  # (3, B, H, T, N)
        counts = per_head.sum(dim=(1, 3, 4), dtype=torch.float64).cpu()  # (3, H)
        for h in range(counts.size(1)):
            active[name, h] += counts[:, h]
            total[name, h] += x_sparse[:, h].numel()

    n_tokens = 0
    with capture_codes(model, sink):
        for x, _ in windows(tokens, seq_len, batch_size):
            model(x.to(device))
            n_tokens += x.numel()
    layers = {}
    for (name, h), counts in active.items():
        entry = layers.setdefault(name, {"layer": name, "x_active": [], "y_active": [], "xy_active": []})
        for key, c in zip(("x_active", "y_active", "xy_active"), counts.tolist()):
            entry[key].append(c / total[name, h])
    entries = list(layers.values())
    for e in entries:
        e["n_head"] = len(e["x_active"])
    mean = {k: sum(sum(e[k]) for e in entries) / sum(e["n_head"] for e in entries)
            for k in ("x_active", "y_active", "xy_active")}
    return {"tokens": n_tokens, "layers": entries, "mean": mean, "paper_active": PAPER_ACTIVE,
            "definition": "fraction of (token, neuron) pairs with x_sparse > 0, y_sparse > 0 and "
                          "x_sparse * y_sparse > 0, per layer and head; layers called several times "
                          "(bdh_hrm cycles) pool all calls"}


def plot(report: dict):
    fig, (ax,) = new_figure(width=max(6.0, 0.5 * sum(e["n_head"] for e in report["layers"]) + 3))
    labels = head_labels(report["layers"])
    xs = range(len(labels))
    for i, (key, colour) in enumerate((("x_active", "C0"), ("y_active", "C1"), ("xy_active", "C2"))):
        values = [v for e in report["layers"] for v in e[key]]
        ax.bar([x + (i - 1) * 0.27 for x in xs], values, width=0.27, color=colour,
               label=f"{key.replace('_active', '')} (mean {report['mean'][key]:.1%})")
    ax.axhline(PAPER_ACTIVE, color="k", ls="--", lw=1, label="5% (paper)")
    ax.set_xticks(list(xs), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("fraction of neurons active")
    ax.set_title(f"BDH activation sparsity over {report['tokens']:,} tokens")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig

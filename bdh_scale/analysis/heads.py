"""Head ablation: the validation loss when one head of one layer is silenced.

Silencing zeroes the head's x_sparse * y_sparse before the decoder (capture.ablate_heads).
Heads of a layer meet only in the decoder (each has its own encoder, attention and encoder_v;
they share the value x), so this removes exactly that head's contribution to the layer. A head
whose removal raises the loss by less than `threshold` (relative, default 1%) is marked prunable.

Heads matter together as well as alone: `together` then silences the k heads whose removal alone
cost least, all at once (across layers), for k = 1 .. `together`, so the curve says how many heads
can go at what cost, which single-head numbers cannot (two redundant heads may each look free).
"""
from __future__ import annotations

from contextlib import ExitStack

import torch

from bdh_scale.analysis.figures import new_figure
from bdh_scale.analysis.inputs import windows
from bdh_scale.model.bdh.probes import ablate_heads, bdh_layers


@torch.no_grad()
def mean_loss(model, tokens, seq_len, batch_size) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in windows(tokens, seq_len, batch_size):
        total += model(x.to(device), y.to(device)).loss.item() * y.numel()
        count += y.numel()
    return total / count


def silenced_loss(model, heads: list[tuple[str, int]], tokens, seq_len, batch_size) -> float:
    """The loss with every (layer name, head) of `heads` silenced at once."""
    layers = dict(bdh_layers(model))
    with ExitStack() as stack:
        for name in {n for n, _ in heads}:
            stack.enter_context(ablate_heads(layers[name], [h for n, h in heads if n == name]))
        return mean_loss(model, tokens, seq_len, batch_size)


def head_ablation(model, tokens: torch.Tensor, seq_len: int, batch_size: int, threshold: float = 0.01,
                  together: int = 0) -> dict:
    """Report: base loss; per layer and head the ablated loss, its change and whether it is prunable;
    with `together` > 0, the loss with the k least important heads silenced at once, k = 1..together."""
    base = mean_loss(model, tokens, seq_len, batch_size)
    layers, prunable = [], []
    for name, layer in bdh_layers(model):
        entry = {"layer": name, "n_head": layer.config.n_head, "loss": [], "delta": [], "relative": [], "prunable": []}
        for h in range(layer.config.n_head):
            with ablate_heads(layer, [h]):
                loss = mean_loss(model, tokens, seq_len, batch_size)
            rel = (loss - base) / base
            entry["loss"].append(loss)
            entry["delta"].append(loss - base)
            entry["relative"].append(rel)
            entry["prunable"].append(rel < threshold)
            if rel < threshold:
                prunable.append(f"{name}/h{h}")
        layers.append(entry)
    ranked = sorted(((e["delta"][h], e["layer"], h) for e in layers for h in range(e["n_head"])))
    curve = []
    for k in range(1, min(together, len(ranked) - 1) + 1):
        heads = [(name, h) for _, name, h in ranked[:k]]
        loss = silenced_loss(model, heads, tokens, seq_len, batch_size)
        curve.append({"k": k, "heads": [f"{n}/h{h}" for n, h in heads], "loss": loss, "relative": (loss - base) / base})
    return {"base_loss": base, "threshold": threshold, "tokens": int(len(tokens)), "layers": layers,
            "prunable": prunable, "together": curve,
            "definition": "relative = (val loss with the head's x_sparse*y_sparse zeroed - base) / base; "
                          "prunable when relative < threshold"}


def plot(report: dict):
    layers = report["layers"]
    n_head = max(e["n_head"] for e in layers)
    grid = torch.full((len(layers), n_head), float("nan"))
    for i, e in enumerate(layers):
        grid[i, : e["n_head"]] = torch.tensor(e["relative"]) * 100
    curve = report.get("together") or []
    fig, axes = new_figure(n_axes=2 if curve else 1, width=max(5.0, 1.2 * n_head + 3),
                           height=max(3.0, 0.6 * len(layers) + 2))
    ax = axes[0]
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="val loss increase (%)")
    for i, e in enumerate(layers):
        for h in range(e["n_head"]):
            bright = im.norm(e["relative"][h] * 100) > 0.6  # viridis is light at the top end
            ax.text(h, i, f"{e['relative'][h] * 100:+.2f}%" + ("\nprunable" if e["prunable"][h] else ""),
                    ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_xticks(range(n_head), [f"h{h}" for h in range(n_head)])
    ax.set_yticks(range(len(layers)), [e["layer"] for e in layers])
    ax.set_title(f"head ablation: val loss {report['base_loss']:.4f} with all heads\n"
                 f"prunable: removal costs < {report['threshold']:.0%}", fontsize=10)
    if curve:
        ks = [c["k"] for c in curve]
        axes[1].plot(ks, [c["relative"] * 100 for c in curve], marker="o")
        axes[1].axhline(report["threshold"] * 100, color="0.5", ls="--", lw=1, label="threshold")
        axes[1].set_xlabel("k least important heads silenced together")
        axes[1].set_ylabel("val loss increase (%)")
        axes[1].set_xticks(ks)
        axes[1].legend()
    return fig

"""Head ablation: the validation loss when one head of one layer is silenced.

Silencing zeroes the head's x_sparse * y_sparse before the decoder (capture.ablate_heads).
Heads of a layer meet only in the decoder (each has its own encoder, attention and encoder_v;
they share the value x), so this removes exactly that head's contribution to the layer. A head
whose removal raises the loss by less than `threshold` (relative, default 1%) is marked prunable.
"""
from __future__ import annotations

import torch

from bdh_scale.model.probes import ablate_heads, bdh_layers
from bdh_scale.analysis.figures import new_figure
from bdh_scale.analysis.inputs import windows


@torch.no_grad()
def mean_loss(model, tokens, seq_len, batch_size) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x, y in windows(tokens, seq_len, batch_size):
        total += model(x.to(device), y.to(device)).loss.item() * y.numel()
        count += y.numel()
    return total / count


def head_ablation(model, tokens: torch.Tensor, seq_len: int, batch_size: int, threshold: float = 0.01) -> dict:
    """Report: base loss; per layer and head the ablated loss, its change and whether it is prunable."""
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
    return {"base_loss": base, "threshold": threshold, "tokens": int(len(tokens)), "layers": layers,
            "prunable": prunable,
            "definition": "relative = (val loss with the head's x_sparse*y_sparse zeroed - base) / base; "
                          "prunable when relative < threshold"}


def plot(report: dict):
    layers = report["layers"]
    n_head = max(e["n_head"] for e in layers)
    grid = torch.full((len(layers), n_head), float("nan"))
    for i, e in enumerate(layers):
        grid[i, : e["n_head"]] = torch.tensor(e["relative"]) * 100
    fig, (ax,) = new_figure(width=max(5.0, 1.2 * n_head + 3), height=max(3.0, 0.6 * len(layers) + 2))
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
    return fig

"""The synaptic state over a long stream: ||rho|| per layer and head as tokens accumulate.

The stream is read chunk by chunk with the state carried (`model(chunk, state=s)`), exactly
as in generation or carry-mode training. Without forgetting, rho = sum_s q~_s x_s^T only grows;
with a forgetting gate its norm should level off. The next-token loss of each chunk is recorded
too: if the carried state is useful, later chunks (with more context in rho) should not be worse.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bdh_scale.analysis.figures import new_figure
from bdh_scale.model.registry import is_stateful


@torch.no_grad()
def rho_norms(model, tokens: torch.Tensor, chunk: int) -> dict:
    """Report: tokens read after each chunk, ||rho||_F per layer and head, loss per chunk."""
    if not is_stateful(model):
        raise ValueError(f"model.arch={model.arch} is stateless across windows; the state analysis needs a BDH model")
    if getattr(model.config, "attn_window", None) is not None:
        raise ValueError(f"model.attn_window={model.config.attn_window}: a windowed model keeps its last "
                         "keys, not a synaptic state rho; nothing to measure")
    device = next(model.parameters()).device
    state = model.init_state(1, device)
    seen, losses = [], []
    norms: list[list[list[float]]] = [[] for _ in state.layers]  # [layer][chunk][head]
    for a in range(0, len(tokens) - 1, chunk):
        x = tokens[a: a + chunk][None].to(device)
        y = tokens[a + 1: a + chunk + 1][None].to(device)
        x = x[:, : y.size(1)]
        out = model(x, state=state)
        state = out.state
        losses.append(F.cross_entropy(out.logits.float()[0], y[0]).item())
        seen.append(state.pos)
        for i, layer_state in enumerate(state.layers):
            norms[i].append(layer_state.rho[0].float().flatten(1).norm(dim=1).tolist())
    layers = [{"layer": i, "rho_norm": [list(h) for h in zip(*per_chunk)]}  # [head][chunk]
              for i, per_chunk in enumerate(norms)]
    return {"chunk": chunk, "tokens": seen, "loss": losses, "layers": layers,
            "forget_mode": model.config.forget_mode,
            "definition": "Frobenius norm of rho (N x D per head) after each chunk of the carried stream"}


def plot(report: dict):
    fig, (ax, ax_loss) = new_figure(2, height=4.0)
    for e in report["layers"]:
        for h, series in enumerate(e["rho_norm"]):
            ax.plot(report["tokens"], series, color=f"C{e['layer'] % 10}", lw=1.2 if h == 0 else 0.7,
                    alpha=1.0 if h == 0 else 0.6, label=f"layer {e['layer']}" if h == 0 else None)
    ax.set_xlabel("tokens read")
    ax.set_ylabel("||rho||_F (one line per head)")
    ax.set_title(f"synaptic state norm (forget_mode={report['forget_mode']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax_loss.plot(report["tokens"], report["loss"], marker="o", ms=2, color="k")
    ax_loss.set_xlabel("tokens read")
    ax_loss.set_ylabel("loss of the chunk (nats/token)")
    ax_loss.grid(alpha=0.3)
    return fig

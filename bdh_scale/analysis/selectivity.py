"""Which neurons tell labelled texts apart (e.g. English vs French Europarl lines).

For each label, the mean activation mu of every neuron (per layer and head) over that label's
tokens. A neuron's selectivity for label a is (mu_a - mu_rest) / (mu_a + mu_rest) in [-1, 1],
mu_rest the mean over the other labels' means: 1 fires only on a, 0 indifferent. Neurons that
almost never fire get extreme indices from a handful of tokens, so only neurons active on at
least `min_active` of all tokens are ranked. The signal is y_sparse by default (the paper's
sparse activation), or x_sparse, or their product xy.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bdh_scale.analysis.figures import new_figure
from bdh_scale.analysis.inputs import text_tokens, windows
from bdh_scale.model.bdh.probes import capture_codes

SELECTIVE = 0.5  # an index above this counts as a selective neuron in the summary
BINS = 40  # histogram bins over [-1, 1]


@torch.no_grad()
def label_means(model, tokens, seq_len, batch_size, signal) -> tuple[dict, dict, int]:
    """Per layer name: summed activation (H, N) and active counts (H, N); and the token count."""
    device = next(model.parameters()).device
    sums, active = {}, {}

    def sink(name, x_sparse, y_sparse):
        s = {"x": x_sparse, "y": y_sparse, "xy": x_sparse * y_sparse}[signal]
        sums[name] = sums.get(name, 0) + s.sum(dim=(0, 2), dtype=torch.float64).cpu()
        active[name] = active.get(name, 0) + (s > 0).sum(dim=(0, 2)).double().cpu()

    n = 0
    with capture_codes(model, sink):
        for x, _ in windows(tokens, seq_len, batch_size):
            model(x.to(device))
            n += x.numel()
    return sums, active, n


def neuron_selectivity(model, tokenizer, files: dict[str, Path], *, max_tokens: int, seq_len: int,
                       batch_size: int, signal: str = "y", top_k: int = 10, min_active: float = 0.005) -> dict:
    labels = list(files)
    stats = {}
    for label, path in files.items():
        sums, active, n = label_means(model, text_tokens(path, tokenizer, max_tokens), seq_len, batch_size, signal)
        stats[label] = (sums, active, n)
    layers = []
    all_indices = {label: [] for label in labels}
    for name in stats[labels[0]][0]:
        mu = torch.stack([stats[lb][0][name] / stats[lb][2] for lb in labels])  # (labels, H, N)
        freq = sum(stats[lb][1][name] for lb in labels) / sum(stats[lb][2] for lb in labels)  # (H, N)
        eligible = freq >= min_active
        heads = []
        for h in range(mu.size(1)):
            entry = {"head": h, "eligible": int(eligible[h].sum()), "top": {}, "selective_fraction": {}}
            for i, lb in enumerate(labels):
                rest = torch.cat([mu[:i, h], mu[i + 1:, h]]).mean(0)
                index = (mu[i, h] - rest) / (mu[i, h] + rest).clamp_min(1e-12)
                index = torch.where(eligible[h], index, torch.full_like(index, float("nan")))
                ok = index[eligible[h]]
                all_indices[lb].extend(ok.tolist())
                entry["selective_fraction"][lb] = float((ok > SELECTIVE).float().mean()) if len(ok) else 0.0
                order = torch.argsort(torch.nan_to_num(index, nan=-2.0), descending=True)[:top_k]
                entry["top"][lb] = [{"neuron": int(j), "index": float(index[j]), "active_frequency": float(freq[h, j]),
                                     "mean": {o: float(mu[k, h, j]) for k, o in enumerate(labels)}}
                                    for j in order.tolist() if eligible[h, j]]
            heads.append(entry)
        layers.append({"layer": name, "heads": heads})
    summary = {lb: {"eligible": len(v), "selective_fraction": sum(x > SELECTIVE for x in v) / max(1, len(v)),
                    "histogram": torch.histc(torch.tensor(v, dtype=torch.float64), BINS, -1, 1).long().tolist()}
               for lb, v in all_indices.items()}
    return {"signal": signal, "min_active": min_active, "selective_threshold": SELECTIVE, "top_k": top_k,
            "labels": {lb: {"path": str(files[lb]), "tokens": stats[lb][2]} for lb in labels},
            "layers": layers, "summary": summary, "histogram_range": [-1.0, 1.0],
            "definition": "index_a = (mu_a - mu_rest) / (mu_a + mu_rest) per neuron; mu = mean activation "
                          "of the signal over the label's tokens; neurons active on < min_active of tokens skipped"}


def plot(report: dict):
    labels = list(report["labels"])
    fig, (ax,) = new_figure()
    shown = labels[:1] if len(labels) == 2 else labels  # with two labels the second index is minus the first
    for i, lb in enumerate(shown):
        counts = report["summary"][lb]["histogram"]
        edges = [-1 + 2 * k / len(counts) for k in range(len(counts))]
        ax.bar(edges, counts, width=2 / len(counts), align="edge", alpha=0.6, color=f"C{i}",
               label=f"{lb} vs {rest_name(labels, lb)} ({report['summary'][lb]['selective_fraction']:.1%} "
                     f"of neurons > {SELECTIVE})")
    ax.set_xlabel("selectivity index (1: fires only on the label, -1: only on the others)")
    ax.set_ylabel("neurons")
    ax.set_title(f"neuron selectivity of {report['signal']} between {', '.join(labels)}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def rest_name(labels: list[str], label: str) -> str:
    others = [lb for lb in labels if lb != label]
    return others[0] if len(others) == 1 else "rest"

"""Loss by context: does a carried state help, and up to what distance?

The run's held-out stream is read as `rows` contiguous rows of `windows` windows of T tokens
(the layout of training's validation, train/evaluate.py), twice: carried (each row from its start,
the state carried from window to window) and as independent windows (every window from an empty
state). Per-token losses are averaged by how many tokens of the row precede the token: 0-T, T-2T,
2T-4T, ... In the first bucket both readings see the same context; after it, the carried reading
has read more. Where its loss is lower, the state holds something useful from that far back;
where it is higher, the state hurts (e.g. a model trained on independent windows, which has never
seen a state built from more than one window). Buckets compare the same tokens but say nothing
about how far back the useful part lies: that is the second reading, the held-out loss when the
state is reset every k = 2, 4, 8, ... windows. Where the curve flattens, older tokens stop helping.
"""
from __future__ import annotations

import dataclasses
import math

from bdh_scale.analysis.figures import new_figure
from bdh_scale.data import build_data
from bdh_scale.errors import AnalysisError
from bdh_scale.model.registry import is_stateful
from bdh_scale.train.evaluate import OneProcess, evaluate


def loss_by_context(model, data_cfg, *, T: int, rows: int, windows: int, device, run_dir=None) -> dict:
    """Report: both readings overall and per context bucket, the loss against the state's span
    (reset every 1, 2, 4, ... windows), and the layout actually read."""
    if not is_stateful(model):
        raise AnalysisError(f"model.arch={model.arch} is stateless across windows: there is no carried "
                            "reading to compare; the context analysis needs a BDH model")
    # a streamed run's held-out set comes from its run directory, not from the source again
    data = build_data(dataclasses.replace(data_cfg, prefetch=0), batch_size=1, held_out_dir=run_dir, seq_len=T)
    try:
        _, windows_read, _ = data.val_layout(T, rows, windows)  # a short held-out set holds fewer
        spans = tuple(2 ** i for i in range(1, max(1, windows_read.bit_length())) if 2 ** i < windows_read)
        val = evaluate(model, data, T=T, batch_size=rows, max_batches=windows, accelerator=OneProcess(device),
                       carried=True, doc_reset=data.doc_reset, spans=spans)
    finally:
        data.close()
    report = val.report()
    report.update(windows_asked=windows, windows_read=windows_read, forget_mode=model.config.forget_mode, attn_window=model.config.attn_window,
                  definition="loss per token (nats) of the held-out rows, by tokens of the row before it; "
                             "carried: state carried along the row; window: every window of T from an empty state")
    return report


def plot(report: dict, title: str = ""):
    fig, (ax, span_ax) = new_figure(2, height=3.8)
    buckets = [b for b in report["buckets"] if b["carried"] is not None]
    xs = [math.sqrt(max(b["context_from"], 1) * b["context_to"]) for b in buckets]  # geometric middle
    ax.plot(xs, [b["carried"] for b in buckets], "o-", label=f"carried state (val {report['val_loss_carried']:.3f})")
    ax.plot(xs, [b["window"] for b in buckets], "s--", label=f"independent windows (val {report['val_loss_window']:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"tokens of context before the token (buckets 0-T, T-2T, 2T-4T, ...; T = {report['T']})")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or f"loss by context, forget_mode={report['forget_mode']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    windows = report["windows_read"]
    spans = [(1, report["val_loss_window"])] + [(s["windows"], s["val_loss"]) for s in report["spans"]]
    spans.append((windows, report["val_loss_carried"]))
    span_ax.plot([k for k, _ in spans], [v for _, v in spans], "o-", color="C2")
    span_ax.set_xscale("log", base=2)
    span_ax.set_xlabel(f"state reset every k windows (k = 1: independent windows; k = {windows}: carried along the row)")
    span_ax.set_ylabel("held-out loss (nats/token)")
    span_ax.set_title("how far back the state helps: loss against the span it may remember", fontsize=9)
    span_ax.grid(alpha=0.3)
    return fig

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

A model without a state (the GPT baseline) has the window reading alone: no carried column, no
spans. Its first bucket (0-T) is its loss with the context its window gives; every later bucket
is past the window it reads, so out of reach (null; in_window.py), not the loss of the same tokens
with less context.
"""
from __future__ import annotations

import dataclasses
import math

from bdh_scale.analysis.figures import mark_out_of_reach, new_figure
from bdh_scale.data import build_data
from bdh_scale.errors import AnalysisError
from bdh_scale.model.registry import is_stateful
from bdh_scale.train.evaluate import OneProcess, evaluate


def loss_by_context(model, data_cfg, *, T: int, rows: int, windows: int, device, run_dir=None,
                    reach: int | None = None) -> dict:
    """Report: both readings overall and per context bucket, the loss against the state's span
    (reset every 1, 2, 4, ... windows), and the layout actually read; for a stateless model (a
    window of `reach` tokens, default its window at T) the window reading and what is out of reach."""
    stateful = is_stateful(model)
    reach = None if stateful else (reach or model.gen_context(T))
    if reach is not None and T > reach:
        raise AnalysisError(f"--seq-len {T}: model.arch={model.arch} has no state and reads at most {reach} tokens "
                            f"at once (the window it trained on, within its positions); use --seq-len {reach} or less")
    # a streamed run's held-out set comes from its run directory, not from the source again
    data = build_data(dataclasses.replace(data_cfg, prefetch=0), batch_size=1, held_out_dir=run_dir, seq_len=T)
    try:
        _, windows_read, _ = data.val_layout(T, rows, windows)  # a short held-out set holds fewer
        spans = tuple(2 ** i for i in range(1, max(1, windows_read.bit_length())) if 2 ** i < windows_read)
        val = evaluate(model, data, T=T, batch_size=rows, max_batches=windows, accelerator=OneProcess(device),
                       carried=stateful, doc_reset=data.doc_reset, spans=spans if stateful else ())
    finally:
        data.close()
    report = val.report()
    c = model.config
    report.update(windows_asked=windows, windows_read=windows_read, arch=model.arch, stateful=stateful,
                  reach_tokens=reach, readings=["carried", "window"] if stateful else ["window"],
                  forget_mode=getattr(c, "forget_mode", "none"), attn_window=getattr(c, "attn_window", None),
                  definition="loss per token (nats) of the held-out rows, by tokens of the row before it; "
                             "carried: state carried along the row; window: every window of T from an empty state")
    return report if stateful else in_window_only(report)


def in_window_only(report: dict) -> dict:
    """A stateless model's report: no carried reading, and the buckets past the window read (T)
    out of reach."""
    del report["val_loss_carried"], report["spans"]
    for b in report["buckets"]:
        del b["carried"]
        b["out_of_reach"] = b["context_to"] > report["T"]
        if b["out_of_reach"]:
            b["window"] = None
    report["definition"] += ("; a model without a state has only the window reading, and a bucket past the window "
                             "it reads (T) is out of reach (null)")
    return report


def plot(report: dict, title: str = ""):
    if not report["stateful"]:
        return plot_in_window(report, title)
    fig, (ax, span_ax) = new_figure(2, height=3.8)
    buckets = [b for b in report["buckets"] if b["carried"] is not None]
    xs = [middle(b) for b in buckets]
    ax.plot(xs, [b["carried"] for b in buckets], "o-", label=f"carried state (val {report['val_loss_carried']:.3f})")
    ax.plot(xs, [b["window"] for b in buckets], "s--", label=f"independent windows (val {report['val_loss_window']:.3f})")
    finish(ax, report, title)
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


def plot_in_window(report: dict, title: str = ""):
    """A stateless model: its window reading where it reaches, a band at each bucket past it."""
    fig, (ax,) = new_figure(1, height=3.8)
    near = [b for b in report["buckets"] if b["window"] is not None]
    ax.plot([middle(b) for b in near], [b["window"] for b in near], "s-",
            label=f"{report['arch']}, in its window, no state (val {report['val_loss_window']:.3f})")
    mark_out_of_reach(ax, [middle(b) for b in report["buckets"] if b["out_of_reach"]], report["T"])
    finish(ax, report, title)
    return fig


def middle(bucket: dict) -> float:
    """Where a bucket sits on the log axis: the geometric middle of its context range."""
    return math.sqrt(max(bucket["context_from"], 1) * bucket["context_to"])


def finish(ax, report: dict, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"tokens of context before the token (buckets 0-T, T-2T, 2T-4T, ...; T = {report['T']})")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or f"loss by context, forget_mode={report['forget_mode']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

"""Long-range recall: can the model answer from what it read d windows back?

Two sources, one reading. Passkey (`recall`): for each distance d (in windows of the run's T),
episodes of the passkey source
(data/synthetic/passkey.py) are built with exactly d*T tokens of filler between the fact and the
question, and read twice, window by window from the episode's start: with the state carried,
and with every window from an empty state (what a model trained on independent windows does).
The key's tokens after the question are scored: their mean loss, the fraction of key tokens
predicted right (argmax), and exact match (every key token right: what greedy decoding would
write). Distances are counted from the end of the fact to the start of the question.

MQAR (`mqar_recall`, data/synthetic/mqar.py): episodes whose queries fill the window d windows after the
pairs' window (d = 0: the same window), read the same two ways; the score is the fraction of
queries answered with their value (argmax at the query position) and the loss on the values.

A model without a state (the GPT baseline) has no carried reading, so its report has none: its
one reading, "window", reads each episode in one forward over its last `reach` tokens
(in_window.py). A distance at which the fact, the gap and the question (MQAR: the pairs, the gap
and the queries) do not all fit in that window is out of reach: null, not chance.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bdh_scale.analysis.figures import mark_out_of_reach, new_figure
from bdh_scale.analysis.in_window import read_last
from bdh_scale.model.registry import is_stateful


@torch.no_grad()
def read_windows(model, x: torch.Tensor, T: int, carried: bool) -> torch.Tensor:
    """Logits (B, L, V) of x (B, L) read in windows of T, the state carried or not (a model
    without a state reads windows either way)."""
    carried = carried and is_stateful(model)
    state, out = None, []
    for a in range(0, x.size(1), T):
        if carried:
            state = state if state is not None else model.init_state(x.size(0), x.device)
            o = model(x[:, a:a + T], state=state, return_state=True)
            state = o.state
        else:
            o = model(x[:, a:a + T])
        out.append(o.logits.float())
    return torch.cat(out, dim=1)


def score(logits: torch.Tensor, episodes, device) -> dict:
    """Sums over the episodes of one batch: answer loss, key tokens right, exact matches."""
    loss = right = exact = tokens = 0.0
    for i, e in enumerate(episodes):
        key = torch.as_tensor(e.tokens[e.answer], device=device)
        at = logits[i, e.answer.start - 1:e.answer.stop - 1]  # logits at t predict token t + 1
        loss += F.cross_entropy(at, key, reduction="sum").item()
        hits = at.argmax(-1) == key
        right += hits.sum().item()
        exact += float(hits.all())
        tokens += len(key)
    return {"loss": loss, "right": right, "exact": exact, "tokens": tokens}


def readers(model, T: int, reach: int | None) -> dict:
    """reading -> function from token ids (B, L) to logits (B, L, V): a stateful model's state
    carried window by window and every window of T from an empty state; a stateless model's one
    forward over what its window holds."""
    if reach is None:
        return {"carried": lambda x: read_windows(model, x, T, True),
                "window": lambda x: read_windows(model, x, T, False)}
    return {"window": lambda x: read_last(model, x, reach)}


def model_reach(model, T: int, reach: int | None) -> int | None:
    """None for a stateful model; else its window (`reach`, or what it reads after training on T)."""
    return None if is_stateful(model) else (reach or model.gen_context(T))


def stateless_note(parts: str) -> str:
    """What a stateless model's report reads, for its definition."""
    return (f"; a model without a state has only the window reading: each episode in one forward over its last "
            f"reach_tokens tokens; where {parts} do not fit in them, the distance is out of reach (null)")


def recall(model, passkey, *, T: int, distances: list[int], episodes: int, lead: int, seed: int, device,
           reach: int | None = None) -> dict:
    """Report: per distance, each reading of `episodes` probes (readers); for a stateless model
    (window of `reach` tokens, default its window at T) the distances beyond it out of reach."""
    reach = model_reach(model, T, reach)
    read, rows = readers(model, T, reach), []
    for d in distances:
        groups = passkey.probes(d * T, episodes, lead, seed)
        row = {"distance_windows": d, "gap_tokens": d * T, "episodes": sum(len(g) for g in groups)}
        if reach is not None:  # the fact starts after the lead; the question and key must follow in one window
            row["out_of_reach"] = any(len(g[0].tokens) - 1 - lead > reach for g in groups)
            if row["out_of_reach"]:
                rows.append({**row, "window": None})
                continue
        totals = {r: dict.fromkeys(("loss", "right", "exact", "tokens"), 0.0) for r in read}
        for group in groups:
            x = torch.as_tensor(np.stack([e.tokens[:-1] for e in group]), device=device)
            for reading, logits_of in read.items():
                got = score(logits_of(x), group, device)
                totals[reading] = {k: totals[reading][k] + v for k, v in got.items()}
        for reading, t in totals.items():
            row[reading] = {"exact_match": t["exact"] / row["episodes"], "key_token_accuracy": t["right"] / t["tokens"],
                            "answer_loss": t["loss"] / t["tokens"]}
        rows.append(row)
    chance = 1 / 10 ** passkey.cfg.digits
    c = model.config
    return {"T": T, "digits": passkey.cfg.digits, "chance_exact_match": chance, "lead": lead, "seed": seed,
            "arch": model.arch, "stateful": reach is None, "reach_tokens": reach, "readings": list(read),
            "forget_mode": getattr(c, "forget_mode", "none"), "attn_window": getattr(c, "attn_window", None),
            "distances": rows,
            "definition": "episodes with d*T filler tokens between fact and question, read window by window "
                          "from the episode start; exact_match: every key token is the argmax (greedy decoding "
                          "writes the key); answer_loss: mean nats per key token"
                          + (stateless_note("the fact, gap and question") if reach else "")}


@torch.no_grad()
def mqar_recall(model, mqar, *, distances: list[int], episodes: int, seed: int, device, batch: int = 64,
                reach: int | None = None) -> dict:
    """Report: per distance, each reading of `episodes` MQAR probes (readers); for a stateless
    model the distances whose episode (pairs to queries) exceeds its window out of reach."""
    T = mqar.T
    reach = model_reach(model, T, reach)
    read, rows = readers(model, T, reach), []
    for d in distances:
        row = {"distance_windows": d, "episodes": episodes}
        if reach is not None:  # an episode is (d + 1) windows of T, the pairs at its start
            row["out_of_reach"] = (d + 1) * T > reach
            if row["out_of_reach"]:
                rows.append({**row, "window": None})
                continue
        probes = mqar.probes(d, episodes, seed)
        totals = {r: {"right": 0.0, "loss": 0.0, "queries": 0.0} for r in read}
        for a in range(0, episodes, batch):
            group = probes[a:a + batch]
            x = torch.as_tensor(np.stack([e.tokens for e in group]), device=device)
            answers = torch.as_tensor(np.stack([e.answers for e in group]), device=device)
            at_query = torch.zeros_like(answers)
            at_query[:, :-1] = answers[:, 1:]  # the logits at a query predict its value
            values = x[answers]
            for reading, t in totals.items():
                logits = read[reading](x)[at_query]
                t["right"] += (logits.argmax(-1) == values).sum().item()
                t["loss"] += F.cross_entropy(logits, values, reduction="sum").item()
                t["queries"] += len(values)
        for reading, t in totals.items():
            row[reading] = {"accuracy": t["right"] / t["queries"], "answer_loss": t["loss"] / t["queries"]}
        rows.append(row)
    c = model.config
    return {"source": "synthetic:mqar", "T": T, "pairs": mqar.cfg.pairs, "vocab_size": mqar.V, "seed": seed,
            "chance_accuracy": 1 / mqar.cfg.pairs, "chance_without_pairs": 1 / mqar.value_ids,
            "arch": model.arch, "stateful": reach is None, "reach_tokens": reach, "readings": list(read),
            "token_shift": getattr(c, "token_shift", "none"), "forget_mode": getattr(c, "forget_mode", "none"),
            "distances": rows,
            "definition": "episodes whose queries fill the window d windows after the pairs' window (0: the same "
                          "window), read window by window from the episode start; accuracy: queries whose argmax is "
                          "their value; chance_accuracy: one of the episode's values guessed; chance_without_pairs: "
                          "one of all the value ids guessed, the level of a reading that cannot see the pairs (the "
                          "independent windows past distance 0); answer_loss: nats per value"
                          + (stateless_note("the pairs, gap and queries") if reach else "")}


def recall_metrics(report: dict) -> dict:
    """The report as flat metrics for the trackers: recall/<reading>_d<distance>, out of reach left out."""
    metric = "accuracy" if "chance_accuracy" in report else "exact_match"
    return {f"recall/{reading}_d{r['distance_windows']}": r[reading][metric]
            for r in report["distances"] for reading in report["readings"] if r[reading] is not None}


LABELS = {"carried": ("carried state", "o-"), "window": ("independent windows", "s--")}


def plot(report: dict, title: str = ""):
    """Recall and answer loss against the distance, every reading (passkey or MQAR report); for a
    stateless model its in-window reading, and bands where a distance is out of reach."""
    mqar = "chance_accuracy" in report
    metric, chance = ("accuracy", report["chance_accuracy"]) if mqar else ("exact_match", report["chance_exact_match"])
    fig, (acc, loss) = new_figure(2, height=3.6)
    rows = report["distances"]
    for reading in report["readings"]:
        label, style = LABELS[reading] if report["stateful"] else (f"{report['arch']}, in its window (no state)", "s-")
        ds = [r["distance_windows"] for r in rows if r[reading] is not None]
        acc.plot(ds, [r[reading][metric] for r in rows if r[reading] is not None], style, label=label)
        loss.plot(ds, [r[reading]["answer_loss"] for r in rows if r[reading] is not None], style, label=label)
    far = [r["distance_windows"] for r in rows if r.get("out_of_reach")]
    acc.axhline(chance, color="k", lw=0.8, ls=":", label="chance, pairs in view" if mqar else "chance")
    if mqar and report["stateful"]:
        acc.axhline(report["chance_without_pairs"], color="k", lw=0.8, ls="-.", label="chance, pairs out of view")
    for ax in (acc, loss):
        mark_out_of_reach(ax, far, report["reach_tokens"])
        ax.set_xscale("symlog", base=2, linthresh=1)  # log from 1 on, and room for a distance of 0
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    acc.set_ylabel("accuracy on the values" if mqar else "exact match")
    acc.set_ylim(-0.02, 1.02)
    loss.set_ylabel(f"loss on the {'value' if mqar else 'key'} (nats/token)")
    what = "pairs and queries" if mqar else "fact and question"
    loss.set_xlabel(f"distance between {what} (windows of T = {report['T']})")
    default = (f"MQAR recall, {report['pairs']} pairs, token_shift={report['token_shift']}" if mqar
               else f"passkey recall, forget_mode={report['forget_mode']}")
    acc.set_title(title or default)
    return fig

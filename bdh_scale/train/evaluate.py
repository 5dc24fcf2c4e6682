"""Validation: next-token loss over a fixed held-out set, read two ways.

The held-out stream is laid out as `rows` contiguous stretches, batch k holding window k of every
row (DataBundle.val_batches), so it can be read

* as independent windows (`val_loss_window`): every window from an empty state, the figure of a
  model trained with train.state=reset;
* carried (`val_loss_carried`): each row read from its start with the state carried from one
  window to the next, exactly as training reads its lanes with train.state=carry.

`val_loss` is the figure a run is trained for: carried for a carry run, windows otherwise, and
`val_bpb` follows it. Per-token losses of both readings are also summed by how many tokens of
the row precede the token (0-T, T-2T, 2T-4T, ...): the loss-by-context curve that says whether,
and up to what distance, a carried state helps (docs/design.md, "Loss by context").

Rows are spread over the processes (rank r reads rows r, r+W, ...) and the sums reduced, so the
figures do not depend on the number of processes. Every rank runs the same number of forwards
(a rank short of rows repeats one with zero weight), which FSDP's collectives need.

A mixture (data.sources) is scored source by source (`evaluate_sources`): each source's held-out
set is read as a run on that source alone reads its own, and logged as val_loss/<name> and
val_bpb/<name>. The overall val_loss is the mean over all the tokens they scored (their summed
losses over their summed tokens), and val_bpb the bits over all their bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bdh_scale.model.output import IGNORE, token_ce


def context_edges(T: int, row_len: int) -> list[int]:
    """Bucket edges in tokens of preceding context: 0, T, 2T, 4T, ... up to the row length."""
    edges, hi = [0, T], 2 * T
    while edges[-1] < row_len:
        edges.append(min(hi, row_len))
        hi *= 2
    return edges if edges[-1] >= row_len else edges + [row_len]


@dataclass
class LossSums:
    """Summed per-token losses of one reading, overall and per context bucket."""

    edges: list[int]
    total: torch.Tensor = None  # (3,) float64: sum of losses, tokens, tokens predicted right (argmax)
    buckets: torch.Tensor = None  # (n_buckets, 2)
    device: object = None

    def __post_init__(self):
        self.total = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.buckets = torch.zeros(len(self.edges) - 1, 2, dtype=torch.float64, device=self.device)

    def add(self, losses: torch.Tensor, weights: torch.Tensor, offset: int, y: torch.Tensor,
            right: torch.Tensor) -> None:
        """losses (rows, T) of tokens at row positions offset .. offset+T-1; weights (rows,) 0 or 1;
        y (rows, T) the targets: IGNORE ones (data.score: answers) count neither loss nor tokens;
        right (rows, T) bool: the argmax is the target."""
        counted = weights[:, None].double() * (y != IGNORE)
        per_pos = (losses.double() * counted).sum(0)  # (T,)
        n_pos = counted.sum(0)
        self.total += torch.stack([per_pos.sum(), n_pos.sum(), (counted * right).sum()])
        pos = torch.arange(offset, offset + losses.size(1), device=losses.device)
        bucket = torch.bucketize(pos, torch.tensor(self.edges[1:-1], device=losses.device), right=True)
        self.buckets[:, 0].index_add_(0, bucket, per_pos)
        self.buckets[:, 1].index_add_(0, bucket, n_pos)

    def reduce(self, accelerator) -> None:
        if accelerator.num_processes > 1:
            self.total = accelerator.reduce(self.total, reduction="sum")
            self.buckets = accelerator.reduce(self.buckets, reduction="sum")

    def mean(self) -> float:
        return (self.total[0] / self.total[1]).item() if self.total[1] > 0 else float("nan")

    def accuracy(self) -> float:
        """The share of scored targets that are the argmax."""
        return (self.total[2] / self.total[1]).item() if self.total[1] > 0 else float("nan")

    def bucket_means(self) -> list[float | None]:
        return [s / n if n > 0 else None for s, n in self.buckets.tolist()]


@dataclass
class Validation:
    """What one validation measured."""

    window: LossSums
    carried: LossSums | None = None
    spans: dict = field(default_factory=dict)  # k -> LossSums of the reading whose state is reset every k windows
    bytes_per_token: float = 1.0
    T: int = 0
    rows: int = 0
    row_len: int = 0
    extra: dict = field(default_factory=dict)
    answers: bool = False  # only the answers were scored (data.score: answers): their accuracy is reported

    def record(self, carry: bool) -> dict:
        """The metrics row: val_loss (carried for a carry run), val_bpb, both readings, the buckets."""
        window = self.window.mean()
        carried = self.carried.mean() if self.carried is not None else None
        loss = carried if carry and carried is not None else window
        row = {"val_loss": loss, "val_bpb": loss / math.log(2) / self.bytes_per_token, "val_loss_window": window,
               "val_tokens": int(self.window.total[1].item()), "val_T": self.T}  # what the mean is over
        if self.answers:  # recall: the share of answers predicted right, by the reading val_loss follows
            reading = self.carried if carry and self.carried is not None else self.window
            row["val_answer_accuracy"] = reading.accuracy()
            if self.carried is not None:
                row["val_answer_accuracy_window"] = self.window.accuracy()
        if carried is not None:
            row["val_loss_carried"] = carried
            edges = self.window.edges
            for lo, hi, c, w in zip(edges, edges[1:], self.carried.bucket_means(), self.window.bucket_means()):
                if c is not None:
                    row[f"ctx/carried_{lo}-{hi}"] = c
                    row[f"ctx/window_{lo}-{hi}"] = w
        return row

    def report(self) -> dict:
        """The loss-by-context table, for bdh-analyze context and docs."""
        edges = self.window.edges
        carried = self.carried.bucket_means() if self.carried is not None else [None] * (len(edges) - 1)
        return {"T": self.T, "rows": self.rows, "row_tokens": self.row_len,
                "val_loss_window": self.window.mean(),
                "val_loss_carried": self.carried.mean() if self.carried is not None else None,
                "spans": [{"windows": k, "val_loss": sums.mean()} for k, sums in sorted(self.spans.items())],
                "buckets": [{"context_from": lo, "context_to": hi, "carried": c, "window": w,
                             "tokens": int(n)}
                            for lo, hi, c, w, n in zip(edges, edges[1:], carried, self.window.bucket_means(),
                                                       self.window.buckets[:, 1].tolist())]}


class OneProcess:
    """The accelerator evaluate() needs when one process reads everything (analyses, tests)."""

    num_processes, process_index = 1, 0

    def __init__(self, device):
        self.device = torch.device(device)

    @staticmethod
    def unwrap_model(model):
        return model


def token_losses(model, x, y, **kwargs):
    """(per-token cross-entropy (B, T) in float32, 0 at IGNORE targets; the argmax is the target
    (B, T); the model output)."""
    out = model(x, **kwargs)
    return token_ce(out.logits, y), out.logits.argmax(-1) == y, out


def my_rows(n_rows: int, rank: int, world: int) -> tuple[list[int], torch.Tensor]:
    """This rank's rows r, r+W, ..., padded to ceil(n/W) with a repeated row of weight 0."""
    mine = list(range(rank, n_rows, world))
    per_rank = -(-n_rows // world)
    weights = torch.ones(per_rank)
    weights[len(mine):] = 0
    mine += [mine[0] if mine else 0] * (per_rank - len(mine))
    return mine, weights


@torch.no_grad()
def evaluate(model, data, *, T: int, batch_size: int, max_batches: int, accelerator, carried: bool,
             doc_reset: bool = False, spans: tuple[int, ...] = ()) -> Validation:
    """Score the held-out set (the same windows every call) as independent windows and, when
    `carried`, also carried along each row (the model must carry a state: BDH). Each k of
    `spans` adds a reading whose state is reset every k windows: the loss against how much the
    state may remember (k = 1 is the window reading, k >= the row's windows the carried one)."""
    was_training = model.training
    model.eval()
    device, W, r = accelerator.device, accelerator.num_processes, accelerator.process_index
    batches = list(data.val_batches(T, batch_size, max_batches))
    if not batches:
        raise RuntimeError("the validation split yielded no batch; lower train.eval_seq_len or data.val_fraction")
    n_rows = batches[0].x.size(0)
    rows, weights = my_rows(n_rows, r, W)
    weights = weights.to(device)
    edges = context_edges(T, T * len(batches))
    window = LossSums(edges, device=device)
    # the stateful readings: span None carries along the whole row
    readings = {span: LossSums(edges, device=device) for span in ([None] if carried else []) + list(spans)}
    states = dict.fromkeys(readings)
    fresh = lambda: accelerator.unwrap_model(model).init_state(len(rows), device)  # noqa: E731
    try:
        for k, batch in enumerate(batches):
            x, y = batch.x[rows].to(device), batch.y[rows].to(device)
            doc_start = batch.doc_start[rows].to(device) if doc_reset else None
            losses, right, _ = token_losses(model, x, y, doc_start=doc_start)
            window.add(losses, weights, k * T, y, right)
            for span, sums in readings.items():
                state = fresh() if states[span] is None or (span and k % span == 0) else states[span]
                losses, right, out = token_losses(model, x, y, state=state, return_state=True, doc_start=doc_start)
                sums.add(losses, weights, k * T, y, right)
                states[span] = out.state
    finally:
        model.train(was_training)
    for sums in [window, *readings.values()]:
        sums.reduce(accelerator)
    return Validation(window, readings.get(None), {k: v for k, v in readings.items() if k is not None},
                      data.bytes_per_token, T, n_rows, T * len(batches), answers=data.score_answers)


@dataclass
class SourcesValidation(Validation):
    """A mixture's validation: the sums of its sources' (the overall figures), and each source's."""

    parts: dict = field(default_factory=dict)  # name -> Validation

    def record(self, carry: bool) -> dict:
        row = super().record(carry)
        for name, part in self.parts.items():
            own = part.record(carry)
            row[f"val_loss/{name}"], row[f"val_bpb/{name}"] = own["val_loss"], own["val_bpb"]
        return row


def summed(parts: list[LossSums | None]) -> LossSums | None:
    """The sums of several readings; the context buckets only where they all have the same edges."""
    if any(p is None for p in parts):
        return None
    same = all(p.edges == parts[0].edges for p in parts)
    out = LossSums(parts[0].edges if same else [0, 1], device=parts[0].total.device)
    out.total = sum(p.total for p in parts)
    if same:
        out.buckets = sum(p.buckets for p in parts)
    return out


def evaluate_sources(model, data, **kw) -> SourcesValidation:
    """evaluate() of each source of a mixture on its own held-out set (DataBundle.source_bundles), and
    their sums; the keywords are evaluate()'s."""
    parts = {name: evaluate(model, part, **kw) for name, part in data.source_bundles().items()}
    vals = list(parts.values())
    tokens = [v.window.total[1].item() for v in vals]
    bpt = sum(n * v.bytes_per_token for n, v in zip(tokens, vals)) / max(sum(tokens), 1)
    return SourcesValidation(summed([v.window for v in vals]), summed([v.carried for v in vals]), {}, bpt,
                             vals[0].T, sum(v.rows for v in vals), vals[0].row_len, parts=parts)

"""Log-likelihoods of token sequences through a model, read in windows of the training length.

With `carry` (a stateful model: BDH), a sequence of any length is read in chunks of `window`
tokens, the synaptic state carried from each chunk into the next (docs/design.md section 5), so a
long document costs O(1) memory per token and scores exactly as one forward over all of it would.
Without it every sequence must fit one window, as in training with train.state=reset; callers cut
longer ones (lm.py: lm-evaluation-harness's rolling windows).

Sequences of a batch are padded on the right: the models are causal, so a padding token only
changes predictions after it, which are not read.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def token_logprobs(model, sequences: list[list[int]], window: int, carry: bool, batch_size: int = 16,
                   device="cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each sequence s (at least 2 tokens): float64 log p(s[i+1] | s[:i+1]) and whether s[i+1] was
    the most likely token, for i < len(s) - 1 (two CPU tensors)."""
    if any(len(s) < 2 for s in sequences):
        raise ValueError("every sequence needs at least 2 tokens: one to read, one to score")
    if not carry and any(len(s) - 1 > window for s in sequences):
        raise ValueError(f"without a carried state a sequence must fit one window of {window} tokens")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths share a batch
    results: list = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = len(sequences[rows[0]])
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :len(sequences[i])] = torch.tensor(sequences[i])
        ids = ids.to(device)
        logp = torch.empty(len(rows), length - 1, dtype=torch.float64)
        greedy = torch.empty(len(rows), length - 1, dtype=torch.bool)
        state = None
        for c in range(0, length - 1, window):
            y = ids[:, c + 1:c + 1 + window]
            x = ids[:, c:c + y.size(1)]
            out = model(x, state=state, return_state=True) if carry else model(x)
            state = out.state if carry else None
            lp = torch.log_softmax(out.logits.float(), dim=-1)
            logp[:, c:c + y.size(1)] = lp.gather(-1, y[..., None])[..., 0].double().cpu()
            greedy[:, c:c + y.size(1)] = (lp.argmax(dim=-1) == y).cpu()
        for r, i in enumerate(rows):
            n = len(sequences[i]) - 1
            results[i] = (logp[r, :n].clone(), greedy[r, :n].clone())
    return results

"""Sampling: the next-token rule shared by every model, generation for models without a state,
and text in, text out (`sample_text`) for the trainer's samples."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, vocab) -> next tokens (B, 1): temperature, then top-k, then a categorical draw.

    temperature 0 is greedy. The draw happens on the CPU so a seeded CPU generator gives the same
    text on every device.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


class RerunGeneration:
    """generate() and stream() for a model without a state: every new token reruns the model on the
    last gen_context(max_context) tokens (no cache: the stateless models are baselines, not a
    serving path). A class sets `stateless`, the error for a state given to it, and gen_context."""

    stateless = "this model has no state to continue"

    def gen_context(self, max_context: int | None) -> int:
        raise NotImplementedError

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 state=None, generator: torch.Generator | None = None, max_context: int | None = None,
                 doc_separator: list[int] | None = None) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens tokens sampled with BDH's sampling rule."""
        new = self.stream(idx, max_new_tokens, temperature, top_k, state, generator, max_context, doc_separator)
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               state=None, generator: torch.Generator | None = None, max_context: int | None = None,
               doc_separator: list[int] | None = None):
        """generate(), one sampled token (B, 1) at a time, each yielded as soon as it is drawn.
        With doc_separator, nothing before a complete separator is attended to after it."""
        if state is not None:
            raise ValueError(self.stateless)
        context = self.gen_context(max_context)
        sep = list(doc_separator or [])
        # the separator's tokens before the context window still tell whether the window starts a document
        text = idx[:, -(context + len(sep)):]
        for _ in range(max_new_tokens):
            window = text[:, -context:]
            doc_start = starts_after(text, sep)[:, -window.size(1):] if sep else None
            nxt = sample_next(self(window, doc_start=doc_start).logits[:, -1], temperature, top_k, generator)
            yield nxt
            text = torch.cat([text, nxt], dim=1)[:, -(context + len(sep)):]


def sample_text(model, tokenizer, prompt: str, n_tokens: int, *, temperature: float, top_k: int | None,
                seed: int, device, max_context: int | None = None, doc_separator: str | None = None) -> str:
    """n_tokens sampled after prompt with a private generator (the global RNG is left alone), from
    at most max_context earlier tokens (see BDH.generate); doc_separator: the text that ends a
    document, after which the state is reset (a model trained with data.doc_reset)."""
    was_training = model.training
    model.eval()
    try:
        idx = torch.tensor([tokenizer.encode(prompt) or [0]], dtype=torch.long, device=device)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        sep = tokenizer.encode(doc_separator) if doc_separator else None
        out = model.generate(idx, n_tokens, temperature=temperature, top_k=top_k, generator=gen,
                             max_context=max_context, doc_separator=sep)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0].tolist())


def starts_after(tokens: torch.Tensor, separator: list[int]) -> torch.Tensor:
    """(B, L) bool: the tokens right after a complete `separator` (the first tokens of documents
    joined by it); all False without a separator."""
    n = len(separator)
    out = torch.zeros_like(tokens, dtype=torch.bool)
    if not n or tokens.size(1) <= n:
        return out
    windows = tokens.unfold(1, n, 1)  # (B, L - n + 1, n): the n tokens from each position on
    ends = (windows == tokens.new_tensor(separator)).all(dim=-1)  # a separator starts here
    out[:, n:] = ends[:, : tokens.size(1) - n]
    return out

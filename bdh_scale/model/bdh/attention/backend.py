"""Which attention form computes a call (`model.attn_backend: auto`): a cost model of both."""
from __future__ import annotations

import math


def pick_backend(T: int, N: int, D: int, window: int | None = None) -> tuple[str, int]:
    """(backend, chunk size) for `attn_backend: auto`, by a cost model fit to CPU timings
    (docs/guides/performance.md, "Choosing the attention form").

    Per token and head, a training step (forward and backward) costs about T (2N + 3D)
    multiply-adds in the parallel form (the whole T x T map, symmetric backward) and
    7 N D + C (4N + 3D) in the chunked one (q rho, the rho update, its recompute and three
    gradient products; then its C x C blocks). The parallel form's few large products run
    faster per flop than the chunked form's many small ones, so it stays the choice up to 1.3x
    the flop crossover; below 256 tokens it always wins. The best C was about N D / (N + D) / 2
    as a power of two, in [64, 256]: longer chunks waste the masked half of bigger blocks,
    shorter ones run skinny products. With a window, the smallest power of two >= max(w, 64).

    "parallel" comes with C = T: if a state must be carried, attend_chunked with one chunk is
    the parallel product plus the state update. Past the crossover chunked is also the one whose
    memory stays linear in T.
    """
    if window is not None:  # no state to amortize: per token (w + C)(N + D), so C just covers w
        C = max(64, 1 << math.ceil(math.log2(window)))
        return ("parallel", T) if T <= max(256, window + C) else ("chunked", C)
    C = 1 << max(6, min(8, round(math.log2(N * D / (N + D) / 2))))
    crossover = 1.3 * (7 * N * D + C * (4 * N + 3 * D)) / (2 * N + 3 * D)
    return ("parallel", T) if T <= max(256, crossover) else ("chunked", C)

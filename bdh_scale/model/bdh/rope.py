"""Rotary position phases for BDH's neuron space.

The reference rotates the N neurons of each head in pairs (2i, 2i+1) by the angle
2*pi*frac(t * f_i), with f_i = theta^(-2*floor(i/2)/N) / (2*pi). The score q~_t . q~_s then
depends on t - s only, so the absolute position is free as long as queries and the keys in the
state use the same one. Streams are long: t * f in float32 loses the phase past ~1e6 tokens, so
phases are computed in float64 and reduced mod 1 before cos/sin.

The cos/sin tables are cached per (start position, length, device, dtype): one forward computes
them once for all layers, and a training run with a fixed T and reset state reuses them forever.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch


def rope_freqs(n: int, theta: float) -> torch.Tensor:
    """Per-neuron frequencies in turns per token (the reference's `get_freqs`), float64, shape (n,).
    On the CPU whatever device a model is built on (transformers builds it on the meta device and
    then loads the weights; these are not weights), as the tables made from them are."""
    i = torch.arange(n, dtype=torch.float64, device="cpu")
    paired = torch.floor(i / 2) * 2  # both neurons of a pair share a frequency
    return 1.0 / (theta ** (paired / n)) / (2 * math.pi)


def rope_tables(pos: int, T: int, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the phases of positions pos .. pos+T-1 for one neuron of each pair: (T, n/2)."""
    t = torch.arange(pos, pos + T, dtype=torch.float64)
    turns = torch.remainder(t[:, None] * freqs[None, ::2], 1.0)
    angle = turns * (2 * math.pi)
    return torch.cos(angle), torch.sin(angle)


def rotate(v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate neuron pairs of v (..., T, N) by the tables (T, N/2): (a, b) -> (a c - b s, b c + a s).

    In float32/float64 the pair is a complex number and the rotation one complex multiply: one
    pass over v instead of the six temporaries of the real formulation. Half precision has no
    complex kernels on every device, so it takes the real formulation; so does a compiled model,
    whose compiler fuses the real formulation into one pass but cannot generate complex code.
    """
    # view_as_complex needs unit stride over the pair and even strides elsewhere; the einsum
    # output that feeds this is permuted (not contiguous) but satisfies both.
    pairs = v.unflatten(-1, (-1, 2))
    complex_ok = v.stride(-1) == 1 and all(s % 2 == 0 for s in pairs.stride()[:-1])
    if v.dtype in (torch.float32, torch.float64) and complex_ok and not torch.compiler.is_compiling():
        phase = torch.complex(cos.to(v.dtype), sin.to(v.dtype))
        return torch.view_as_real(torch.view_as_complex(pairs) * phase).flatten(-2)
    a, b = pairs.unbind(-1)
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)


class RopeCache:
    """Small LRU cache of (cos, sin) tables keyed by (pos, T, device, dtype)."""

    def __init__(self, n: int, theta: float, max_entries: int = 16):
        self.n, self.theta = n, theta
        self._freqs: torch.Tensor | None = None  # made at first use: building a model allocates no table
        self.max_entries = max_entries
        self._tables: OrderedDict = OrderedDict()

    @property
    def freqs(self) -> torch.Tensor:
        if self._freqs is None:
            self._freqs = rope_freqs(self.n, self.theta)
        return self._freqs

    def get(self, pos: int, T: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (int(pos), int(T), torch.device(device), dtype)
        hit = self._tables.get(key)
        if hit is not None:
            self._tables.move_to_end(key)
            return hit
        cos, sin = rope_tables(int(pos), int(T), self.freqs)
        entry = (cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype))
        self._tables[key] = entry
        if len(self._tables) > self.max_entries:
            self._tables.popitem(last=False)
        return entry

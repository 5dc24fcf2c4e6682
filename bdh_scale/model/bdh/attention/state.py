"""The state BDH attention carries between calls: per layer an AttnState (rho, or a window's last
keys and values), and per model a BDHState (one AttnState per layer and the stream position).

docs/design.md ("The synaptic state") gives the recurrence these tensors hold.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class AttnState:
    """The carried state of one attention layer (per lane b, per head h).

    Unwindowed: rho (B, H, N, D), the synaptic state; per head even when v is shared, since the
    keys differ. Windowed (w): k_win (B, H, w, N) and v_win (B, Hv, w, D), the last w rotated
    keys and values, oldest first, and lg_win (B, H, w), the log decay accumulated since each.

    A fresh state is all zeros. Zero keys and values contribute nothing to any score, so a
    window cache that is not yet full needs no length counter, and a lane can be restarted by
    zeroing it. The state is kept in float32 (float64 for float64 inputs) whatever the input
    dtype: it is a sum over the whole stream, and half precision would swallow new terms.
    attend_chunked casts an incoming state to that dtype and to the inputs' device.
    """

    rho: torch.Tensor | None = None
    k_win: torch.Tensor | None = None
    v_win: torch.Tensor | None = None
    lg_win: torch.Tensor | None = None

    @property
    def window(self) -> int | None:
        return None if self.k_win is None else self.k_win.size(-2)

    @classmethod
    def zeros(cls, B, H, Hv, N, D, window=None, device=None, dtype=torch.float32) -> "AttnState":
        """A fresh lanes-first state laid out as the model's own states are: heads-first tensors
        seen lanes-first (swap_lanes_heads), so a compiled model sees one layout from the first
        window on and compiles once, not again at the second window."""
        return cls.zeros_for((H, B), (Hv, B), N, D, window, device, dtype).swap_lanes_heads()

    @classmethod
    def zeros_for(cls, lead, lead_v, N, D, window=None, device=None, dtype=torch.float32) -> "AttnState":
        """A fresh state for keys with leading dims `lead` and values with `lead_v` (either order
        of lanes and heads, as attend_chunked takes them)."""
        if window is None:
            return cls(rho=torch.zeros(*lead, N, D, device=device, dtype=dtype))
        return cls(
            k_win=torch.zeros(*lead, window, N, device=device, dtype=dtype),
            v_win=torch.zeros(*lead_v, window, D, device=device, dtype=dtype),
            lg_win=torch.zeros(*lead, window, device=device, dtype=dtype),
        )

    def _map(self, fn) -> "AttnState":
        return AttnState(**{name: fn(x) for name, x in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: x for f in fields(self) if (x := getattr(self, f.name)) is not None}

    def swap_lanes_heads(self) -> "AttnState":
        """The same state with dims 0 and 1 (lanes, heads) swapped, as views: the model keeps its
        states lanes-first for callers and computes heads-first (bdh.py), and a state it made
        itself swaps back to contiguous tensors, so neither direction copies."""
        return self._map(lambda x: x.transpose(0, 1))

    def detach(self) -> "AttnState":
        """Cut the graph here: truncated backpropagation through time."""
        return self._map(torch.Tensor.detach)

    def to(self, device=None, dtype=None) -> "AttnState":
        return self._map(lambda x: x.to(device=device, dtype=dtype))

    def reset_(self, mask: torch.Tensor) -> "AttnState":
        """Zero the lanes b where mask[b] is True (their stream restarted); returns self.

        In place on this object: its fields are replaced by new tensors. The old tensors are not
        written, so a state still saved by an autograd graph stays valid.
        """
        for name, x in self.tensors().items():
            m = mask.to(device=x.device, dtype=torch.bool).view(-1, *([1] * (x.dim() - 1)))
            setattr(self, name, x.masked_fill(m, 0))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors())

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> "AttnState":
        return cls(**d)


@dataclass
class BDHState:
    """Everything a BDH model needs to continue a stream: one AttnState per layer, the position,
    and the previous-token path's last inputs (model.token_shift; model/bdh/token_shift.py).

    The position is shared by all lanes of a batch. Scores depend only on t - s, so a lane whose
    state was reset (rho zeroed) may go on at any absolute position: only queries and the keys
    stored in rho must agree, and a zero rho holds no keys.

    shift: per token-shift module (one for `embed`, one per layer for `layer`, none without it)
    the last k-1 inputs it read, (B, k-1, D) lanes-first; zeros are a fresh stream. A state
    without them (older checkpoints, or a model without the path) reads as zeros.
    """

    layers: list[AttnState]
    pos: int = 0
    shift: list[torch.Tensor] = field(default_factory=list)

    def _map(self, fn) -> "BDHState":
        return BDHState([s._map(fn) for s in self.layers], self.pos, [fn(x) for x in self.shift])

    def detach(self) -> "BDHState":
        """Cut the graph here: truncated backpropagation through time."""
        return self._map(torch.Tensor.detach)

    def to(self, device=None, dtype=None) -> "BDHState":
        return self._map(lambda x: x.to(device=device, dtype=dtype))

    def reset_(self, mask: torch.Tensor) -> "BDHState":
        """Zero, in place, the state of the lanes where mask is True (their stream restarted)."""
        for s in self.layers:
            s.reset_(mask)
        self.shift = [x.masked_fill(mask.to(device=x.device, dtype=torch.bool).view(-1, 1, 1), 0) for x in self.shift]
        return self

    def state_dict(self) -> dict:
        d = {"pos": self.pos, "layers": [s.state_dict() for s in self.layers]}
        if self.shift:
            d["shift"] = list(self.shift)
        return d

    @classmethod
    def from_state_dict(cls, d: dict) -> "BDHState":
        return cls([AttnState.from_state_dict(x) for x in d["layers"]], int(d["pos"]), list(d.get("shift", [])))

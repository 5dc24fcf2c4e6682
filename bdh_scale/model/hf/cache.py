"""transformers' generation cache for a BDH model: the carried state itself (a BDHState), not
keys and values of the tokens read so far. A step reads one token into it in O(N D) per head,
whatever the length of the context behind it (docs/design.md, "Generation").

The cache knows nothing of the state's fields: whatever BDHState holds (rho per layer and head, a
window's last keys and values, the previous-token path's last inputs, the position) goes through
its state_dict(), every tensor of which has the lanes (the batch) first, so reordering beams or
selecting rows is one map over that tree.

A plain object rather than a transformers Cache subclass: those are lists of per-layer key/value
(or conv/recurrent) tensors whose API changes between transformers versions, and generate needs
only what is here (as for transformers' own xLSTM cache).
"""
from __future__ import annotations

import torch

from bdh_scale.model.bdh.attention.state import BDHState
from bdh_scale.utils.tree import map_tensors


class BDHScaleCache:
    is_compileable = False  # generate never compiles the forward around it
    is_croppable = False  # a sum over the tokens read cannot give one back (assisted decoding)

    def __init__(self, state: BDHState | None = None):
        self.state = state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens read into the state (its stream position)."""
        return 0 if self.state is None else self.state.pos

    def _map(self, fn) -> None:
        if self.state is not None:
            self.state = BDHState.from_state_dict(map_tensors(fn, self.state.state_dict()))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the state becomes row beam_idx[i]."""
        self._map(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda x: x[indices.to(x.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda x: x.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        self.state = None

    def __repr__(self) -> str:
        return f"BDHScaleCache(tokens read: {self.get_seq_length()})"

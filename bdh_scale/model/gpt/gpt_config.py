"""The GPT baseline's own field of the recipe's `model:` section (model/config.py gathers it): it
reads n_layer / n_embd / n_head / vocab_size / dropout like every architecture, token_shift and
token_shift_kernel like BDH (the previous-token path), and a position table."""
from __future__ import annotations

from dataclasses import dataclass

from bdh_scale.utils.schema import PosInt


@dataclass
class GPTFields:
    block_size: PosInt = 1024  # gpt: positions of its learned position table, the longest window it reads


"""The GPT baseline's own field of the recipe's `model:` section (model/config.py gathers it): it
reads n_layer / n_embd / n_head / vocab_size / dropout like every architecture, and a position table."""
from __future__ import annotations

from dataclasses import dataclass

from bdh_scale.utils.schema import PosInt


@dataclass
class GPTFields:
    block_size: PosInt = 1024  # gpt: positions of its learned position table, the longest window it reads

    def check_gpt(self) -> None:
        if self.arch == "gpt" and self.token_shift != "none":
            self.bad("token_shift", f"{self.token_shift} is BDH's previous-token path; the gpt baseline has its own "
                                    "(softmax attention learns it); set model.token_shift=none with arch=gpt")

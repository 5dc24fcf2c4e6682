"""The `model:` section of a recipe, and what config.json of a saved model holds: one flat section
for every architecture, so a recipe switches architecture with one key.

Each architecture's own fields live beside it (bdh/bdh_config.py, gpt/gpt_config.py,
hrm/hrm_config.py) and are gathered here after the fields every architecture reads. Adding an
architecture's field is one line in its own file; the help (`bdh-train --help`), the checks and
config.json follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from bdh_scale.model.bdh.bdh_config import BDHFields
from bdh_scale.model.gpt.gpt_config import GPTFields
from bdh_scale.model.hrm.hrm_config import HRMFields
from bdh_scale.utils.schema import PosInt, Range, Section


@dataclass
class CommonFields:
    arch: Literal["bdh", "gpt", "bdh_hrm"] = "bdh"  # bdh (this model) | gpt (the GPT-2-style baseline) | bdh_hrm (BDH-HRM hybrid)
    n_layer: PosInt = 6  # number of layers
    n_embd: PosInt = 256  # D: width of the residual stream
    n_head: PosInt = 4  # heads; each BDH head has its own N neurons
    vocab_size: PosInt = 256  # 256 for the byte tokenizer; follows the tokenizer otherwise
    dropout: Annotated[float, Range(0.0, 1.0)] = 0.1  # dropout (BDH: on the sparse xy activations)
    token_shift: Literal["none", "embed", "layer"] = "none"  # previous-token path (every architecture): none | embed (once, on the embeddings) | layer (before every layer)
    token_shift_kernel: Annotated[int, Range(2, 16)] = 2  # k: the current input plus its k-1 predecessors (2: a token shift)


@dataclass
class ModelConfig(HRMFields, GPTFields, BDHFields, CommonFields, Section):
    section = "model"

    def check(self) -> None:
        if self.n_embd % self.n_head:
            self.bad("n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}; "
                               "pick n_embd a multiple of n_head")
        self.check_bdh()

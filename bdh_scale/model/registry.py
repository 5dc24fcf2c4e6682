"""Every model architecture the trainer builds, in one place: `model.arch` of a recipe -> its class
and whether it carries a state across windows (train.state: carry, carried validation, generation
from a state). Everything that depends on the architecture asks here. Loading a saved model of any
architecture is load.load_pretrained; this module needs nothing but the model classes, so a
model's transformers code (model/hf/) ships it too.
"""
from __future__ import annotations

from dataclasses import dataclass

from bdh_scale.model.bdh.bdh import BDH
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.gpt.gpt import GPT
from bdh_scale.model.hrm.hrm import BDHHRM


@dataclass(frozen=True)
class Arch:
    model: type  # a Pretrained nn.Module: from_config(ModelConfig), from_pretrained(dir or Hub id)
    stateful: bool  # carries a synaptic state from one window to the next


ARCHS: dict[str, Arch] = {
    "bdh": Arch(BDH, stateful=True),  # BDH: sparse positive neurons, Hebbian linear attention, state rho
    "gpt": Arch(GPT, stateful=False),  # GPT-2-style Transformer baseline (softmax attention)
    "bdh_hrm": Arch(BDHHRM, stateful=False),  # BDH-HRM hybrid: H and L modules of BDH layers
}


def build_model(config: ModelConfig):
    """The model a recipe asks for (config.arch)."""
    return ARCHS[config.arch].model.from_config(config)


def is_stateful(model) -> bool:
    """Whether a built model carries a state across windows."""
    return ARCHS[model.arch].stateful


def reach(model, trained: int) -> int | None:
    """How many tokens back a built model can read after training on windows of `trained` tokens.
    None for a stateful model: its state spans windows, so no window bounds it. A stateless one
    sees one window: the trained length, or fewer where its positions end (GPT: block_size),
    which is what its generation reads too (gen_context)."""
    return None if is_stateful(model) else model.gen_context(trained)

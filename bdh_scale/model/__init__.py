"""Models: BDH (the subject) and a GPT-2-style baseline, both returning ModelOutput."""
from .bdh import BDH
from .config import BDHConfig
from .memory import BDHState
from .output import ModelOutput


def build_model(config: BDHConfig):
    """The model a recipe asks for: config.arch picks BDH, the GPT baseline or the BDH-HRM hybrid."""
    config.validate()
    if config.arch == "gpt":
        from .gpt import GPT, GPTConfig

        return GPT(GPTConfig(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
                             vocab_size=config.vocab_size, dropout=config.dropout, block_size=config.block_size))
    if config.arch == "bdh_hrm":
        from .hrm import BDHHRM

        return BDHHRM(config)
    return BDH(config)


__all__ = ["BDH", "BDHConfig", "BDHState", "ModelOutput", "build_model"]

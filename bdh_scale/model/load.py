"""Loading a saved model whatever its architecture: config.json names it, the registry
(registry.py) builds it, after a check that it fits in memory at all."""
from __future__ import annotations

from bdh_scale.errors import ModelError
from bdh_scale.model.footprint import loading
from bdh_scale.model.pretrained import read_config
from bdh_scale.model.registry import ARCHS
from bdh_scale.utils.memory import available_bytes


def load_pretrained(name, **kwargs):
    """The model saved by save_pretrained in a directory or a Hub repo (owner/name), whatever its
    architecture, with its tokenizer, card and recipe (model/pretrained.py). kwargs: as
    from_pretrained (Hub options, model fields that do not change the weights)."""
    config = read_config(name, **kwargs)
    check_loadable(config, name)
    return ARCHS[config.arch].model.from_pretrained(name, **kwargs)


def count(n: int) -> str:
    return f"{n / 1e9:,.1f}B" if n >= 1e9 else f"{n / 1e6:,.1f}M"


def check_loadable(config, name) -> None:
    """ModelError, before a weight is allocated, when the model config.json describes cannot be
    loaded in this machine's memory (a config.json of n_embd: 10000000 would take it all)."""
    need = loading(config)
    room, bound = available_bytes("cpu")
    if need.total > room:
        raise ModelError(f"{name}: its config.json describes a {config.arch} of {count(need.params)} parameters, "
                         f"which needs about {need.total / 2**30:,.1f} GiB to load, and there are "
                         f"{room / 2**30:,.1f} GiB {bound}; is it the model you meant?")

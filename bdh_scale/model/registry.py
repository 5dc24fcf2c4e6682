"""Loading a saved model whatever its architecture: config.json names it, archs.py builds it. The
architectures themselves (ARCHS, build_model, is_stateful) are in archs.py and re-exported here.
"""
from __future__ import annotations

from bdh_scale.model.archs import ARCHS, Arch, build_model, is_stateful
from bdh_scale.model.pretrained import read_config

__all__ = ["ARCHS", "Arch", "build_model", "is_stateful", "load_pretrained"]


def load_pretrained(name, **kwargs):
    """The model saved by save_pretrained in a directory or a Hub repo (owner/name), whatever its
    architecture, with its tokenizer, card and recipe (model/pretrained.py). kwargs: as
    from_pretrained (Hub options, model fields that do not change the weights)."""
    config = read_config(name, **kwargs)
    return ARCHS[config.arch].model.from_pretrained(name, **kwargs)

"""The recipe's model section (model/config.py) as a transformers config: what AutoConfig builds
from a model directory's config.json (auto_map, trust_remote_code=True).

config.json holds every field of ModelConfig, so bdh-scale and transformers read the same file. The
fields are checked as a recipe's are (a bad value is one ConfigError naming it), and written in full
by save_pretrained: a value at its default is written too, so the file does not depend on the
defaults of the version that reads it. transformers' own keys (model_type, auto_map, architectures,
pad_token_id, ...) sit beside them; bdh-scale ignores those (model/pretrained.py).
"""
from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from bdh_scale.model.config import ModelConfig
from bdh_scale.model.registry import ARCHS

FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


class BDHScaleConfig(PretrainedConfig):
    model_type = "bdh_scale"  # export.MODEL_TYPE
    # the names transformers and its tools look for (e.g. lm-evaluation-harness, device maps)
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}

    def __init__(self, use_cache: bool | None = None, **kwargs):
        section = ModelConfig(**{name: kwargs.pop(name) for name in FIELDS if name in kwargs})
        for name in FIELDS:
            setattr(self, name, getattr(section, name))
        # generation reads through the carried state of a BDH; the stateless models have none
        self.use_cache = ARCHS[section.arch].stateful if use_cache is None else use_cache
        kwargs.setdefault("tie_word_embeddings", False)  # BDH's lm_head is its own matrix (GPT ties it itself)
        super().__init__(**kwargs)

    def model_section(self) -> ModelConfig:
        """The recipe's model section this config stands for."""
        return ModelConfig(**{name: getattr(self, name) for name in FIELDS})

    def to_diff_dict(self) -> dict:
        return {**super().to_diff_dict(), **dataclasses.asdict(self.model_section()), "use_cache": self.use_cache}

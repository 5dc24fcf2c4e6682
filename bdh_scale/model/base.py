"""What every bdh-scale model class is apart from where its files come from: the name of its
architecture, its config in the recipe's words and back, and the files that travel with it.

pretrained.py puts the model directory and the Hugging Face Hub on top (huggingface_hub's mixin:
save_pretrained, from_pretrained, push_to_hub). A model's transformers code (model/hf/) ships the
model classes on this base alone, since there transformers' PreTrainedModel does that job.
"""
from __future__ import annotations


class ModelBase:
    """A class names its `arch` and may translate the recipe's model section into its own config
    (from_config) and back (model_config), as the GPT baseline does."""

    arch: str = ""
    tokenizer = None  # ByteTokenizer | BPETokenizer: tokenizer.json
    card = None  # huggingface_hub ModelCard: README.md; model_card(self) when None
    recipe: dict | None = None  # recipe.yaml: the resolved recipe (RunConfig.to_dict())

    def model_config(self):
        return self.config

    @classmethod
    def from_config(cls, config):
        return cls(config)

"""The files that make a model directory (a run's final/, a checkpoint, a Hub repo) load with
transformers as well as with bdh-scale:

    config.json            the model section plus transformers' keys (transformers_keys): model_type,
                           auto_map (which shipped class AutoConfig / AutoModelForCausalLM build),
                           architectures, the special token ids (use_cache follows the
                           architecture: configuration_bdh.py)
    *.py                   the modeling code, generated from the package (codegen.py)
    tokenizer_config.json  AutoTokenizer: a PreTrainedTokenizerFast over tokenizer.json, padding on the
                           left, pad token <|pad|> (tokenizer_files)
    generation_config.json generate's defaults: the pad token, no end-of-text token

Token ids are bdh-scale's (tokenizer.json is the same file). The models were trained on a stream
without end-of-text or beginning-of-text tokens, so none is declared: generation runs to
max_new_tokens (or a stop string), and lm-evaluation-harness needs the document prefix as
prefix_token_id (docs/design.md, "Transformers"). Padding needs a pad token: <|pad|>, one id past
the model's vocabulary, so no text token becomes one; padded positions are never read (modeling_bdh.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from bdh_scale.model.hf.codegen import write_code
from bdh_scale.utils.atomic import write_text_atomic

MODEL_TYPE = "bdh_scale"  # configuration_bdh.MODEL_TYPE (that module imports transformers)
AUTO_MAP = {"AutoConfig": "configuration_bdh.BDHScaleConfig",
            "AutoModelForCausalLM": "modeling_bdh.BDHScaleForCausalLM"}
PAD_TOKEN = "<|pad|>"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"


def pad_id(config) -> int:
    """<|pad|>'s id: the first one past the model's vocabulary."""
    return config.vocab_size


def transformers_keys(config) -> dict:
    """The keys config.json holds for transformers, beside the model section's fields."""
    return {"model_type": MODEL_TYPE, "architectures": ["BDHScaleForCausalLM"], "auto_map": AUTO_MAP,
            "tie_word_embeddings": False, "pad_token_id": None,  # generation_config.json has <|pad|>
            "bos_token_id": None, "eos_token_id": None}


def tokenizer_files(config) -> dict[str, dict]:
    """tokenizer_config.json: tokenizer.json read by PreTrainedTokenizerFast, <|pad|> added."""
    pad = {"content": PAD_TOKEN, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
           "special": True}
    return {TOKENIZER_CONFIG: {"tokenizer_class": "PreTrainedTokenizerFast", "padding_side": "left",
                               "pad_token": PAD_TOKEN, "bos_token": None, "eos_token": None,
                               "added_tokens_decoder": {str(pad_id(config)): pad},
                               "clean_up_tokenization_spaces": False}}


def write_transformers_files(directory: Path, config, with_tokenizer: bool) -> list[str]:
    """The code, tokenizer and generation files of a model directory (config.json aside: written
    by model/pretrained.py with transformers_keys); the names written. `with_tokenizer`: the
    directory holds tokenizer.json."""
    directory = Path(directory)
    written = write_code(directory)
    files = {GENERATION_CONFIG: {"pad_token_id": pad_id(config), "bos_token_id": None, "eos_token_id": None}}
    if with_tokenizer:
        files.update(tokenizer_files(config))
    for name, content in files.items():
        write_text_atomic(directory / name, json.dumps(content, indent=2) + "\n")
    return written + list(files)

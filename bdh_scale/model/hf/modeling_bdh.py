"""A bdh-scale model as a transformers causal LM: what AutoModelForCausalLM builds from a model
directory (auto_map in config.json, trust_remote_code=True), for every architecture of archs.py.

The network is the bdh-scale model itself (`self.model`, built by archs.py from the recipe's model
section), so its weights are model.safetensors as bdh-scale writes it (transformers adds and drops
the `model.` prefix) and its logits are bdh-scale's. This module only speaks transformers:

* forward(input_ids, attention_mask, cache, labels) -> loss (labels shifted inside, -100 ignored),
  logits and, for BDH, the cache: the carried state after the last token (cache.py). A step of
  `generate` reads only the tokens the state has not seen, so every new token costs the same
  whatever the context length. GPT and BDH-HRM have no state: generate reruns them on the last
  block_size (hrm_gen_context) tokens, as bdh-scale's own generation does.
* padding: rows padded on the left (attention_mask 0 before the first token) start their stream
  at their first token (a document start: model/bdh/bdh.py resets the state there, GPT and BDH-HRM
  attend within it), so a padded row scores and generates exactly as it would alone. Padding on
  the right only leaves the padded positions' logits unused (the models are causal), so it is
  accepted when no state is kept; a state that read padding at its end, or a mask with a gap, is
  refused. Masked ids are never read: the tokenizer's pad token lies outside the model's vocabulary.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
import transformers
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from bdh_scale.model.hf.cache import BDHScaleCache
from bdh_scale.model.hf.configuration_bdh import BDHScaleConfig
from bdh_scale.model.output import lm_loss
from bdh_scale.model.registry import ARCHS

TESTED = "5.10.1 to 5.25.0 (a Hub copy from 5.0.0)"  # docs/design.md, "Transformers"
if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(f"this bdh-scale model needs transformers 5 (tested: {TESTED}); this is "
                      f"{transformers.__version__}: pip install -U transformers")
# transformers < 5.2x hands the cache around as `past_key_values`, later versions as `cache`
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters \
    else "past_key_values"


@dataclass
class BDHScaleOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: BDHScaleCache | None = None  # set under the name this transformers version reads (CACHE_KWARG)
    past_key_values: BDHScaleCache | None = None


def runnable(config: BDHScaleConfig):
    """The model section the network is built from: the saved one, except that a model trained
    with attn_backend fla (flash-linear-attention's Triton kernels, CUDA only) runs in the form
    auto picks by length, parallel or chunked: the same function, computed in plain torch on any
    device, with no dependency on fla (its adapter is in the shipped code, never called)."""
    section = config.model_section()
    return dataclasses.replace(section, attn_backend="auto") if section.attn_backend == "fla" else section


class BDHScalePreTrainedModel(PreTrainedModel):
    config_class = BDHScaleConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def _init_weights(self, module) -> None:
        """Nothing: bdh-scale's models initialise their own parameters, as in training, and a
        loaded model takes every parameter from model.safetensors."""


class BDHScaleForCausalLM(BDHScalePreTrainedModel, GenerationMixin):
    def __init__(self, config: BDHScaleConfig):
        super().__init__(config)
        section = runnable(config)
        self.model = ARCHS[section.arch].model.from_config(section)
        self.stateful = ARCHS[section.arch].stateful
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is the model's own state, made by its first forward

    def get_input_embeddings(self):
        return self.model.embed

    # -- forward -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: BDHScaleCache | None = None, past_key_values: BDHScaleCache | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, return_dict: bool | None = None,
                logits_to_keep: int = 0, **kwargs) -> BDHScaleOutput | tuple:
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("bdh-scale models read token ids: pass input_ids, not inputs_embeds")
        cache = cache if cache is not None else past_key_values
        cache = cache if isinstance(cache, BDHScaleCache) else None  # e.g. an empty DynamicCache: nothing read yet
        use_cache = (self.config.use_cache if use_cache is None else use_cache) and self.stateful
        state = cache.state if cache is not None else None
        input_ids, doc_start = self.read_mask(input_ids, attention_mask, state is not None, use_cache)
        if state is None and use_cache:
            out = self.model(input_ids, return_state=True, doc_start=doc_start)
        elif state is not None:
            # the cache owns its state: stepped in place when nothing needs its graph (generation)
            out = self.model(input_ids, state=state, return_state=True, doc_start=doc_start,
                             update_state_in_place=not torch.is_grad_enabled())
        else:
            out = self.model(input_ids, doc_start=doc_start)
        if use_cache:
            cache = cache if cache is not None else BDHScaleCache()
            cache.state = out.state
        logits = out.logits if not logits_to_keep else out.logits[:, -logits_to_keep:]
        loss = None
        if labels is not None:
            loss = lm_loss(out.logits[:, :-1], labels[:, 1:])  # bdh-scale's loss; -100 (IGNORE) is not scored
        result = BDHScaleOutput(loss=loss, logits=logits, **{CACHE_KWARG: cache if use_cache else None})
        return result if return_dict is not False else result.to_tuple()

    def read_mask(self, input_ids, attention_mask, continuing: bool, keep_state: bool):
        """input_ids with masked positions set to a real id (they are never read), and doc_start
        (B, T) bool: each left-padded row's first token, where its stream begins. None: no padding."""
        if attention_mask is None:
            vocab = self.config.vocab_size
            if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
                raise ValueError(f"input_ids hold a token id outside the model's {vocab} tokens (the tokenizer's pad "
                                 "token?); pass the attention_mask that marks the padding")
            return input_ids, None
        mask = attention_mask[:, -input_ids.size(1):].bool()
        if bool(mask.all()):
            return input_ids, None
        ones = mask.long()
        first = torch.where(mask.any(dim=1), ones.argmax(dim=1), mask.size(1))  # first token of each row
        after = torch.arange(mask.size(1), device=mask.device)[None, :] >= first[:, None]
        right = ones.flip(1).cumsum(1).flip(1) == 0  # positions after a row's last token
        if bool((~mask & after & ~right).any()):
            raise ValueError("attention_mask has a gap inside a row; bdh-scale models read a row as one stream: pad "
                             "on the left (tokenizer.padding_side = 'left')")
        if bool((right & after).any()) and keep_state:
            raise ValueError("attention_mask pads rows on the right, so the state would read the padding; pad on the "
                             "left for generation (tokenizer.padding_side = 'left'), or pass use_cache=False")
        if not bool(mask.any(dim=1).all()):
            raise ValueError("attention_mask masks every token of a row; give every row at least one token")
        if continuing and bool((~after).any()):
            raise ValueError("attention_mask pads a row after its state began; padding goes before a row's first token")
        doc_start = torch.zeros_like(mask)
        doc_start[torch.arange(mask.size(0), device=mask.device), first] = first > 0
        return input_ids.masked_fill(~mask, 0), doc_start

    # -- generation ------------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, use_cache=None, **kwargs):
        """BDH: the tokens its state has not read yet (all of the prompt first, then the newest).
        Stateless models: the last tokens their context holds (model.gen_context)."""
        cache = kwargs.get(CACHE_KWARG)
        cache = cache if isinstance(cache, BDHScaleCache) else None
        use_cache = (self.config.use_cache if use_cache is None else use_cache) and self.stateful
        if use_cache:
            input_ids = input_ids[:, cache.get_seq_length():] if cache is not None else input_ids
        elif not self.stateful:
            context = self.model.gen_context(None)
            input_ids = input_ids[:, -context:]
            attention_mask = None if attention_mask is None else attention_mask[:, -context:]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache,
                  CACHE_KWARG: cache}
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

"""A bdh-scale model as lm-evaluation-harness sees it (`lm_eval.api.model.TemplateLM`).

    loglikelihood          log p(continuation | context), and whether greedy decoding would write it
    loglikelihood_rolling  log p(document), every token predicted once: perplexity, bits per byte
    generate_until         model.stream() until a stop string or max_gen_toks

Two ways to read a long text (`carry`):

* carried state (BDH, trained with train.state=carry): the whole context and document go through
  the synaptic state in chunks of the training window (scoring.py), so nothing is cut and memory
  per token is constant.
* windows (a model trained on independent windows, and the stateless baselines): what the harness
  does for Transformers. A context is cut on the left to one window; a document is scored in the
  harness's rolling windows, each predicting its tokens from within itself.

The models have no end-of-text token: a document starts after `prefix` (default a newline, the
paragraph break of the training text), which stands where the harness puts BOS/EOS.
"""
from __future__ import annotations

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from tqdm.auto import tqdm

from bdh_scale.data.tokenize.tokenizer import StreamDecoder
from bdh_scale.harness.scoring import token_logprobs


class BDHLM(TemplateLM):
    def __init__(self, model, tokenizer, *, window: int, carry: bool, batch_size: int = 16, device="cpu",
                 prefix: str = "\n", max_gen_toks: int = 256, seed: int = 1234):
        super().__init__()
        prefix_ids = tokenizer.encode(prefix)
        if not prefix_ids:
            raise ValueError(f"the prefix {prefix!r} encodes to no token")
        self.model = model.to(device).eval()
        self.text_tokenizer = tokenizer
        self.window, self.carry, self.batch_size = window, carry, batch_size
        self._device = torch.device(device)
        self.prefix_id = prefix_ids[-1]
        self.max_gen_toks, self.seed = max_gen_toks, seed

    # -- what TemplateLM asks of a model -----------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.prefix_id

    @property
    def max_length(self) -> int:
        return self.window

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.text_tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.text_tokenizer.decode(tokens)

    def scores(self, sequences: list[list[int]], disable_tqdm: bool = True):
        """token_logprobs of the sequences, in batches, with a progress bar."""
        out = []
        step = self.batch_size * 8
        for i in tqdm(range(0, len(sequences), step), disable=disable_tqdm or len(sequences) <= step,
                      desc="scoring"):
            out += token_logprobs(self.model, sequences[i:i + step], self.window, self.carry, self.batch_size,
                                  self._device)
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids); the continuation is
        scored after the whole context (carried state) or after what fits one window with it."""
        sequences, scored = [], []
        for _, context, continuation in requests:
            whole = context + continuation
            if not self.carry:
                whole = whole[-(self.window + 1):]
            sequences.append(whole)
            scored.append(min(len(continuation), len(whole) - 1))
        results = []
        for (request, _, _), (logp, greedy), n in zip(requests, self.scores(sequences, disable_tqdm), scored):
            result = (float(logp[-n:].sum()), bool(greedy[-n:].all()))
            if request is not None:  # rolling windows come without their text
                self.cache_hook.add_partial("loglikelihood", request, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        documents = [self.tok_encode(string) for (string,) in (r.args for r in requests)]
        if self.carry:  # each document one stream through the carried state, after the prefix
            totals = [float(logp.sum()) for logp, _ in self.scores([[self.prefix_id] + d for d in documents],
                                                                    disable_tqdm)]
        else:  # the harness's rolling windows, each scored as an independent window
            windows, owner = [], []
            for i, tokens in enumerate(documents):
                for context, continuation in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                        token_list=tokens, prefix_token=self.prefix_id, max_seq_len=self.window, context_len=1)):
                    windows.append((None, context, continuation))
                    owner.append(i)
            totals = [0.0] * len(documents)
            for i, (logp, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
                totals[i] += logp
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generating"):
            context, kwargs = request.args
            results.append(self.generate_one(context, dict(kwargs)))
            self.cache_hook.add_partial("generate_until", request.args, results[-1])
        return results

    def generate_one(self, context: str, kwargs: dict) -> str:
        """The text generated after `context` up to the first stop string (excluded)."""
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.get("temperature", 0.0))
        if kwargs.get("do_sample") is False:
            temperature = 0.0
        ids = self.tok_encode(context) or [self.prefix_id]
        max_context = None if self.carry else max(self.window, 2)
        if max_context is not None:
            ids = ids[-max_context:]
        generator = torch.Generator().manual_seed(self.seed)
        decoder, text = StreamDecoder(self.text_tokenizer, ids), ""
        stream = self.model.stream(torch.tensor([ids], device=self._device), int(kwargs.get("max_gen_toks",
                                   self.max_gen_toks)), temperature=temperature, top_k=kwargs.get("top_k"),
                                   generator=generator, max_context=max_context)
        for token in stream:
            text += decoder.push(token[0].tolist())
            if any(stop in text for stop in until):
                break
        text += decoder.flush()
        for stop in until:
            text = text.split(stop)[0]
        return text

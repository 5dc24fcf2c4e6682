"""BDH: a language model of sparse positive neurons with Hebbian linear attention.

Per layer and head (docs/design.md; names from the paper and the reference code):

    x_sparse = relu(x @ encoder)                   N >> D positive neurons
    a        = c * sum_{s<t} (q~_t . q~_s) x_s     linear attention, state rho = sum q~_s x_s^T
    y_sparse = relu(LN(a) @ encoder_v)
    x        = LN(x + LN((x_sparse * y_sparse) @ decoder))
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bdh_scale.model.bdh.attention import (AttnState, BDHState, ForgetGate, attend_chunked, attend_parallel,
                                           causal_self_attention, pick_backend)
from bdh_scale.model.bdh.attention.fla import attend_fla, unavailable as fla_unavailable, warn_fallback
from bdh_scale.model.bdh.rope import RopeCache, rotate
from bdh_scale.model.bdh.token_shift import TokenShift, token_shifts
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.output import ModelOutput, lm_loss
from bdh_scale.model.pretrained import Pretrained
from bdh_scale.model.sampling import sample_next, starts_after


class AttnPlan(NamedTuple):
    """How every layer's attention computes one forward call (BDH.plan)."""

    kind: str  # parallel | chunked | fla
    chunk: int  # chunk size of the recurrent form
    need_state: bool  # build the state after the last token
    in_place: bool = False  # update the given state's rho in place (generation, no autograd)


def attention_plan(c: ModelConfig, T: int, stateful: bool, need_state: bool, in_place: bool = False,
                   fla_lengths=frozenset()) -> AttnPlan:
    """Which attention form computes a call of T tokens (BDH.plan; also what the memory estimate of
    model/footprint.py counts). fla_lengths: the lengths attn_backend auto measured faster with fla."""
    kind, chunk = pick_backend(T, c.n_neurons, c.n_embd, c.attn_window)
    if c.attn_backend == "chunked" and kind == "parallel":
        # forced chunked below the crossover: the chunk size auto would use past it
        chunk = pick_backend(1 << 30, c.n_neurons, c.n_embd, c.attn_window)[1]
    if c.attn_backend not in ("auto", "fla"):
        kind = c.attn_backend
    if (c.attn_backend == "fla" or T in fla_lengths) and not in_place:
        # one-token generation steps stay the in-place recurrent step: fla's kernels are for
        # windows, and the step is the same function
        kind = "fla"
    if c.chunk_size and kind == "chunked":
        chunk = c.chunk_size
    if kind == "parallel" and (stateful or need_state):
        chunk = max(T, 1)  # one chunk of the recurrent form is the parallel form plus the state
    return AttnPlan(kind, chunk, need_state, in_place)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters, as in the reference."""
    return F.layer_norm(x, (x.size(-1),))


def projection_params(nh: int, D: int, N: int) -> dict[str, nn.Parameter]:
    """encoder, encoder_v (nh, D, N) and decoder (nh*N, D), initialised as the reference."""
    return {
        "encoder": nn.Parameter(torch.randn(nh, D, N) * 0.02),
        "encoder_v": nn.Parameter(torch.randn(nh, D, N) * 0.02),
        "decoder": nn.Parameter(torch.randn(nh * N, D) * 0.02),
    }


def active_boundaries(doc_start: torch.Tensor | None) -> torch.Tensor | None:
    """doc_start, or None when it marks no token: windows without a boundary keep the fast paths."""
    return doc_start if doc_start is not None and bool(doc_start.any()) else None


def shifted(shift: TokenShift, x: torch.Tensor, prev: list, i: int, doc_start, new: list) -> torch.Tensor:
    """LN(x + the shift of x): the input with its predecessors mixed in; the module's new state
    goes to `new`. prev: the carried inputs of every module (empty: a fresh stream)."""
    out, tail = shift(x, prev[i] if i < len(prev) else None, doc_start)
    new.append(tail)
    return layer_norm(out)


def diff_lambda_init(layer_index: int) -> float:
    """Initial weight of the subtracted map (Differential Transformer's depth-dependent init)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class SparseProduct(nn.Module):
    """xy_sparse = x_sparse * y_sparse, the gated neurons that reach the decoder.

    A module of its own so that analyses can hook it (model/bdh/probes.py): a forward pre-hook
    reads both sparse codes as the layer computed them, a forward hook can silence heads.
    Its arguments are (B, H, T, N) views of the layer's heads-first tensors.
    """

    def forward(self, x_sparse: torch.Tensor, y_sparse: torch.Tensor) -> torch.Tensor:
        return x_sparse * y_sparse


class BDHLayer(nn.Module):
    """One BDH layer. Holds its own projections when config.per_layer_params, else borrows them.

    Inside, neuron tensors are heads-first, (H, B, T, N). Each projection is then one batched GEMM
    over heads with contiguous operands and outputs, and attention folds (H, B) into one batch
    dim without copies. Lanes-first (B, H, T, N) would make every (B, H) fold, the decoder's
    sum over heads and their backward passes copy a (B, H, T, N) tensor, the size of the
    activations themselves.
    """

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        nh, D, N = config.n_head, config.n_embd, config.n_neurons
        self.config = config
        if config.per_layer_params:
            for name, p in projection_params(nh, D, N).items():
                self.register_parameter(name, p)
        self.forget = ForgetGate(config.forget_mode, nh, D, config.forget_timescales)
        if config.diff_attn:
            self.diff_lambda = nn.Parameter(torch.full((nh,), diff_lambda_init(layer_index)))
        self.product = SparseProduct()
        self.drop = nn.Dropout(config.dropout)
        self.scale = 1.0 / math.sqrt(N) if config.score_scale == "inv_sqrt_n" else 1.0

    def queries(self, k: torch.Tensor) -> torch.Tensor:
        """Differential attention: q = k on the first map's neurons, -lambda * k on the second's.
        k is heads-first (H, B, T, N)."""
        if not self.config.diff_attn:
            return k
        # Neuron pairs alternate between the two maps, so both see every RoPE frequency. Made per
        # call, not held as a buffer: a model built on the meta device (transformers' loading) has
        # values only for what model.safetensors holds.
        second = (torch.arange(k.size(-1), device=k.device) // 2) % 2 == 1
        sign = torch.where(second, -self.diff_lambda[:, None], torch.ones_like(self.diff_lambda)[:, None])
        return k * sign[:, None, None, :].to(k.dtype)

    def attend(self, k, x, state, plan, doc_start=None):
        """a: (H, B, T, D), the linear attention of the rotated keys k (H, B, T, N) over the values
        x (B, T, D), continuing from `state` (lanes-first AttnState), and the new state. doc_start
        (B, T) bool or None: the state is reset right before these tokens (a document begins)."""
        kind, chunk, need_state, in_place = plan
        q = self.queries(k)
        v = x.unsqueeze(0)  # values are the layer input, shared by all heads
        log_g = self.forget(x)
        log_g = None if log_g is None else log_g.transpose(0, 1)
        doc_start = None if doc_start is None else doc_start.unsqueeze(0)  # heads-first, like log_g
        stateless = state is None and not need_state
        window = self.config.attn_window
        plain = q is k and log_g is None and window is None and doc_start is None
        if kind == "parallel" and stateless and plain:
            return causal_self_attention(k, v, self.scale), None  # the reference model's hot path
        if kind == "parallel" and stateless:
            return attend_parallel(q, k, v, self.scale, log_g, window, doc_start), None
        if kind == "fla":
            if (why := fla_unavailable(k.device)) is None:
                a, rho = attend_fla(q, k, v, self.scale, None if state is None else state.rho,
                                    log_g, need_state, None if doc_start is None else doc_start[0])
                return a, (AttnState(rho=rho) if need_state else None)
            warn_fallback(why)  # a model trained with fla, read where fla cannot run
        state = None if state is None else state.swap_lanes_heads()
        a, new_state = attend_chunked(q, k, v, self.scale, state, log_g, window, chunk, need_state, in_place,
                                      doc_start)
        return a, (None if new_state is None else new_state.swap_lanes_heads())

    def forward(self, x, encoder, encoder_v, decoder, cos, sin, state, plan, doc_start=None):
        """x: (B, T, D) -> (B, T, D) and the new AttnState (None when not needed)."""
        B, T, D = x.shape
        H, N = encoder.size(0), encoder.size(-1)
        # One (B*T, D) @ (D, N) GEMM per head. x is copied per head (small next to the output): a
        # broadcast, stride-0 batch would send bmm's backward down a slow path. Plain torch, no
        # einops: this module is also shipped as a model's transformers code (model/hf/), which
        # may import nothing but torch.
        x_sparse = torch.bmm(x.reshape(1, B * T, D).repeat(H, 1, 1), encoder).relu_()  # in place: bmm keeps no output
        x_sparse = x_sparse.unflatten(1, (B, T))  # (H, B, T, N)
        k = rotate(x_sparse, cos, sin)  # q~ = k~: BDH's keys are its queries
        a, new_state = self.attend(k, x, state, plan, doc_start)
        y_sparse = torch.bmm(layer_norm(a).flatten(1, 2), encoder_v).relu_().unflatten(1, (B, T))
        # the hooks' view (SparseProduct) is lanes-first, (B, H, T, N); the memory stays heads-first
        xy_sparse = self.drop(self.product(x_sparse.transpose(0, 1), y_sparse.transpose(0, 1)))
        y = torch.bmm(xy_sparse.transpose(0, 1).flatten(1, 2), decoder.view(H, N, D))
        y = y.sum(0).view(B, T, D)  # the heads' decoders add up
        return layer_norm(x + layer_norm(y)), new_state


class BDH(Pretrained, nn.Module):
    arch = "bdh"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        nh, D, N = config.n_head, config.n_embd, config.n_neurons
        self.embed = nn.Embedding(config.vocab_size, D)
        nn.init.normal_(self.embed.weight, std=0.02)
        if not config.per_layer_params:
            for name, p in projection_params(nh, D, N).items():
                self.register_parameter(name, p)
        self.layers = nn.ModuleList(BDHLayer(config, i) for i in range(config.n_layer))
        self.token_shift = token_shifts(config.token_shift, config.n_embd, config.token_shift_kernel, config.n_layer)
        self.lm_head = nn.Parameter(torch.randn(D, config.vocab_size) * 0.02)
        self.rope = RopeCache(N, config.rope_theta)
        self.gradient_checkpointing = False
        self.compiled_body = None  # compile() sets it
        self.fla_lengths: set[int] = set()  # attn_backend auto: window lengths measured faster with fla (fla_tune)

    # -- parameters -------------------------------------------------------------------------
    def projections(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owner = self.layers[i] if self.config.per_layer_params else self
        return owner.encoder, owner.encoder_v, owner.decoder

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- state ------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> BDHState:
        """The empty state of a stream: rho = 0 (or empty windows) in every layer, position 0."""
        c = self.config
        device = device or self.lm_head.device
        layers = [
            AttnState.zeros(batch_size, c.n_head, 1, c.n_neurons, c.n_embd, c.attn_window, device, dtype)
            for _ in range(c.n_layer)
        ]
        shift = [torch.zeros(batch_size, c.token_shift_kernel - 1, c.n_embd, device=device, dtype=dtype)
                 for _ in self.token_shift]
        return BDHState(layers, 0, shift)

    def plan(self, T: int, stateful: bool, need_state: bool, in_place: bool = False) -> AttnPlan:
        """Which attention form computes this call."""
        return attention_plan(self.config, T, stateful, need_state, in_place, self.fla_lengths)

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: BDHState | None = None,
        return_state: bool | None = None,
        update_state_in_place: bool = False,
        doc_start: torch.Tensor | None = None,
    ) -> ModelOutput:
        """idx: (B, T) token ids. With `state`, continue that stream; `.state` is the state after
        the last token when `return_state` (default: when a state was given).

        doc_start: (B, T) bool or None, the tokens that begin a document: the state is reset
        right before them, in every layer, so no token reads anything of an earlier document
        (docs/design.md, "Document boundaries").

        `update_state_in_place` (under torch.no_grad, for loops that own their state such as
        generate): the returned state reuses the given state's rho, written in place, instead of
        a new (N, D) tensor per head, lane and layer for every call."""
        B, T = idx.shape
        doc_start = active_boundaries(doc_start)
        need_state = state is not None if return_state is None else return_state
        pos = state.pos if state is not None else 0
        prev_shift, new_shift = (state.shift if state is not None else []), []
        mode = self.config.token_shift
        x = self.embed(idx)
        x = shifted(self.token_shift[0], x, prev_shift, 0, doc_start, new_shift) if mode == "embed" else layer_norm(x)
        cos, sin = self.rope.get(pos, T, x.device, x.dtype)
        plan = self.plan(T, state is not None, need_state, update_state_in_place and state is not None)
        body = self.compiled_body or self.body
        logits, loss, new_layers, new_shift = body(x, targets, None if state is None else state.layers, cos, sin, plan,
                                                   doc_start, prev_shift, new_shift)
        new_state = BDHState(new_layers, pos + T, new_shift) if need_state else None
        return ModelOutput(logits=logits, loss=loss, state=new_state)

    def body(self, x, targets, layer_states, cos, sin, plan: AttnPlan, doc_start, prev_shift: list, new_shift: list):
        """The tensor work of forward: the layers, the logits and the loss; what `compile` compiles.

        Everything that depends on Python values that change from call to call (the stream
        position, the RoPE table cache, whether a window holds a boundary, which attention form a
        length takes) is decided in forward before it, so a compiled body sees tensors and a
        fixed plan only: one graph per window length and mode, none per step.
        new_shift holds the embedding shift's tail, if any; the layers' tails join a copy of it."""
        new_layers, new_shift = [], list(new_shift)
        for i, layer in enumerate(self.layers):
            if self.config.token_shift == "layer":
                x = shifted(self.token_shift[i], x, prev_shift, i, doc_start, new_shift)
            layer_state = layer_states[i] if layer_states is not None else None
            args = (x, *self.projections(i), cos, sin, layer_state, plan, doc_start)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, s = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, s = layer(*args)
            new_layers.append(s)
        logits = x @ self.lm_head
        loss = None if targets is None else lm_loss(logits, targets)
        return logits, loss, new_layers, new_shift

    def compile(self, *args, **kwargs):
        """torch.compile the body (`BDH.body`) in place, with torch.compile's arguments: parameter
        names, state_dict and checkpoints stay those of the eager model. Shapes are static
        (dynamic=False unless given): a window length compiles once, and the next length is a
        graph of its own rather than a symbolic one that every chunk count would respecialize."""
        self.compiled_body = torch.compile(self.body, *args, **{"dynamic": False, **kwargs})

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 state: BDHState | None = None, generator: torch.Generator | None = None,
                 max_context: int | None = None, doc_separator: list[int] | None = None):
        """Sample max_new_tokens after idx (B, T): idx followed by them, (B, T + max_new_tokens).
        The prompt is read once; every new token then costs the same whatever the context length,
        because the context lives in the state (stream() yields the tokens one by one).

        max_context, for a model trained on independent windows of that length (train.state
        reset), which has never seen a state built from more tokens: the state then never holds
        more than max_context tokens. When full it is rebuilt from the last max_context // 2
        tokens, so every token is predicted from between max_context // 2 and max_context earlier
        ones, as in training; a rebuild reads max_context // 2 tokens once per max_context // 2
        new ones, so a token still costs the same whatever the length of the text.

        doc_separator (token ids), for a model trained with document resets (data.doc_reset):
        a token that follows a complete separator begins a document, and the state is reset
        before it is read, in the prompt as in what is generated.
        """
        new = self.stream(idx, max_new_tokens, temperature, top_k, state, generator, max_context, doc_separator)
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def stream(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               state: BDHState | None = None, generator: torch.Generator | None = None,
               max_context: int | None = None, doc_separator: list[int] | None = None):
        """generate(), one sampled token (B, 1) at a time, each yielded as soon as it is drawn."""
        if max_context is not None and (max_context < 2 or state is not None):
            raise ValueError("max_context must be >= 2 and rebuilds the state from the text itself, "
                             "so it cannot continue a given state")
        sep = list(doc_separator or [])
        prompt = idx if max_context is None else idx[:, -max_context:]
        out = self(prompt, state=state, return_state=True, doc_start=starts_after(idx, sep)[:, -prompt.size(1):])
        state, logits, held = out.state, out.logits[:, -1], prompt.size(1)
        tokens, tail = [idx], idx[:, -len(sep):] if sep else None
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)
            begins = None
            if sep:  # does nxt follow a complete separator?
                begins = (tail == tail.new_tensor(sep)).all(dim=1, keepdim=True) if tail.size(1) == len(sep) else None
                tail = torch.cat([tail, nxt], dim=1)[:, -len(sep):]
            tokens.append(nxt)
            yield nxt
            if i + 1 == max_new_tokens:  # the last token's own successor is never asked for
                break
            fresh = begins is not None and bool(begins.all())  # every lane starts a document: state empty
            if max_context is not None and held >= max_context and not fresh:
                held = max_context // 2
                text = torch.cat(tokens, dim=1)
                out = self(text[:, -held:], return_state=True, doc_start=starts_after(text, sep)[:, -held:])
            else:
                # The state is this loop's own (the prompt's forward made it), so it is
                # stepped in place: the caller's state is never written.
                out = self(nxt, state=state, return_state=True, update_state_in_place=True, doc_start=begins)
                held = 1 if fresh else held + 1
            state, logits = out.state, out.logits[:, -1]

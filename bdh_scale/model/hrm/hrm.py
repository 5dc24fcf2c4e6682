"""BDH-HRM: the Hierarchical Reasoning Model (Wang et al., 2025) built from BDH layers.

Two recurrent modules, each a small stack of `BDHLayer`s called exactly as `BDH.forward` calls
them: a fast low-level module L and a slow high-level module H. One *segment* over a window:

    z_L = z_H = x_emb = LN(embed(idx))
    for h in range(hrm_h_cycles):
        for l in range(hrm_l_cycles):
            z_L = L(LN(z_L + z_H + x_emb))      # input injection
        z_H = H(LN(z_H + z_L))
    logits = z_H @ lm_head

The sums are layer-normed before entering a stack because a BDH layer expects a unit-scale
input: it is both the value of its attention and the residual that LN(x + LN(y)) balances
against the sparse update, so an unnormalised sum of three states would drown the update.

One-step gradient (HRM's "no-grad trick", `hrm_one_step_grad`): every iteration except the last
L step and the last H step runs under torch.no_grad(), so the graph (memory and backward time)
is that of one L pass and one H pass whatever the number of cycles. This is HRM's approximation
of the fixed-point (implicit) gradient; `hrm_one_step_grad=false` backpropagates through all.

Adaptive computation time (`hrm_act`): up to `hrm_act_max_segments` segments are run, z_L and
z_H carried into the next one detached (HRM's deep supervision). After segment n a per-token
halting head gives lambda_n = sigmoid(z_H . halt_w + halt_b). Halting is per token, not per
window, because a window-pooled decision would let the step count (and so the logits) at
position t depend on later tokens, including t's own target. Training uses the PonderNet
expectation instead of HRM's Q-learning (which needs one optimizer step per segment, while
the trainer takes one backward per window):

    p_n  = lambda_n * prod_{j<n} (1 - lambda_j)        (the last segment takes the rest)
    loss = mean_t sum_n p_n CE_n + ponder_cost * mean_t sum_n n p_n

The second term is `ModelOutput.aux_loss` and is already inside `.loss`. Inference (eval mode)
and the returned logits use the hard rule: token t takes the logits of the first segment with
lambda > 0.5 (or of the last), and the window stops once every token has halted; eval loss is
the plain cross-entropy of those logits, so val_loss stays comparable with other models.

The hybrid has no state across windows: train it with train.state=reset.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bdh_scale.model.bdh.bdh import BDH, BDHLayer, active_boundaries, layer_norm, projection_params, shifted
from bdh_scale.model.bdh.rope import RopeCache
from bdh_scale.model.bdh.token_shift import token_shifts
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.output import ModelOutput, lm_loss, scored_mean, token_ce
from bdh_scale.model.pretrained import Pretrained
from bdh_scale.model.sampling import RerunGeneration

STATELESS = ('the bdh_hrm hybrid is stateless and cannot carry state across chunks; '
             'set train.state to "reset"')
HALT_INIT_BIAS = -2.0  # lambda ~ 0.12 at the start: early training spreads its loss over all segments
ACT_MIN_MASS = 1e-3  # training stops adding segments once every token's unhalted mass is below this


class BDHStack(nn.Module):
    """H or L: BDH layers applied in sequence without state, the way BDH.forward applies them."""

    def __init__(self, config: ModelConfig, n_layers: int):
        super().__init__()
        self.config = config
        if not config.per_layer_params:  # shared within the stack, as BDH shares them across layers
            for name, p in projection_params(config.n_head, config.n_embd, config.n_neurons).items():
                self.register_parameter(name, p)
        self.layers = nn.ModuleList(BDHLayer(config, i) for i in range(n_layers))
        mode = "layer" if config.token_shift == "layer" else "none"  # `embed` belongs to the hybrid's input
        self.token_shift = token_shifts(mode, config.n_embd, config.token_shift_kernel, n_layers)

    projections = BDH.projections  # (encoder, encoder_v, decoder) of layer i: own or shared

    def forward(self, x, cos, sin, plan, checkpointing: bool = False, doc_start=None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if self.token_shift:  # model.token_shift: layer, within the window (the hybrid carries no state)
                x = shifted(self.token_shift[i], x, [], i, doc_start, [])
            args = (x, *self.projections(i), cos, sin, None, plan, doc_start)
            if checkpointing and torch.is_grad_enabled():
                x, _ = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, _ = layer(*args)
        return x


class BDHHRM(RerunGeneration, Pretrained, nn.Module):
    """The BDH-HRM hybrid (model.arch: bdh_hrm); same interface as BDH minus the state."""

    arch = "bdh_hrm"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        D = config.n_embd
        self.embed = nn.Embedding(config.vocab_size, D)
        nn.init.normal_(self.embed.weight, std=0.02)
        mode = "embed" if config.token_shift == "embed" else "none"  # `layer` belongs to the stacks
        self.token_shift = token_shifts(mode, config.n_embd, config.token_shift_kernel, 1)
        self.L = BDHStack(config, config.hrm_l_layers)
        self.H = BDHStack(config, config.hrm_h_layers)
        self.lm_head = nn.Parameter(torch.randn(D, config.vocab_size) * 0.02)
        if config.hrm_act:
            # 1-D parameters: AdamW without decay, never Muon (a 1 x D "matrix" is not a map).
            self.halt_w = nn.Parameter(torch.zeros(D))
            self.halt_b = nn.Parameter(torch.full((1,), HALT_INIT_BIAS))
        self.rope = RopeCache(config.n_neurons, config.rope_theta)
        self.gradient_checkpointing = False
        self.fla_lengths: set[int] = set()  # as BDH's (attn_backend auto, fla_tune)

    plan = BDH.plan  # the attention form for a window: same rule as BDH (no state here)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, *args, **kwargs):
        raise ValueError(STATELESS)

    # -- one segment ---------------------------------------------------------------------------
    def segment(self, z_L, z_H, x_emb, cos, sin, plan, doc_start=None) -> tuple[torch.Tensor, torch.Tensor]:
        """h_cycles x l_cycles updates of (z_L, z_H); with the one-step gradient only the last
        L step and the last H step are recorded by autograd."""
        c = self.config
        one_step = c.hrm_one_step_grad
        ckpt = self.gradient_checkpointing and self.training

        def L_step(z_L, z_H):
            return self.L(layer_norm(z_L + z_H + x_emb), cos, sin, plan, ckpt, doc_start)

        def H_step(z_H, z_L):
            return self.H(layer_norm(z_H + z_L), cos, sin, plan, ckpt, doc_start)

        with torch.no_grad() if one_step else nullcontext():
            for h in range(c.hrm_h_cycles):
                last_h = h == c.hrm_h_cycles - 1
                for _ in range(c.hrm_l_cycles - (1 if one_step and last_h else 0)):
                    z_L = L_step(z_L, z_H)
                if not (one_step and last_h):
                    z_H = H_step(z_H, z_L)
        if one_step:
            z_L = L_step(z_L, z_H)
            z_H = H_step(z_H, z_L)
        return z_L, z_H

    # -- forward -------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None,
                return_state: bool | None = None, doc_start: torch.Tensor | None = None) -> ModelOutput:
        """idx: (B, T) token ids. Same signature as BDH.forward; a state is an error. doc_start
        (B, T) bool: a document begins there; no token attends across it."""
        return self.run(idx, targets, state, return_state, doc_start)[0]

    def run(self, idx, targets=None, state=None, return_state=None, doc_start=None) -> tuple[ModelOutput, torch.Tensor]:
        """forward() plus the segment at which each token halted, (B, T) long (all 1 without ACT)."""
        if state is not None or return_state:
            raise ValueError(STATELESS)
        B, T = idx.shape
        doc_start = active_boundaries(doc_start)
        x_emb = self.embed(idx)
        x_emb = shifted(self.token_shift[0], x_emb, [], 0, doc_start, []) if self.token_shift else layer_norm(x_emb)
        cos, sin = self.rope.get(0, T, x_emb.device, x_emb.dtype)
        plan = self.plan(T, False, False)
        if not self.config.hrm_act:
            _, z_H = self.segment(x_emb, x_emb, x_emb, cos, sin, plan, doc_start)
            logits = z_H @ self.lm_head
            loss = None if targets is None else lm_loss(logits, targets)
            return ModelOutput(logits=logits, loss=loss), torch.ones(B, T, dtype=torch.long, device=idx.device)
        return self._act(x_emb, targets, cos, sin, plan, doc_start)

    def halting_probability(self, z_H: torch.Tensor) -> torch.Tensor:
        """lambda: (B, T, D) -> (B, T) in float32, per token (causal)."""
        return torch.sigmoid((z_H @ self.halt_w.to(z_H.dtype) + self.halt_b.to(z_H.dtype)).float())

    def _act(self, x_emb, targets, cos, sin, plan, doc_start=None) -> tuple[ModelOutput, torch.Tensor]:
        M = self.config.hrm_act_max_segments
        B, T, _ = x_emb.shape
        z_L = z_H = x_emb
        halted = torch.zeros(B, T, dtype=torch.bool, device=x_emb.device)
        steps = torch.full((B, T), M, dtype=torch.long, device=x_emb.device)
        remaining = torch.ones(B, T, device=x_emb.device)  # unhalted probability mass (training)
        expected_ce, expected_steps, chosen = 0.0, 0.0, None
        for n in range(1, M + 1):
            if n > 1:  # deep supervision: each segment learns from its own loss only
                z_L, z_H = z_L.detach(), z_H.detach()
            z_L, z_H = self.segment(z_L, z_H, x_emb, cos, sin, plan, doc_start)
            logits = z_H @ self.lm_head
            lam = self.halting_probability(z_H)
            final = n == M
            if self.training:
                final = final or bool((remaining * (1 - lam)).max() < ACT_MIN_MASS)
                p = remaining if final else remaining * lam
                expected_steps = expected_steps + n * p
                if targets is not None:
                    expected_ce = expected_ce + p * token_ce(logits, targets)
                remaining = remaining * (1 - lam)
            stop = ~halted & ((lam > 0.5) | final)  # the inference rule, also for returned logits
            chosen = logits if chosen is None else torch.where(stop[..., None], logits, chosen)
            steps = torch.where(stop, torch.full_like(steps, n), steps)
            halted = halted | stop
            if final or (not self.training and bool(halted.all())):
                break
        loss = aux = None
        if targets is not None and self.training:
            aux = self.config.hrm_act_ponder_cost * expected_steps.mean()
            loss = scored_mean(expected_ce, targets) + aux
        elif targets is not None:
            loss = lm_loss(chosen, targets)
        return ModelOutput(logits=chosen, loss=loss, aux_loss=aux), steps

    @torch.no_grad()
    def halting_steps(self, idx: torch.Tensor) -> torch.Tensor:
        """Segments each token of idx (B, T) uses under the inference rule, (B, T) long."""
        was_training = self.training
        self.eval()
        try:
            return self.run(idx)[1]
        finally:
            self.train(was_training)

    # -- generation ----------------------------------------------------------------------------
    stateless = STATELESS

    def gen_context(self, max_context: int | None) -> int:
        """Generation predicts each token from the last hrm_gen_context tokens, or max_context if fewer."""
        return min(self.config.hrm_gen_context, max_context or self.config.hrm_gen_context)


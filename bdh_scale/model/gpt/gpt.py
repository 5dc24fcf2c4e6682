"""GPT-2-style Transformer baseline, for equal-parameter comparisons with BDH.

nanoGPT's architecture: learned position embeddings, pre-LayerNorm blocks of causal
softmax attention (`F.scaled_dot_product_attention`, flash kernels where available) and a
4x GELU MLP, final LayerNorm, output head tied to the token embedding (applied as
`F.linear(x, embed.weight)`, so the state_dict holds the matrix once and safetensors can
save it). Residual output
projections start at std 0.02 / sqrt(2 * n_layer) so the residual stream does not grow with
depth. `model.token_shift` gives it BDH's previous-token path (model/bdh/token_shift.py), once
on the embeddings or before every block, without a carried state: the short causal convolution
that Zoology's attention baseline opens with. It speaks the same interface as BDH
(`forward -> ModelOutput`, `generate`) so the trainer can run either; it has no recurrent state,
so it only trains with train.state "reset".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bdh_scale.model.bdh.token_shift import token_shifts
from bdh_scale.model.config import ModelConfig
from bdh_scale.model.output import ModelOutput, lm_loss
from bdh_scale.model.pretrained import Pretrained
from bdh_scale.model.sampling import RerunGeneration

STATELESS = ('the gpt baseline is stateless and cannot carry state across chunks; '
             'set train.state to "reset"')


@dataclass
class GPTConfig:
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int = 256
    dropout: float = 0.0
    block_size: int = 1024
    bias: bool = False
    token_shift: str = "none"  # none | embed | layer: the previous-token path, as on BDH
    token_shift_kernel: int = 2

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask: (B, 1, T, T) bool, True where a token may attend (causal within its document);
        None: plain causal."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class GPT(RerunGeneration, Pretrained, nn.Module):
    arch = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embed = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.token_shift = token_shifts(config.token_shift, config.n_embd, config.token_shift_kernel, config.n_layer)
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.gradient_checkpointing = False  # set by the trainer, as on BDH
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual-stream outputs
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """All parameters (the tied embedding/head is one matrix), position embeddings included."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None,
                return_state: bool | None = None, doc_start: torch.Tensor | None = None) -> ModelOutput:
        """idx: (B, T) token ids, T <= block_size. Same signature as BDH.forward so the loop
        can call either; a state (or return_state=True) is an error, as there is none.
        doc_start (B, T) bool: a document begins there; tokens attend within their document only
        and positions count from its start, as if each document were run alone."""
        if state is not None or return_state:
            raise ValueError(STATELESS)
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the gpt baseline's block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        mask = None
        if doc_start is not None and bool(doc_start.any()):
            seg = torch.cumsum(doc_start, dim=1)
            mask = (seg[:, :, None] == seg[:, None, :]) & (pos[:, None] >= pos[None, :])
            mask = mask[:, None]  # one mask for every head
            pos = pos - torch.where(doc_start, pos, 0).cummax(dim=1).values  # from the document's start
        x = self.drop(self.embed(idx) + self.pos_embed(pos))
        cut = doc_start if mask is not None else None  # the path mixes no token of an earlier document in
        for i, block in enumerate(self.blocks):
            if i < len(self.token_shift):  # `embed`: before the first block only; `layer`: before each
                x = self.token_shift[i](x, None, cut)[0]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        logits = F.linear(self.ln_f(x), self.embed.weight)  # head tied to the embedding
        loss = None if targets is None else lm_loss(logits, targets)
        return ModelOutput(logits=logits, loss=loss)

    stateless = STATELESS

    def gen_context(self, max_context: int | None) -> int:
        """Generation predicts each token from the last block_size tokens (where its position
        embeddings end), or max_context if fewer."""
        return min(self.config.block_size, max_context or self.config.block_size)

    # -- the recipe's model section (save_pretrained / from_pretrained) ------------------------
    @classmethod
    def from_config(cls, config: ModelConfig) -> "GPT":
        return cls(GPTConfig(n_layer=config.n_layer, n_embd=config.n_embd, n_head=config.n_head,
                             vocab_size=config.vocab_size, dropout=config.dropout, block_size=config.block_size,
                             token_shift=config.token_shift, token_shift_kernel=config.token_shift_kernel))

    def model_config(self) -> ModelConfig:
        """This model as the recipe's model section (arch gpt), which config.json holds; bias=True
        has no field there, so it is refused."""
        c = self.config
        if c.bias:
            raise ValueError("save_pretrained: bias=True cannot be described by the model config (no bias field)")
        return ModelConfig(arch="gpt", n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head,
                         vocab_size=c.vocab_size, dropout=c.dropout, block_size=c.block_size,
                         token_shift=c.token_shift, token_shift_kernel=c.token_shift_kernel)

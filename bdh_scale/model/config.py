"""The `model:` section of a recipe: the reference code's field names plus the options the seed
work found to matter. One section for every architecture of model/registry.py (the GPT baseline
reads n_layer / n_embd / n_head / vocab_size / dropout / block_size; BDH-HRM adds the hrm_* fields),
so a recipe switches architecture with one key. Also what config.json of a saved model holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from bdh_scale.utils.quote import short
from bdh_scale.utils.schema import Gt, NonNegFloat, NonNegInt, PosInt, Range, Section


@dataclass
class BDHConfig(Section):
    section = "model"

    arch: Literal["bdh", "gpt", "bdh_hrm"] = "bdh"  # bdh (this model) | gpt (the GPT-2-style baseline) | bdh_hrm (BDH-HRM hybrid)
    n_layer: PosInt = 6  # number of BDH layers
    n_embd: PosInt = 256  # D: width of the residual stream
    n_head: PosInt = 4  # heads; each head has its own N neurons
    mlp_internal_dim_multiplier: PosInt = 128  # N = multiplier * n_embd / n_head neurons per head
    vocab_size: PosInt = 256  # 256 for the byte tokenizer; follows the tokenizer otherwise
    dropout: Annotated[float, Range(0.0, 1.0)] = 0.1  # dropout on the sparse xy activations
    per_layer_params: bool = True  # each layer its own encoder / encoder_v / decoder (reference: shared)
    score_scale: Literal["none", "inv_sqrt_n"] = "inv_sqrt_n"  # none (reference) | inv_sqrt_n (c = 1/sqrt(N); needed for fp16)
    rope_theta: Annotated[float, Gt(1.0)] = 65536.0  # RoPE base of the reference (2**16)
    attn_backend: Literal["auto", "parallel", "chunked", "fla"] = "auto"  # auto | parallel (quadratic, the oracle) | chunked (linear in T) | fla (flash-linear-attention, CUDA)
    chunk_size: NonNegInt = 0  # chunk length C of the chunked backend; 0 picks one from T, N, D
    forget_mode: Literal["none", "scalar", "data"] = "none"  # none | scalar (learned per head) | data (per head and token)
    forget_timescales: list[float] | None = None  # [first, last]: heads' initial memory in tokens, geometric; null: all ~400
    attn_window: PosInt | None = None  # local window w: only the last w positions attend (None: all)
    diff_attn: bool = False  # differential attention: second map over half the neurons, subtracted
    token_shift: Literal["none", "embed", "layer"] = "none"  # previous-token path: none | embed (once, on the embeddings) | layer (before every layer)
    token_shift_kernel: Annotated[int, Range(2, 16)] = 2  # k: the current input plus its k-1 predecessors (2: a token shift)
    block_size: PosInt = 1024  # position-embedding length of the gpt baseline (unused by bdh)
    hrm_h_layers: PosInt = 2  # bdh_hrm: BDH layers of the high-level module H (n_layer is unused there)
    hrm_l_layers: PosInt = 2  # bdh_hrm: BDH layers of the low-level module L
    hrm_h_cycles: PosInt = 2  # bdh_hrm: H updates per segment
    hrm_l_cycles: PosInt = 2  # bdh_hrm: L updates per H update
    hrm_one_step_grad: bool = True  # bdh_hrm: backprop through the last L and H step only (HRM's 1-step gradient)
    hrm_act: bool = False  # bdh_hrm: adaptive computation time, a learned per-token halting head
    hrm_act_max_segments: PosInt = 4  # bdh_hrm ACT: most segments (full H/L passes) per window
    hrm_act_ponder_cost: NonNegFloat = 0.01  # bdh_hrm ACT: loss added per expected segment (nats per token)
    hrm_gen_context: PosInt = 1024  # bdh_hrm: generate() reruns the model on at most this many last tokens

    @property
    def n_neurons(self) -> int:
        """N, the neurons of one head."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head

    def check(self) -> None:
        ts = self.forget_timescales
        if ts is not None and (len(ts) != 2 or not all(isinstance(t, (int, float)) and t > 1 for t in ts)):
            self.bad("forget_timescales", f"{short(ts)} is not two memory lengths > 1 token; use e.g. [16, 4096] or null")
        if self.n_embd % self.n_head:
            self.bad("n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}; "
                               "pick n_embd a multiple of n_head")
        if (self.mlp_internal_dim_multiplier * self.n_embd) % self.n_head:
            self.bad("mlp_internal_dim_multiplier", "multiplier * n_embd must be divisible by n_head")
        if self.attn_backend == "fla" and self.attn_window is not None:
            self.bad("attn_backend", f"fla has no local window (attn_window={self.attn_window}): its kernel keeps a "
                                     "state, not the last w keys; use attn_backend=auto or chunked with a window")
        if self.arch == "gpt" and self.token_shift != "none":
            self.bad("token_shift", f"{self.token_shift} is BDH's previous-token path; the gpt baseline has its own "
                                    "(softmax attention learns it); set model.token_shift=none with arch=gpt")
        pair = 4 if self.diff_attn else 2
        if self.n_neurons % pair:
            self.bad("mlp_internal_dim_multiplier",
                     f"N={self.n_neurons} neurons per head must be divisible by {pair} "
                     "(RoPE rotates neuron pairs; differential attention splits them in halves)")

"""BDH model configuration: the reference field names plus the options found by the seed work."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BDHConfig:
    arch: str = "bdh"  # bdh (this model) | gpt (the GPT-2-style baseline) | bdh_hrm (BDH-HRM hybrid)
    n_layer: int = 6  # number of BDH layers
    n_embd: int = 256  # D: width of the residual stream
    n_head: int = 4  # heads; each head has its own N neurons
    mlp_internal_dim_multiplier: int = 128  # N = multiplier * n_embd / n_head neurons per head
    vocab_size: int = 256  # 256 for the byte tokenizer; follows the tokenizer otherwise
    dropout: float = 0.1  # dropout on the sparse xy activations
    per_layer_params: bool = True  # each layer its own encoder / encoder_v / decoder (reference: shared)
    score_scale: str = "inv_sqrt_n"  # none (reference) | inv_sqrt_n (c = 1/sqrt(N); needed for fp16)
    rope_theta: float = 65536.0  # RoPE base of the reference (2**16)
    attn_backend: str = "auto"  # auto | parallel (quadratic, the oracle) | chunked (linear in T)
    chunk_size: int = 0  # chunk length C of the chunked backend; 0 picks one from T, N, D
    forget_mode: str = "none"  # none | scalar (learned per head) | data (per head and token)
    attn_window: int | None = None  # local window w: only the last w positions attend (None: all)
    diff_attn: bool = False  # differential attention: second map over half the neurons, subtracted
    block_size: int = 1024  # position-embedding length of the gpt baseline (unused by bdh)
    hrm_h_layers: int = 2  # bdh_hrm: BDH layers of the high-level module H (n_layer is unused there)
    hrm_l_layers: int = 2  # bdh_hrm: BDH layers of the low-level module L
    hrm_h_cycles: int = 2  # bdh_hrm: H updates per segment
    hrm_l_cycles: int = 2  # bdh_hrm: L updates per H update
    hrm_one_step_grad: bool = True  # bdh_hrm: backprop through the last L and H step only (HRM's 1-step gradient)
    hrm_act: bool = False  # bdh_hrm: adaptive computation time, a learned per-token halting head
    hrm_act_max_segments: int = 4  # bdh_hrm ACT: most segments (full H/L passes) per window
    hrm_act_ponder_cost: float = 0.01  # bdh_hrm ACT: loss added per expected segment (nats per token)
    hrm_gen_context: int = 1024  # bdh_hrm: generate() reruns the model on at most this many last tokens

    @property
    def n_neurons(self) -> int:
        """N, the neurons of one head."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head

    def validate(self) -> None:
        """Raise ValueError naming the field, what is wrong and what is allowed."""

        def bad(field: str, msg: str) -> None:
            raise ValueError(f"model.{field}: {msg}")

        if self.arch not in ("bdh", "gpt", "bdh_hrm"):
            bad("arch", f"'{self.arch}' is not an architecture; use bdh, gpt or bdh_hrm")
        for name in ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier", "vocab_size"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            bad("n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}; pick n_embd a multiple of n_head")
        if (self.mlp_internal_dim_multiplier * self.n_embd) % self.n_head:
            bad("mlp_internal_dim_multiplier", "multiplier * n_embd must be divisible by n_head")
        pair = 4 if self.diff_attn else 2
        if self.n_neurons % pair:
            bad("mlp_internal_dim_multiplier", f"N={self.n_neurons} neurons per head must be divisible by {pair} "
                "(RoPE rotates neuron pairs; differential attention splits them in halves)")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.score_scale not in ("none", "inv_sqrt_n"):
            bad("score_scale", f"'{self.score_scale}' is unknown; use none or inv_sqrt_n")
        if self.attn_backend not in ("auto", "parallel", "chunked"):
            bad("attn_backend", f"'{self.attn_backend}' is unknown; use auto, parallel or chunked")
        if self.chunk_size < 0:
            bad("chunk_size", f"must be >= 0 (0 = automatic), got {self.chunk_size}")
        if self.forget_mode not in ("none", "scalar", "data"):
            bad("forget_mode", f"'{self.forget_mode}' is unknown; use none, scalar or data")
        if self.attn_window is not None and self.attn_window < 1:
            bad("attn_window", f"must be >= 1 or null, got {self.attn_window}")
        if self.rope_theta <= 1.0:
            bad("rope_theta", f"must be > 1, got {self.rope_theta}")
        if self.block_size < 1:
            bad("block_size", f"must be >= 1, got {self.block_size}")
        for name in ("hrm_h_layers", "hrm_l_layers", "hrm_h_cycles", "hrm_l_cycles", "hrm_act_max_segments",
                     "hrm_gen_context"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.hrm_act_ponder_cost >= 0.0:
            bad("hrm_act_ponder_cost", f"must be >= 0, got {self.hrm_act_ponder_cost}")

"""BDH's own fields of the recipe's `model:` section (model/config.py gathers them with the other
architectures'): the reference code's N, and the options the seed work found to matter. BDH-HRM
builds its modules from BDH layers and reads these too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from bdh_scale.utils.quote import short
from bdh_scale.utils.schema import Gt, NonNegInt, PosInt


@dataclass
class BDHFields:
    mlp_internal_dim_multiplier: PosInt = 128  # N = multiplier * n_embd / n_head neurons per head
    per_layer_params: bool = True  # each layer its own encoder / encoder_v / decoder (reference: shared)
    score_scale: Literal["none", "inv_sqrt_n"] = "inv_sqrt_n"  # none (reference) | inv_sqrt_n (c = 1/sqrt(N); needed for fp16)
    rope_theta: Annotated[float, Gt(1.0)] = 65536.0  # RoPE base of the reference (2**16)
    attn_backend: Literal["auto", "parallel", "chunked", "fla"] = "auto"  # auto | parallel (quadratic, the oracle) | chunked (linear in T) | fla (flash-linear-attention, CUDA)
    chunk_size: NonNegInt = 0  # chunk length C of the chunked backend; 0 picks one from T, N, D
    forget_mode: Literal["none", "scalar", "data"] = "none"  # none | scalar (learned per head) | data (per head and token)
    forget_timescales: list[float] | None = None  # [first, last]: heads' initial memory in tokens, geometric; null: all ~400
    attn_window: PosInt | None = None  # local window w: only the last w positions attend (None: all)
    diff_attn: bool = False  # differential attention: second map over half the neurons, subtracted

    @property
    def n_neurons(self) -> int:
        """N, the neurons of one head."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head

    def check_bdh(self) -> None:
        ts = self.forget_timescales
        if ts is not None and (len(ts) != 2 or not all(isinstance(t, (int, float)) and t > 1 for t in ts)):
            self.bad("forget_timescales", f"{short(ts)} is not two memory lengths > 1 token; use e.g. [16, 4096] or null")
        if (self.mlp_internal_dim_multiplier * self.n_embd) % self.n_head:
            self.bad("mlp_internal_dim_multiplier", "multiplier * n_embd must be divisible by n_head")
        if self.attn_backend == "fla" and self.attn_window is not None:
            self.bad("attn_backend", f"fla has no local window (attn_window={self.attn_window}): its kernel keeps a "
                                     "state, not the last w keys; use attn_backend=auto or chunked with a window")
        pair = 4 if self.diff_attn else 2
        if self.n_neurons % pair:
            self.bad("mlp_internal_dim_multiplier",
                     f"N={self.n_neurons} neurons per head must be divisible by {pair} "
                     "(RoPE rotates neuron pairs; differential attention splits them in halves)")

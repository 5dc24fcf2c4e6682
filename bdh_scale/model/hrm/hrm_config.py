"""BDH-HRM's own fields of the recipe's `model:` section (model/config.py gathers them): the sizes
and cycles of its high-level (H) and low-level (L) modules of BDH layers, and adaptive computation."""
from __future__ import annotations

from dataclasses import dataclass

from bdh_scale.utils.schema import NonNegFloat, PosInt


@dataclass
class HRMFields:
    hrm_h_layers: PosInt = 2  # bdh_hrm: BDH layers of the high-level module H (n_layer is unused there)
    hrm_l_layers: PosInt = 2  # bdh_hrm: BDH layers of the low-level module L
    hrm_h_cycles: PosInt = 2  # bdh_hrm: H updates per segment
    hrm_l_cycles: PosInt = 2  # bdh_hrm: L updates per H update
    hrm_one_step_grad: bool = True  # bdh_hrm: backprop through the last L and H step only (HRM's 1-step gradient)
    hrm_act: bool = False  # bdh_hrm: adaptive computation time, a learned per-token halting head
    hrm_act_max_segments: PosInt = 4  # bdh_hrm ACT: most segments (full H/L passes) per window
    hrm_act_ponder_cost: NonNegFloat = 0.01  # bdh_hrm ACT: loss added per expected segment (nats per token)
    hrm_gen_context: PosInt = 1024  # bdh_hrm: generate() reruns the model on at most this many last tokens

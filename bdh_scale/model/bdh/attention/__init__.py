"""BDH attention, one operation in one package: linear (softmax-free) attention whose queries are
its keys, with an optional forgetting gate, local window or differential second map, and the
synaptic state rho it carries between calls.

    parallel.py          the quadratic form (the reference code's; the test oracle)
    causal_self.py       the reference model's hot path (q = k, no gate, no window), symmetric backward
    chunked.py           the chunked recurrent form, linear in T: attend_chunked
    blocks.py            the chunk loop's pieces (decay weights, rho update, forward sweep)
    chunked_backward.py  its autograd Function (recomputes chunk-start states)
    window.py            the chunked form of local attention (the state is the last w keys)
    backend.py           which form computes a call (attn_backend: auto)
    fla.py               the same attention on flash-linear-attention's Triton kernel (attn_backend: fla)
    fla_reference.py     fla's kernel contract in plain PyTorch: its stand-in on CPUs and in the tests
    fla_tune.py          auto on CUDA: fla for the window lengths where it measures faster
    state.py             AttnState (one layer) and BDHState (the model)
    gates.py             the forgetting gates (forget_mode: none | scalar | data)

The maths of both forms is in docs/design.md.
"""
from bdh_scale.model.bdh.attention.backend import pick_backend
from bdh_scale.model.bdh.attention.causal_self import causal_self_attention
from bdh_scale.model.bdh.attention.chunked import attend_chunked
from bdh_scale.model.bdh.attention.gates import ForgetGate
from bdh_scale.model.bdh.attention.parallel import attend_parallel, decay_mask
from bdh_scale.model.bdh.attention.state import AttnState, BDHState

__all__ = ["AttnState", "BDHState", "ForgetGate", "attend_chunked", "attend_parallel", "causal_self_attention",
           "decay_mask", "pick_backend"]

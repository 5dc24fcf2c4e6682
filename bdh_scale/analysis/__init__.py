"""Looking inside a trained BDH: sparsity, synaptic state, neuron selectivity, head ablation.

    bdh-analyze context     runs/<name>    held-out loss by tokens of context: carried state vs windows
    bdh-analyze recall      runs/<name>    passkey or MQAR recall against distance: carried state vs windows
    bdh-analyze sparsity    runs/<name>    fraction of active neurons per layer and head
    bdh-analyze state       runs/<name>    norm of rho per layer/head over a long carried stream
    bdh-analyze selectivity runs/<name>    neurons whose activity separates labelled texts (en / fr)
    bdh-analyze heads       runs/<name>    val loss change when each head is zeroed; prunable heads

Each writes <name>.json and <name>.png into <run>/analysis/ (or --out). Module map:
inputs.py (run, tokens, windows), model/bdh/probes.py (hooks on BDHLayer: sparse codes, head masks),
one module per analysis, in_window.py (the one reading of a model without a state, e.g. the GPT
baseline: context and recall score it inside its window, out of reach past it), figures.py (Agg
canvas, no display), cli.py (`bdh-analyze`).
"""
from bdh_scale.analysis.heads import head_ablation
from bdh_scale.analysis.selectivity import neuron_selectivity
from bdh_scale.analysis.sparsity import activation_sparsity
from bdh_scale.analysis.state import rho_norms
from bdh_scale.model.bdh.probes import ablate_heads, bdh_layers, capture_codes

__all__ = ["ablate_heads", "bdh_layers", "capture_codes", "activation_sparsity", "rho_norms",
           "neuron_selectivity", "head_ablation"]

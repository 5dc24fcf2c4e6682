"""BDH, the subject: a model of sparse positive neurons with Hebbian linear attention.

    bdh.py          the model and its layer (names from the paper: encoder, encoder_v, decoder, x_sparse, y_sparse)
    bdh_config.py   its fields of the recipe's model section
    attention/      the linear attention and the synaptic state rho it carries (parallel, chunked, window, fla)
    rope.py         rotary phases over neuron pairs
    token_shift.py  the previous-token path
    probes.py       hooks that read the sparse codes or silence a head (bdh-analyze)
    pathway.py      weights of the public reference code (pathwaycom/bdh)
    plain.py        the plain formulation, the benchmarks' baseline
"""

"""bdh-eval: scores comparable with other models through EleutherAI's lm-evaluation-harness
(an optional extra: pip install 'bdh-scale[eval]').

    scoring.py   log-likelihoods of token sequences, in windows, through BDH's carried state
    lm.py        the harness's LM interface over a bdh-scale model (needs lm_eval)
    cli.py       bdh-eval MODEL --tasks ...
"""

"""The same models for transformers (docs/design.md, "Transformers"): what a model directory ships
so that AutoConfig, AutoModelForCausalLM and AutoTokenizer load it with trust_remote_code.

    configuration_bdh.py   the recipe's model section as a PretrainedConfig          (shipped)
    modeling_bdh.py        BDHScaleForCausalLM: forward, padding, generation         (shipped)
    cache.py               the carried state as generate's cache                      (shipped)
    codegen.py             the shipped code, generated from the package's own modules
    export.py              the files a model directory gets: code, config keys, tokenizer and generation files

Importing this package imports neither transformers nor the shipped modules.
"""

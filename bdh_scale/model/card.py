"""The model card: README.md of a model directory (pretrained.py) and of its Hub repo.

What the model is (architecture, parameters, tokenizer), how it was trained (data, steps, tokens,
final validation loss, the recipe) when that is known, and how to load, sample and evaluate it.
The YAML header is huggingface_hub's ModelCardData, so the Hub files the model under
library_name bdh-scale and text-generation.
"""
from __future__ import annotations

import yaml
from huggingface_hub import ModelCard, ModelCardData

PAPER = "https://arxiv.org/abs/2509.26507"


def architecture(config) -> str:
    """One line: the architecture and its shape, in the recipe's words."""
    c = config
    if c.arch == "gpt":
        return (f"GPT-2-style baseline (`model.arch: gpt`): {c.n_layer} layers, D = {c.n_embd}, {c.n_head} heads, "
                f"block size {c.block_size}")
    shape = f"D = {c.n_embd}, {c.n_head} heads, N = {c.n_neurons} neurons per head"
    if c.arch == "bdh_hrm":
        return (f"BDH-HRM hybrid (`model.arch: bdh_hrm`): H module of {c.hrm_h_layers} and L module of "
                f"{c.hrm_l_layers} BDH layers, {c.hrm_h_cycles} x {c.hrm_l_cycles} cycles, {shape}"
                + (f", adaptive computation up to {c.hrm_act_max_segments} segments" if c.hrm_act else ""))
    return f"BDH (`model.arch: bdh`): {c.n_layer} layers, {shape}"


def options(config) -> str:
    c = config
    if c.arch == "gpt":
        return f"dropout {c.dropout}"
    return ", ".join([
        "own encoder / encoder_v / decoder per layer" if c.per_layer_params else "encoder / encoder_v / decoder shared by all layers",
        "scores scaled by 1/sqrt(N)" if c.score_scale == "inv_sqrt_n" else "unscaled scores (reference)",
        f"forgetting gate: {c.forget_mode}",
        f"attention window: {c.attn_window or 'none'}",
        "differential attention" if c.diff_attn else "no differential attention",
        f"RoPE theta {c.rope_theta:g}",
    ])


def row(name: str, value) -> str:
    return f"| {name} | {value} |"


def training_rows(recipe: dict | None, training: dict | None) -> list[str]:
    rows = []
    if recipe:
        data, train = recipe.get("data", {}), recipe.get("train", {})
        if train.get("init_from"):  # the weights this training started from (train/init_from.py)
            rows.append(row("initial weights", f"`{train['init_from']}` (train.init_from)"))
        mixed = [f"`{e.get('source')}` ({e.get('weight')})" for e in data.get("sources") or [] if isinstance(e, dict)]
        rows.append(row("data", ", ".join(mixed) if mixed else f"`{data.get('source')}`"))
        state = train.get("state")
        how = "state carried across windows (TBPTT)" if state == "carry" else "independent windows (state reset)"
        rows.append(row("window", f"T = {train.get('seq_len')} tokens, {how}"))
        rows.append(row("batch", f"{train.get('batch_size')} lanes x {train.get('grad_accum_steps')} micro-batches "
                                 "per process"))
    if training:
        rows.append(row("steps", f"{training['steps']:,}"))
        rows.append(row("tokens", f"{training['tokens']:,}"))
        if training.get("val_loss") is not None:
            loss = f"{training['val_loss']:.4f} nats/token, {training['val_bpb']:.4f} bits/byte"
            rows.append(row("final validation loss", loss + measured_on(recipe, training)))
    return rows


def measured_on(recipe: dict | None, training: dict) -> str:
    """Where the final validation loss comes from: how many held-out tokens, read how, at which
    step, and the file that holds every validation of the run."""
    if training.get("val_tokens") is None:
        return ""
    train = (recipe or {}).get("train", {})
    reading = "carried from window to window" if train.get("state") == "carry" else "as independent windows"
    return (f": the mean over {training['val_tokens']:,} held-out tokens, read in windows of "
            f"T = {training['val_T']} {reading}, after step {training['steps']:,} (every validation of the run "
            "is a row of its metrics.jsonl)")


def training_window(recipe: dict | None) -> int | None:
    """The window T the model last trained on (the recipe's train.seq_len, or its curriculum's last)."""
    train = (recipe or {}).get("train") or {}
    schedule = train.get("seq_len_schedule") or [[0, train.get("seq_len")]]
    return schedule[-1][1]


def transformers_usage(config, recipe: dict | None, tokenizer, where: str) -> list[str]:
    """How to load, sample and evaluate the model with transformers alone (model/hf/)."""
    stateful = config.arch == "bdh"
    window = training_window(recipe)
    newline = tokenizer.encode("\n")[-1] if tokenizer is not None else "ID_OF_NEWLINE"
    reset = recipe and recipe.get("train", {}).get("state") != "carry"
    lines = [
        "With transformers (5.10.1 or later; the modeling code is in this repository, generated from bdh-scale, "
        "and needs nothing but torch):", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{where}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{where}", trust_remote_code=True)',
        'inputs = tokenizer("Hello", return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=200, do_sample=True, temperature=0.8, top_k=40)",
        "print(tokenizer.decode(out[0]))",
        "```", "",
        "The model has no end-of-text token: generation runs to `max_new_tokens`. Pad on the left (the "
        "tokenizer's default); `<|pad|>` is the pad token.",
    ]
    if stateful:
        lines[-1] += (" `generate` carries the synaptic state as its cache: every new token costs the same "
                      "whatever the length of the context.")
        if reset:
            lines[-1] += (f" This model was trained on independent windows of {window} tokens; `generate` reads "
                          "the whole text through the state, while `bdh-generate` keeps to one window by default.")
    lines += ["", "```bash",
              f"lm_eval --model hf --model_args pretrained={where},trust_remote_code=True,max_length={window or 'T'},"
              f"prefix_token_id={newline} --tasks wikitext",
              "```", "",
              "lm-evaluation-harness reads long texts in windows of `max_length` tokens (the training window here). "
              + ("To score through the carried state, with memory that does not grow with the text, use `bdh-eval`."
                 if stateful else "")]
    return lines


def model_card(model, training: dict | None = None, where: str = "PATH_OR_HUB_ID") -> ModelCard:
    """The card of `model` (a Pretrained model, with its tokenizer and recipe when it has them).
    `training`: steps, tokens, val_loss, val_bpb and run_name of the run that made it; `where`: the
    directory or Hub id the usage lines load from."""
    config, recipe, tokenizer = model.model_config(), model.recipe, model.tokenizer
    data = ModelCardData(**type(model)._hub_mixin_info.model_card_data.to_dict())
    title = (training or {}).get("run_name") or f"{config.arch} model"
    lines = [
        f"# {title}", "",
        f"A {architecture(config).split(' (')[0]} language model trained with bdh-scale. BDH (\"Baby Dragon "
        f"Hatchling\", Kosowski et al., [arXiv 2509.26507]({PAPER})) is a language model of sparse positive neurons "
        "with Hebbian linear attention.", "",
        "## Model", "", "| | |", "|---|---|",
        row("architecture", architecture(config)),
        row("options", options(config)),
        row("parameters", f"{model.num_params():,}"),
        row("tokenizer", f"{tokenizer.name} (vocab {tokenizer.vocab_size})" if tokenizer is not None else "not saved"),
    ]
    trained = training_rows(recipe, training)
    if trained:
        lines += ["", "## Training", "", "| | |", "|---|---|", *trained]
    lines += ["", "## Use", "", *transformers_usage(config, recipe, tokenizer, where), "",
              "With bdh-scale (`pip install bdh-scale`):", "",
              "```python",
              "from bdh_scale.model import load_pretrained",
              "",
              f'model = load_pretrained("{where}")  # a directory or a Hub id; model.tokenizer is its tokenizer',
              "```", "",
              "```bash",
              f'bdh-generate {where} --prompt "Hello" --tokens 200',
              f"bdh-eval {where} --tasks wikitext   # pip install 'bdh-scale[eval]'",
              "```"]
    if recipe:
        lines += ["", "## Recipe", "", "Train it again with `bdh-train recipe.yaml` (the file beside this card):", "",
                  "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```"]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")

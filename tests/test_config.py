"""Recipes: typos and impossible values are refused with a message that says what is right."""
import pytest
import yaml

from bdh_scale.config import load_config
from bdh_scale.errors import ConfigError

RECIPES = ["recipes/shakespeare_cpu.yaml", "recipes/shakespeare_m1.yaml", "recipes/stream_europarl.yaml",
           "recipes/stream_fineweb_edu.yaml"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipes_load(recipe):
    cfg = load_config(recipe)
    assert cfg.model.n_layer >= 1 and cfg.train.seq_len >= 1


def test_seed_m1_recipe_is_the_seed_config():
    cfg = load_config("recipes/shakespeare_m1.yaml")
    m, t = cfg.model, cfg.train
    assert (m.n_layer, m.n_embd, m.n_head, m.n_neurons) == (2, 256, 4, 2048)
    assert (t.batch_size, t.seq_len, t.mixed_precision, t.gradient_checkpointing, t.max_steps) == (8, 256, "fp16", True, 3000)


def test_dotted_overrides_are_typed():
    cfg = load_config("recipes/shakespeare_cpu.yaml", ["train.max_steps=7", "model.n_layer=4",
                                                       "train.lr=0.01", "model.attn_window=null"])
    assert cfg.train.max_steps == 7 and cfg.model.n_layer == 4
    assert cfg.train.lr == 0.01 and cfg.model.attn_window is None


def test_int_and_exponent_strings_are_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    assert load_config(None, ["train.lr=3e-3"]).train.lr == 0.003  # YAML 1.1 reads 3e-3 as a string


@pytest.mark.parametrize("override,words", [
    ("model.n_layr=3", ["model.n_layr", "n_layer"]),
    ("trian.lr=3", ["trian", "train"]),
    ("train.max_step=3", ["max_steps"]),
])
def test_unknown_key_names_it_and_the_closest(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override,words", [
    ("model.n_embd=250", ["n_embd", "divisible by n_head"]),
    ("train.seq_len=0", ["train.seq_len", ">= 1"]),
    ("train.state=sometimes", ["reset or carry"]),
    ("model.n_layer=two", ["model.n_layer", "expected int"]),
    ("train.lr=[1]", ["train.lr", "expected float"]),
    ("model.score_scale=sqrt", ["none or inv_sqrt_n"]),
    ("train.mixed_precision=fp8", ["no, fp16 or bf16"]),
])
def test_impossible_values_say_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


def test_missing_and_malformed_recipes(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    flat = tmp_path / "flat.yaml"
    flat.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(flat)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["max_steps=3"])


def test_resolved_config_round_trips_through_a_run_dirs_config_yaml(tmp_path):
    cfg = load_config("recipes/shakespeare_m1.yaml", ["model.forget_mode=data"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert load_config(tmp_path / "config.yaml") == cfg

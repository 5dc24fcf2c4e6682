"""Nothing a file says can take the machine: recipes, overrides and the files of a model directory
are read bounded (utils/bounded.py), and sizes are checked before memory is taken
(model/footprint.py, train/checks/memory.py). Every case runs the real command in a subprocess
whose address space is capped, so that a regression fails in seconds instead of eating the machine."""
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
import yaml

from bdh_scale.errors import CheckpointError, ConfigError
from bdh_scale.utils.bounded import MAX_YAML_VALUES, load_yaml, read_text
from tests.helpers.tiny_runs import RECIPE, ROOT, TINY, clean_env

CAP = 6 << 30  # address space of each command: torch maps ~2 GB, a bomb needs far more


def alias_bomb(levels: int, width: int = 9) -> str:
    """A flow YAML value of `levels` nested lists, each holding `width` aliases of the one below:
    a few hundred bytes that name width ** levels values."""
    value = "&a0 0.1"
    for i in range(1, levels):
        value = f"&a{i} [{value}, " + ", ".join([f"*a{i - 1}"] * (width - 1)) + "]"
    return value


def capped(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))

    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=clean_env(None), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)


def one_error_line(proc, code: int = 2) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error:"), (proc.returncode, proc.stderr[-2000:])
    assert len(lines[0]) < 1000, len(lines[0])
    return lines[0]


def train(tmp_path, recipe, *extra):
    return capped(ROOT / "train.py", recipe, *TINY, f"train.out_dir={tmp_path / 'runs'}", *extra)


# -- YAML ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["dropout: 0.0 ", "backend: none "])
def test_a_480_byte_alias_bomb_in_a_recipe_is_one_line_naming_the_file(tmp_path, key):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(RECIPE.read_text().replace(key, key.split()[0] + " " + alias_bomb(9) + " "))
    line = one_error_line(train(tmp_path, recipe))
    assert str(recipe) in line and "aliases expand" in line
    assert not (tmp_path / "runs").exists()


def test_an_alias_bomb_in_an_override_is_refused(tmp_path):
    line = one_error_line(train(tmp_path, RECIPE, f"model.dropout={alias_bomb(9)}"))
    assert "override 'model.dropout'" in line and "aliases expand" in line


def test_a_value_within_the_bound_is_quoted_short_in_its_error(tmp_path):
    """6 levels (59,049 values) pass the bound; the schema then refuses the value, quoting a prefix."""
    line = one_error_line(train(tmp_path, RECIPE, f"model.dropout={alias_bomb(6)}"))
    assert line.startswith("error: model.dropout: expected float") and len(line) < 200


def test_the_alias_budget_counts_every_use_and_refuses_recursion():
    assert load_yaml("a: &x [1, 2]\nb: [*x, *x]", "t") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}
    with pytest.raises(ConfigError, match="aliases expand to"):
        load_yaml(alias_bomb(7), "t")
    assert 9 ** 5 < MAX_YAML_VALUES < 9 ** 6 * 2
    with pytest.raises(ConfigError, match="recursive"):
        load_yaml("&a [*a]", "t")
    with pytest.raises(ConfigError, match="too deeply"):
        load_yaml("[" * 5000 + "]" * 5000, "t")
    with pytest.raises(yaml.YAMLError):  # syntax stays the caller's to report with its position
        load_yaml("a: [", "t")


@pytest.mark.parametrize("kind", ["big", "fifo", "not_utf8"])
def test_a_recipe_that_is_huge_a_fifo_or_binary_is_refused_before_it_is_read_whole(tmp_path, kind):
    recipe = tmp_path / "r.yaml"
    if kind == "big":
        recipe.write_text(RECIPE.read_text() + "#" * (2 << 20))
    elif kind == "fifo":
        os.mkfifo(recipe)
    else:
        recipe.write_bytes(b"model:\n  n_layer: \xff\xfe\n")
    line = one_error_line(train(tmp_path, recipe), 2)
    assert str(recipe) in line
    words = {"big": "MiB", "fifo": "not a regular file", "not_utf8": "not a text file"}[kind]
    assert words in line


def test_a_file_read_bounded_stops_at_its_limit_even_if_it_never_ends(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        read_text("/dev/zero")
    (tmp_path / "f").write_text("x" * 100)
    with pytest.raises(ConfigError, match="more than"):
        read_text(tmp_path / "f", limit=10)


# -- model directories ---------------------------------------------------------------------------

@pytest.fixture
def model_dir(byte_run, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(byte_run / "final", d)
    return d


def test_an_alias_bomb_as_a_model_directorys_recipe_is_refused_by_bdh_generate(model_dir):
    (model_dir / "recipe.yaml").write_text(f"model:\n  dropout: {alias_bomb(9)}\n")
    line = one_error_line(capped("-m", "bdh_scale.generate", model_dir, "--tokens", "4"))
    assert "recipe.yaml" in line and "aliases expand" in line


def test_a_config_json_of_a_huge_model_is_refused_before_a_weight_is_allocated(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "n_embd": 10_000_000}))
    line = one_error_line(capped("-m", "bdh_scale.generate", model_dir, "--tokens", "4", timeout=60))
    assert "config.json describes" in line and "GiB to load" in line


def test_a_config_json_too_big_to_be_a_config_is_refused(model_dir):
    (model_dir / "config.json").write_text(json.dumps({"arch": "bdh", "pad": "x" * (2 << 20)}))
    line = one_error_line(capped("-m", "bdh_scale.generate", model_dir, "--tokens", "4"))
    assert "config.json" in line and "MiB" in line


def test_a_manifest_too_big_makes_a_checkpoint_damaged(byte_run, tmp_path):
    from bdh_scale.train.checkpoint.checkpointer import MAX_MANIFEST_BYTES, list_checkpoints, verify

    ckpt = tmp_path / "step"
    shutil.copytree(list_checkpoints(byte_run)[-1], ckpt)
    with open(ckpt / "manifest.json", "a") as f:
        f.write(" " * MAX_MANIFEST_BYTES)
    with pytest.raises(CheckpointError, match="is damaged: manifest"):
        verify(ckpt)


# -- sizes before memory ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [["model.n_embd=8192", "model.n_head=4"], ["train.seq_len=100000", "train.batch_size=8"],
                                   ["model.n_embd=65536", "model.n_head=4"]])
def test_a_run_too_big_for_memory_is_refused_before_its_directory_exists(tmp_path, extra):
    line = one_error_line(train(tmp_path, RECIPE, "model.mlp_internal_dim_multiplier=4", *extra), 2)
    assert "train: one step of this run needs about" in line and "train.memory_check=false" in line
    assert not (tmp_path / "runs").exists()


def test_the_check_refuses_by_the_room_it_is_given_and_memory_check_false_lets_the_run_try(monkeypatch):
    from accelerate import Accelerator

    from bdh_scale.config import load_config
    from bdh_scale.train.checks import memory as memory_check

    cfg = load_config(RECIPE, TINY)
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: (1 << 20, "in this test"))
    with pytest.raises(ConfigError, match="1 MiB|0.0 GiB in this test"):
        memory_check.check_memory(cfg, Accelerator(cpu=True), "no")
    cfg.train.memory_check = False
    assert "in this test" in memory_check.check_memory(cfg, Accelerator(cpu=True), "no")

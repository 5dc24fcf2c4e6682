"""train.init_from: a new run starts from a trained model's weights, bit for bit, at step 0 with a
fresh optimizer, on every rank; a source whose weights would mean something else here is refused
in one line with nothing written; a requeued fine-tune resumes its checkpoint instead of starting
over; config.yaml and the model card say where the weights came from."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from bdh_scale.config import load_config
from bdh_scale.errors import ConfigError
from bdh_scale.model.pretrained import push_folder
from bdh_scale.train.schedule import lr_at
from bdh_scale.train.setup import setup
from tests.helpers import mock_hub
from tests.helpers.tiny_runs import (RECIPE, ROOT, bpe_tokenizer_file, clean_env, free_port, main_in_process, overrides,
                                     snapshot, train_in_process)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def no_model_recipe(tmp_path):
    """recipes/shakespeare_cpu.yaml without its model section."""
    tree = yaml.safe_load(RECIPE.read_text())
    del tree["model"]
    path = tmp_path / "no_model.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def set_up(out_dir, run_name, *extra, recipe=RECIPE):
    return setup(load_config(recipe, overrides(out_dir, run_name, *extra)))


def close(run):
    run.data.close()
    run.claim.release()


def weights_of(run) -> dict:
    return run.raw_model.state_dict()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_run_starts_from_the_source_weights_at_step_0_and_records_them(byte_run, tmp_path, capsys):
    from bdh_scale.train.loop import train_run

    # the free fields may differ from the source's: they do not change what the weights mean
    run = set_up(tmp_path, "ft", f"train.init_from={byte_run}", "train.max_steps=2", "model.dropout=0.1",
                 "model.attn_backend=chunked")
    try:
        assert same(weights_of(run), load_file(byte_run / "final/model.safetensors"))  # bit for bit
        assert (run.step, run.tokens) == (0, 0) and run.optimizer.state_dict()["state"] == {}  # no moments
        tc = run.cfg.train
        first_lr = lr_at(0, lr=tc.lr, min_lr=tc.min_lr, warmup_steps=2, max_steps=2)  # the recipe's, from step 0
        assert run.scheduler.get_last_lr()[0] == pytest.approx(first_lr)
        assert run.cfg.model.dropout == 0.1 and run.cfg.model.attn_backend == "chunked"
        assert f"train.init_from: starting from the weights of {byte_run}" in capsys.readouterr().out
        train_run(run)
    finally:
        close(run)
    config = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    recipe = yaml.safe_load((run.run_dir / "final/recipe.yaml").read_text())
    assert config["train"]["init_from"] == recipe["train"]["init_from"] == str(byte_run)
    card = (run.run_dir / "final/README.md").read_text()
    assert f"| initial weights | `{byte_run}` (train.init_from) |" in card


def test_a_model_section_left_out_is_the_sources_also_from_the_hub(byte_run, no_model_recipe, tmp_path, monkeypatch):
    # the shipped fine-tune recipe names the model `make train` trains, so that it also runs from scratch
    finetune = load_config(ROOT / "recipes/finetune_europarl_cpu.yaml", ["train.init_from=null"])
    assert finetune.model == load_config(RECIPE).model
    source = load_config(byte_run / "config.yaml").model
    cfg = load_config(no_model_recipe, [f"train.init_from={byte_run}"])
    assert cfg.model == source
    cfg = load_config(no_model_recipe, [f"train.init_from={byte_run}/final", "model.dropout=0.25"])
    assert cfg.model.dropout == 0.25 and {**vars(cfg.model), "dropout": source.dropout} == vars(source)
    # the same from a Hub id (a Hub on the local disk, read back through huggingface_hub's cache)
    mock_hub.install(monkeypatch, tmp_path)
    push_folder(byte_run / "final", "me/src")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = setup(load_config(no_model_recipe, [f"train.out_dir={tmp_path}", "train.run_name=hub",
                                              "train.init_from=me/src", "train.progress=false"]))
    try:
        assert run.cfg.model == source and same(weights_of(run), load_file(byte_run / "final/model.safetensors"))
    finally:
        close(run)


@pytest.mark.parametrize("extra,words", [
    (["model.n_layer=3", "model.n_head=4"], ["model.n_layer: recipe 3, source 2", "model.n_head: recipe 4, source 2",
                                             "Leave the model section out"]),
    (["BPE"], ["tokenizer: recipe bpe320 (vocab 320), source bytes (vocab 256)", "data.tokenizer=bytes"]),
])
def test_a_source_that_does_not_fit_is_refused_in_one_line_writing_nothing(byte_run, tmp_path, capsys, extra, words):
    if extra == ["BPE"]:
        extra = [f"data.tokenizer={bpe_tokenizer_file(tmp_path)}"]
    out_dir = tmp_path / "runs"
    capsys.readouterr()
    code = main_in_process(RECIPE, *overrides(out_dir, "ft", f"train.init_from={byte_run}", *extra))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: train.init_from: {byte_run} does not fit"), err
    assert all(w in err[0] for w in words), err[0]
    assert not out_dir.exists()


def test_a_requeued_fine_tune_resumes_its_checkpoint_not_the_source(byte_run, tmp_path, capsys):
    first = train_in_process(tmp_path, "ft", f"train.init_from={byte_run}", "train.resume=auto", "train.max_steps=2")
    checkpoint = first.run_dir / "checkpoints/step_00000002"
    capsys.readouterr()
    AcceleratorState._reset_state(reset_partial_state=True)
    run = set_up(tmp_path, "ft", f"train.init_from={byte_run}", "train.resume=auto", "train.max_steps=4")
    try:
        assert run.run_dir == first.run_dir and run.step == 2
        assert same(weights_of(run), load_file(checkpoint / "model.safetensors"))
        assert not same(weights_of(run), load_file(byte_run / "final/model.safetensors"))
        assert "train.init_from: not loaded; the run resumes" in capsys.readouterr().out
    finally:
        close(run)
    # resumed without init_from, the run keeps the one it started from
    AcceleratorState._reset_state(reset_partial_state=True)
    run = set_up(tmp_path, "ft", "train.resume=auto", "train.max_steps=4")
    close(run)
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["train"]["init_from"] == str(byte_run)
    # a recipe naming another source would be ignored by the resume: refused, the run left as it was
    before = snapshot(first.run_dir)
    shutil.copytree(byte_run / "final", tmp_path / "other")
    code = main_in_process(RECIPE, *overrides(tmp_path, "ft", f"train.init_from={tmp_path / 'other'}",
                                              "train.resume=auto", "train.max_steps=4"))
    err = capsys.readouterr().err
    assert code == 2 and f"started from train.init_from={byte_run}" in err and snapshot(first.run_dir) == before
    with pytest.raises(ConfigError, match="both name the weights"):  # a path to resume names its own weights
        load_config(RECIPE, [f"train.init_from={byte_run}", f"train.resume={checkpoint}"])


def test_two_fsdp_processes_both_start_from_the_source_weights(byte_run, tmp_path):
    script = ROOT / "tests/helpers/init_ranks.py"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch/fsdp.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()), str(script),
           str(byte_run / "final/model.safetensors"), str(tmp_path), str(RECIPE),
           *overrides(tmp_path, "ft", f"train.init_from={byte_run}", "train.batch_size=2")]
    proc = subprocess.run(cmd, cwd=ROOT, env=clean_env({"PYTHONPATH": str(ROOT)}), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    for r, report in enumerate(ranks):
        assert report == {"rank": r, "processes": 2, "distributed": "FSDP", "step": 0,
                          "optimizer_state": 0, "equal": True}, report

"""The training loop end to end on CPU: it learns, writes a complete run directory, and refuses
bad input with one clear line and nothing half-written."""
import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState

from bdh_scale.config import load_config
from bdh_scale.model import BDH
from tests.helpers.tiny_runs import main_in_process

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=8",
        "model.dropout=0.0", "train.batch_size=4", "train.seq_len=32", "train.eval_batches=2",
        "train.sample_tokens=20", "train.progress=false", "train.warmup_steps=5", "train.lr=0.005",
        "data.prefetch=0"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run(tmp_path, *overrides):
    from bdh_scale.train.loop import train

    cfg = load_config(ROOT / "recipes/shakespeare_cpu.yaml",
                      TINY + [f"train.out_dir={tmp_path}", "train.run_name=t"] + list(overrides))
    return train(cfg)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_run_dir_is_complete(tmp_path):
    result = run(tmp_path, "train.max_steps=40", "train.eval_every=20", "train.log_every=5")
    rows = metrics(result.run_dir)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, rows  # from ~5.5 (uniform over bytes) down
    for key in ("step", "tokens", "loss", "lr", "tokens_per_s"):
        assert key in rows[0]
    vals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in vals] == [20, 40]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert rows[-1]["tokens"] == 40 * 4 * 32
    d = result.run_dir
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "metrics.jsonl", "tokenizer", "final"}
    assert load_config(d / "config.yaml") == load_config(d / "config.yaml")  # loadable as a recipe
    model = BDH.from_pretrained(d / "final").eval()
    assert model.config.n_embd == 32
    assert isinstance(result.sample, str) and len(result.sample) > 0


def test_fp16_on_cpu_falls_back_to_fp32_with_a_notice(tmp_path, capsys):
    result = run(tmp_path, "train.max_steps=2", "train.mixed_precision=fp16", "train.sample_tokens=0")
    out = capsys.readouterr().out
    assert out.count("needs a GPU") == 1 and "uses fp32" in out
    assert len(metrics(result.run_dir)) >= 1


def test_carry_mode_trains_with_state(tmp_path):
    result = run(tmp_path, "train.max_steps=6", "train.state=carry", "train.sample_tokens=0",
                 "train.grad_accum_steps=2", "train.log_every=3")
    rows = metrics(result.run_dir)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["tokens"] == 6 * 2 * 4 * 32


def test_existing_run_dir_is_never_overwritten(tmp_path):
    first = run(tmp_path, "train.max_steps=1", "train.sample_tokens=0")
    AcceleratorState._reset_state(reset_partial_state=True)
    second = run(tmp_path, "train.max_steps=1", "train.sample_tokens=0")
    assert first.run_dir != second.run_dir and (first.run_dir / "final").is_dir()


@pytest.mark.parametrize("args,words", [
    (["missing.yaml"], ["missing.yaml", "not found"]),
    (["recipes/shakespeare_cpu.yaml", "model.n_layr=2"], ["n_layr", "n_layer"]),
    (["recipes/shakespeare_cpu.yaml", "data.source=/no/such/corpus.txt"], ["/no/such/corpus.txt"]),
    (["BAD_YAML"], ["not valid YAML"]),
])
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, args, words):
    if args == ["BAD_YAML"]:
        bad = tmp_path / "bad.yaml"
        bad.write_text("train: {max_steps: 3\n")
        args = [str(bad)]
    out_dir = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, f"train.out_dir={out_dir}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for w in words:
        assert w in lines[0]
    assert not out_dir.exists()


def refused(tmp_path, capsys, *args, recipe=ROOT / "recipes/shakespeare_cpu.yaml") -> str:
    """Run bdh-train in this process; it must exit 2 with one `error:` line and nothing written."""
    out_dir = tmp_path / "runs"
    capsys.readouterr()
    code = main_in_process(recipe, *TINY, "train.max_steps=3", f"train.out_dir={out_dir}", *args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert not out_dir.exists()
    return err[0]


@pytest.mark.parametrize("args,words", [
    (["data.val_fraction=0"], ["data.val_fraction", "0 tokens"]),  # used to fail at the first validation
    (["train.eval_seq_len=500000"], ["data.val_fraction", "500001"]),
    (["train.sample_top_k=0"], ["train.sample_top_k", ">= 1"]),  # used to crash the end-of-run sample
    (["train.run_name=../../escaped"], ["train.run_name", "plain directory name"]),
    (["train.run_name=/tmp/absolute"], ["train.run_name", "plain directory name"]),
    (["train.run_name="], ["train.run_name", "plain directory name"]),
])
def test_input_that_would_fail_later_is_refused_before_step_1(tmp_path, capsys, args, words):
    line = refused(tmp_path, capsys, *args)
    assert all(w in line for w in words), line
    assert not (tmp_path / "escaped").exists()


def test_recipes_that_are_empty_or_not_text_and_unwritable_outputs_are_refused(tmp_path, capsys):
    empty, binary, a_file = tmp_path / "empty.yaml", tmp_path / "binary.yaml", tmp_path / "a_file"
    empty.write_text("# nothing but a comment\n")
    binary.write_bytes(bytes(range(256)) * 8)
    a_file.write_text("not a directory")
    assert "is empty" in refused(tmp_path, capsys, recipe=empty)  # used to build a 151M-parameter default model
    assert "not a text file" in refused(tmp_path, capsys, recipe=binary)
    no_model = tmp_path / "no_model.yaml"
    no_model.write_text("train: {max_steps: 1}\n")
    out = tmp_path / "runs"
    capsys.readouterr()
    assert main_in_process(no_model, "train.max_steps=1", f"train.out_dir={out}") == 2  # not the 151M default
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "has no model section" in err[0] and not out.exists()
    line = refused(tmp_path, capsys, f"train.out_dir={a_file / 'runs'}")
    assert "train.out_dir" in line and "is a file" in line


def test_too_little_free_disk_for_a_checkpoint_is_refused(tmp_path, capsys, monkeypatch):
    from bdh_scale.train.checks import preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=0, free=1 << 20))
    line = refused(tmp_path, capsys, "train.checkpoint_every=2")
    assert "train.out_dir" in line and "1 MiB free" in line and "keep_checkpoints=0" in line


def test_a_validation_batch_that_does_not_fit_in_memory_is_refused_before_step_1(tmp_path, capsys, monkeypatch):
    """What a forced quadratic attention at a long eval_seq_len does on a GPU, without allocating it here."""
    forward = BDH.forward

    def out_of_memory_in_eval(self, *args, **kwargs):
        if not self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 74.51 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BDH, "forward", out_of_memory_in_eval)
    line = refused(tmp_path, capsys, "train.eval_seq_len=4096")
    assert "train.eval_seq_len" in line and "does not fit in memory" in line and "74.51 GiB" in line


def test_a_corpus_that_is_mostly_not_text_gets_a_warning(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(random.Random(0).randbytes(100_000))
    result = run(tmp_path, "train.max_steps=1", "train.sample_tokens=0", f"data.source={corpus}")
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: data.source")]
    assert len(said) == 1 and "decodes to text" in said[0] and result.steps == 1

"""The memory experiment runner: one spec crosses datasets x T x variants at equal tokens per step,
trains every run through the sweep launcher and writes one table and two figures from the finished
runs (loss by context; passkey recall against distance); a GPT variant is measured by the same
instruments, in its window, out of reach past it."""
import csv
import json
import subprocess
import sys

import pytest
import yaml

from bdh_scale.experiments import memory
from tests.helpers.tiny_runs import ROOT


def tiny_spec(tmp_path) -> dict:
    return {
        "name": "m", "outputs": str(tmp_path / "docs/m"), "tokens_per_step": 128,
        "set": {"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.mlp_internal_dim_multiplier": 8,
                "train.max_steps": 2, "train.eval_batches": 8, "train.sample_tokens": 0, "train.progress": False,
                "data.prefetch": 0, "data.passkey.episodes": 60, "data.passkey.max_gap": 200},
        "datasets": {"passkey": {"recipe": "recipes/passkey_cpu.yaml", "recall": True},
                     "mqar": {"recipe": "recipes/mqar_cpu.yaml", "mqar": True, "seq_len": [16], "variants": ["reset"],
                              "set": {"data.mqar.pairs": 4, "data.mqar.val_episodes": 15}}},
        "seq_len": [32],
        "variants": {"reset": {"train.state": "reset", "model.forget_mode": "none"},
                     "carry_data": {"train.state": "carry", "model.forget_mode": "data"}},
        "context": {"rows": 2, "windows": 4},
        "recall": {"distances": [1, 2], "episodes": 2, "lead": 4},
        "mqar_recall": {"distances": [0, 3], "episodes": 4},
    }


def test_points_keep_tokens_per_step_equal_across_window_lengths(tmp_path):
    spec = dict(tiny_spec(tmp_path), seq_len=[32, 64])
    batches = {(p["T"], p["variant"]): [o for o in p["overrides"] if o.startswith("train.batch_size=")]
               for p in memory.points(spec)}
    assert batches[(32, "reset")] == ["train.batch_size=4"] and batches[(64, "carry_data")] == ["train.batch_size=2"]
    with pytest.raises(SystemExit, match="tokens_per_step=128 is not a multiple of seq_len 48"):
        memory.points(dict(spec, seq_len=[48]))


def test_a_dataset_runs_its_own_window_lengths_and_variants_and_mqar_windows_follow_T(tmp_path):
    spec = tiny_spec(tmp_path)
    runs = {(p["dataset"], p["T"], p["variant"]): p for p in memory.points(spec)}
    assert set(runs) == {("passkey", 32, "reset"), ("passkey", 32, "carry_data"), ("mqar", 16, "reset")}
    mqar = runs[("mqar", 16, "reset")]
    assert mqar["mqar"] and "data.mqar.window=16" in mqar["overrides"] and "train.batch_size=8" in mqar["overrides"]
    spec["datasets"]["mqar"]["variants"] = ["shift"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # the variants in the order written
    with pytest.raises(SystemExit, match=r"datasets.mqar.variants names shift, not among the spec's variants "
                                         r"\(reset, carry_data\)"):
        memory.load_spec(str(path))


def test_the_experiment_trains_every_run_and_writes_its_table_and_figures(tmp_path):
    spec = tiny_spec(tmp_path)
    spec["variants"]["gpt"] = {"model.arch": "gpt", "model.token_shift": "none", "train.state": "reset"}
    spec["datasets"]["mqar"]["variants"].append("gpt")  # the softmax control on the same episodes
    spec_path = tmp_path / "m.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "bdh_scale.experiments.memory", str(spec_path),
                           "--out_dir", str(tmp_path / "runs")], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "docs/m.json").read_text())
    runs = {r["variant"]: r for r in result["runs"] if r["dataset"] == "passkey"}
    assert set(runs) == {"reset", "carry_data", "gpt"}
    assert runs["carry_data"]["state"] == "carry" and runs["carry_data"]["forget_mode"] == "data"
    for r in runs.values():
        assert r["tokens"] == 2 * 128  # 2 steps x 4 lanes x 32 tokens
        assert [d["distance_windows"] for d in r["recall"]] == [1, 2]
        assert r["context"][0]["context_from"] == 0 and r["val_loss_window"] > 0
    # a 32-token GPT: context past its window and every passkey distance (a gap of 32 or more) out of reach
    pk = runs["gpt"]
    assert pk["val_loss_carried"] is None and all(d["out_of_reach"] and d["window"] is None for d in pk["recall"])
    assert [b["out_of_reach"] for b in pk["context"]] == [False] + [True] * (len(pk["context"]) - 1)
    mq, gpt = ([r for r in result["runs"] if r["dataset"] == "mqar" and r["variant"] == v][0] for v in ("reset", "gpt"))
    assert mq["pairs"] == 4 and mq["token_shift"] == "layer" and mq["tokens"] == 2 * 128 and "context" not in mq
    assert [d["distance_windows"] for d in mq["mqar_recall"]] == [0, 3] and mq["chance_without_pairs"] == 1 / 128
    assert 0 <= mq["mqar_recall"][1]["window"]["accuracy"] <= 1 and "reach_tokens" not in mq
    # the GPT: the same instrument, its window reading at distance 0, distance 3 out of reach
    assert gpt["arch"] == "gpt" and gpt["reach_tokens"] == 16 and gpt["tokens"] == 2 * 128
    near, far = gpt["mqar_recall"]
    assert not near["out_of_reach"] and 0 <= near["window"]["accuracy"] <= 1 and "carried" not in near
    assert far == {"distance_windows": 3, "episodes": 4, "out_of_reach": True, "window": None}
    table = {(r["dataset"], r["variant"]): r for r in csv.DictReader((tmp_path / "docs/m.csv").open())}
    assert table[("passkey", "gpt")]["recall_d1_window"] == "out of reach"
    assert table[("passkey", "gpt")]["carried_minus_window"] == table[("passkey", "gpt")]["recall_d1_carried"] == ""
    table = {v: r for (dataset, v), r in table.items() if dataset == "mqar"}
    assert table["gpt"]["mqar_d3_window"] == "out of reach" and table["gpt"]["mqar_d3_carried"] == ""
    assert table["gpt"]["mqar_d0_carried"] == "" and float(table["gpt"]["mqar_d0_window"]) == near["window"]["accuracy"]
    assert float(table["reset"]["mqar_d3_carried"]) == mq["mqar_recall"][1]["carried"]["accuracy"]
    for suffix in (".csv", "_context.png", "_recall.png", "_mqar.png"):
        assert (tmp_path / f"docs/m{suffix}").stat().st_size > 0
    assert (tmp_path / "docs/m.csv").read_text().startswith("dataset,T,variant")

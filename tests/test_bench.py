"""bdh-bench end to end on a tiny model: every section measured and saved, the memory tracker
counting what is known exactly (parameters, AdamW's two moments), and a real worker process."""
import json
import subprocess
import sys

import pytest

from bdh_scale.bench import cli as bench
from bdh_scale.bench.cases import MEASURES
from bdh_scale.model import BDH, ModelConfig

TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.mlp_internal_dim_multiplier=4"]


@pytest.fixture
def in_process(monkeypatch):
    """Run the worker cases in this process: the orchestration is what is tested here."""
    monkeypatch.setattr(bench, "run_worker", lambda case: MEASURES[case["kind"]](case))


def test_bench_measures_every_section_and_saves_json(in_process, tmp_path, capsys):
    argv = ["--recipe", "recipes/shakespeare_cpu.yaml", "--override", *TINY, "--T", "8,16", "--batch-size", "2",
            "--variants", "plain,parallel,chunked,auto", "--steps", "1", "--warmup", "0", "--repeats", "2",
            "--gen-ctx", "4,8", "--gen-tokens", "2", "--session-prompt", "4", "--session-tokens", "3",
            "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("bench-*.json")
    result = json.loads(path.read_text())
    variants = ("plain", "parallel", "chunked", "auto")
    assert {(r["variant"], r["T"]) for r in result["train"]} == {(v, T) for v in variants for T in (8, 16)}
    assert all(r["tokens_per_s"] > 0 and r["share_of_peak"] > 0 for r in result["train"])
    cfg = ModelConfig(**result["model"])
    param_mb = BDH(cfg).num_params() * 4 / 2**20
    for r in result["memory"]:  # B = 1 sweep
        kinds = r["by_kind_mb"]
        assert kinds["param"] == pytest.approx(param_mb, rel=1e-6)
        assert kinds["opt"] >= 2 * param_mb  # exp_avg and exp_avg_sq
        if r["variant"] != "plain":  # fused AdamW has no temporaries (the reference's for-loop AdamW has)
            assert kinds["opt"] == pytest.approx(2 * param_mb, abs=0.001)
        assert r["peak_mb"] >= kinds["param"] + kinds["opt"] + kinds["act"]
    assert {r["ctx"] for r in result["generate"]} == {4, 8} and all(r["ms_per_token"] > 0 for r in result["generate"])
    assert not result["session"]["auto"]["estimated"] and result["session"]["plain"]["estimated"]
    ratios = result["ratios"]
    assert ratios["auto/plain tokens/s at T=8"] > 0 and "chunked/parallel peak memory at T=16" in ratios
    assert "JSON:" in capsys.readouterr().out


def test_worker_process_answers_with_json():
    case = {"kind": "generate", "model": dict(n_layer=1, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4,
                                               dropout=0.0), "variant": "auto", "ctx": 4, "tokens": 2}
    assert bench.run_worker(case)["ms_per_token"] > 0
    assert "error" in bench.run_worker({**case, "variant": "no-such-variant", "kind": "train"})


def test_unknown_variant_is_one_clear_error(capsys):
    assert bench.main(["--variants", "auto,fast"]) == 2
    assert "unknown variants ['fast']" in capsys.readouterr().err


def test_data_bench_measures_stream_lanes_against_the_trainer(in_process, tmp_path, capsys):
    argv = ["--recipe", "recipes/shakespeare_cpu.yaml", "--override", *TINY, "--data-only", "--data-mb", "0.3",
            "--data-tokens", "40000", "--steps", "1", "--warmup", "0", "--repeats", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("bench-*.json")
    data = json.loads(path.read_text())["data"]
    trainer = data["stream"]["trainer_tokens_per_s"]
    assert trainer > 0 and data["stretch"]["serve_tokens_per_s"] > 0
    rows = data["stream"]["rows"]
    assert {(r["corpus"], r["tokenizer"], r["workers"]) for r in rows} >= \
        {(c, t, w) for c in ("parquet", "jsonl") for t in ("bytes", "bpe") for w in (1, 2, 4)}
    for r in rows:
        assert r["serve_tokens_per_s"] > 0 and r["startup_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["x_trainer"] == pytest.approx(r["serve_tokens_per_s"] / trainer)
    summary = data["stream"]["summary"]
    assert summary["10x corpus / 1x corpus: peak RSS"] > 0 and "bpe tokens/s with 1 worker" in summary
    assert data["stream"]["h100_estimate"]["per_tokenizer"]["bpe"]["workers"] > 0
    assert data["stream"]["corpora"]["parquet_x10"]["shards"] == 10 * data["stream"]["corpora"]["parquet"]["shards"]


def test_a_worker_reports_its_own_peak_memory_not_its_launchers():
    """ru_maxrss survives fork and exec: a worker started by a process holding 1.5 GB would report
    1.5 GB. The bench reads the worker's own high-water mark instead."""
    held = bytearray(1_500_000_000)
    held[::4096] = b"x" * len(held[::4096])  # touched: resident in this process
    code = ("import resource; from bdh_scale.bench.data import PeakMemory; "
            "print(PeakMemory().own_peak_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    own, inherited = map(int, out.stdout.split())
    assert inherited > 1_400_000_000  # what getrusage says in the worker: its launcher's peak
    assert own < 1_000_000_000  # the worker itself: python, torch and the bench imports
    del held


def test_transformers_generation_bench_times_both_ways_at_every_context_and_saves_json(tmp_path, capsys):
    argv = ["--transformers", "--recipe", "recipes/shakespeare_cpu.yaml", "--override", *TINY, "--ctx", "8,32",
            "--tokens", "3", "--repeats", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("transformers-generate-*.json")
    result = json.loads(path.read_text())
    assert {(r["generation"], r["context"]) for r in result["rows"]} == {
        (who, c) for who in ("transformers", "bdh_scale") for c in (8, 32)}
    assert all(r["ms_per_token"] > 0 for r in result["rows"])
    assert set(result["ratios"]) == {"transformers ms/token ctx=32 / ctx=8", "bdh_scale ms/token ctx=32 / ctx=8",
                                     "transformers / bdh_scale ms/token at ctx=8",
                                     "transformers / bdh_scale ms/token at ctx=32"}
    assert bench.main(["--transformers", "--recipe", "recipes/shakespeare_cpu.yaml", "--override", "model.arch=gpt",
                       "model.token_shift=none", "--out", str(tmp_path)]) == 2
    assert "has no state" in capsys.readouterr().err


def test_bptt_bench_counts_the_graph_of_every_window_it_keeps(in_process, tmp_path):
    """The bytes saved for the backward of a step through k windows grow with k (every window's
    activations wait for the one backward); the fixed bytes (weights, grads, moments) do not."""
    argv = ["--recipe", "recipes/mqar_cpu.yaml", "--override", *TINY, "--T", "16", "--batch-size", "2",
            "--bptt", "1,2,4", "--bptt-only", "--steps", "1", "--warmup", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    (path,) = tmp_path.glob("bench-*.json")
    rows = {r["k"]: r for r in json.loads(path.read_text())["bptt"]["rows"]}
    assert rows[1]["fixed_mb"] == rows[2]["fixed_mb"] == rows[4]["fixed_mb"] > 0
    assert rows[2]["saved_mb"] == pytest.approx(2 * rows[1]["saved_mb"], rel=0.1)
    assert rows[4]["saved_mb"] == pytest.approx(4 * rows[1]["saved_mb"], rel=0.1)


def test_bptt_only_without_k_is_one_clear_error(capsys):
    assert bench.main(["--bptt-only"]) == 2
    assert "--bptt-only needs --bptt" in capsys.readouterr().err


def test_a_failed_launch_is_reported_by_its_cause_not_torchruns_banner(tmp_path):
    """A worker that raises under `accelerate launch` on 2 processes: the line the benchmarks
    report is the worker's exception, where the last line of stderr is a row of `=`."""
    from bdh_scale.utils.child import failure_line, free_port
    from tests.helpers.tiny_runs import ROOT, clean_env

    script = tmp_path / "worker.py"
    script.write_text("raise ValueError('the cause: shard 3 is missing')\n")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "launch" / "cpu_2proc.yaml"), "--num_processes", "2",
                           "--main_process_port", str(free_port()), str(script)],
                          cwd=ROOT, env=clean_env(None), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert failure_line(proc.stderr) == "ValueError: the cause: shard 3 is missing"
    assert "ValueError" not in proc.stderr.strip().splitlines()[-1]  # what was reported before


def test_a_failure_line_prefers_our_error_line_then_the_exit_code():
    from bdh_scale.utils.child import failure_line

    assert failure_line("Traceback\nKeyError: 'x'\nerror: model.n_embd must be even\n=====") == \
        "error: model.n_embd must be even"
    assert failure_line("Root Cause\n  exitcode  : -9 (pid: 12)\n=====") == "exitcode  : -9 (pid: 12)"
    assert failure_line("") == "(no output)"

"""The one-command GPU check runs through on this machine with --dry-run (tiny shapes, fp32, fla's
kernel replaced by its stand-in): every case of the real check (bf16 at several T, compiled and
not, the whole-model step with each attention backend, the fp16 loss scaler with an injected
overflow, FSDP on one process, and the attention kernels' contract, parity and timing) runs, and
the tables and JSON come out. `make gpu-check` installs the [gpu] extra, except for a dry run."""
import json
import subprocess

from bdh_scale.bench import gpu_check
from tests.helpers.tiny_runs import ROOT


def test_gpu_check_dry_run_runs_every_case_and_writes_its_tables_and_json(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = {c["case"]: c for c in result["cases"]}
    assert [c["error"] for c in result["cases"]] == [None] * 9
    assert {(c["T"], c["compile"]) for name, c in cases.items() if name.endswith(("eager", "compiled"))} == {
        (16, False), (32, False), (16, True), (32, True)}
    assert {c["backend"] for c in cases.values() if c["T"] == 32 and not c["compile"]} == {
        "auto", "parallel", "chunked", "fla"}
    assert {"fp16-overflow", "fsdp-1proc"} <= set(cases)
    for c in result["cases"]:
        assert c["steps"] >= 3 and c["tokens_per_s"] > 0 and 0 < c["mfu"] < 1

    kernels = result["kernels"]
    assert max(kernels["contract"]["adapter_vs_chunked"].values()) < 1e-5
    assert "not importable" in kernels["contract"]["stand_in_vs_fla"]  # no fla here: said, not skipped
    parity = {(r["N"], r["form"], r["carried"]): r for r in kernels["parity"]}
    assert set(parity) == {(N, f, c) for N in (16, 32, 64) for f in ("parallel", "chunked", "fla") for c in (False, True)
                           if not (f == "parallel" and c)}
    for r in parity.values():  # fp32 in a dry run: each form equals the fp32 chunked form
        assert r["error"] is None and max(r["rel_error"].values()) < 1e-5
        assert {"a", "dk", "dv", "dlog_g"} <= set(r["rel_error"]) and ("drho" in r["rel_error"]) == r["carried"]
    timing = {(r["T"], r["form"]): r for r in kernels["timing"]}
    assert set(timing) == {(T, f) for T in (16, 32, 64) for f in ("parallel", "chunked", "fla")}
    assert all(r["error"] is None and r["ms"] > 0 for r in timing.values())

    out = capsys.readouterr().out
    table = out[out.index("case "):out.index("fla contract")].strip().splitlines()
    assert len(table) == 1 + 9
    assert "parity " in out and "fwd+bwd " in out and out.strip().splitlines()[-1].startswith("9/9 cases ok")


def test_make_gpu_check_installs_the_gpu_extra_except_for_a_dry_run():
    def commands(*args):
        return subprocess.run(["make", "-n", "-W", "pyproject.toml", "gpu-check", *args], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout

    assert '-e ".[gpu]"' in commands()
    dry = commands("ARGS=--dry-run")
    assert ".[gpu]" not in dry and "bdh_scale.bench.gpu_check --dry-run" in dry

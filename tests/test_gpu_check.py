"""The one-command GPU check runs through on this machine with --dry-run (tiny shapes): every case
of the real check (bf16 at several T, compiled and not, the fp16 loss scaler with an injected
overflow, FSDP on one process) trains, and the table and JSON come out."""
import json

from bdh_scale.bench import gpu_check


def test_gpu_check_dry_run_runs_every_case_and_writes_its_table_and_json(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = {c["case"]: c for c in result["cases"]}
    assert [c["error"] for c in result["cases"]] == [None] * 6
    assert {(c["T"], c["compile"]) for name, c in cases.items() if name.endswith(("eager", "compiled"))} == {
        (16, False), (32, False), (16, True), (32, True)}
    assert {"fp16-overflow", "fsdp-1proc"} <= set(cases)
    for c in result["cases"]:
        assert c["steps"] >= 3 and c["tokens_per_s"] > 0 and 0 < c["mfu"] < 1
    out = capsys.readouterr().out
    table = out[out.index("case "):].splitlines()
    assert len(table) == 1 + 6 + 1 and table[-1].startswith("6/6 cases ok")

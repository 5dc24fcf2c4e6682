"""Scaling sweeps: the L(N) fit recovers a known law; a spec expands to runs with the same lanes and
token budget; finished runs are collected into a table, fits and a PNG."""
import json

import numpy as np
import pytest
import yaml

from bdh_scale.experiments import scaling
from bdh_scale.experiments.fit import fit_power_law, predict

SPEC = {
    "name": "sc",
    "recipe": "recipes/europarl_small.yaml",
    "set": {"train.state": "reset", "train.seq_len": 64, "train.max_steps": 10, "model.token_shift": "none"},
    "arches": {
        "bdh": {"set": {"model.arch": "bdh", "model.n_layer": 1}, "sizes": [{"model.n_embd": e} for e in (16, 32, 48)]},
        "gpt": {"set": {"model.arch": "gpt", "model.n_layer": 1, "model.block_size": 64},
                "sizes": [{"model.n_embd": e} for e in (16, 32, 48)]},
    },
}


def test_fit_recovers_a_known_power_law():
    n = np.geomspace(2e5, 5e6, 6)
    loss = 40.0 * n**-0.25 + 1.3
    fit = fit_power_law(list(n), list(loss))
    assert fit["b"] == pytest.approx(0.25, abs=0.01)
    assert fit["c"] == pytest.approx(1.3, abs=0.01)
    assert np.allclose(predict(fit, n), loss, rtol=1e-3)
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_power_law([1e5, 2e5], [2.0, 1.9])


def test_spec_points_share_everything_but_the_architecture_and_size():
    pts = scaling.points(SPEC)
    assert [p["run_name"] for p in pts] == ["sc-bdh-n_embd16", "sc-bdh-n_embd32", "sc-bdh-n_embd48",
                                            "sc-gpt-n_embd16", "sc-gpt-n_embd32", "sc-gpt-n_embd48"]
    shared = {"train.state=reset", "train.seq_len=64", "train.max_steps=10"}
    assert all(shared <= set(p["overrides"]) for p in pts)
    cfgs = [scaling.resolved_config(p, SPEC["recipe"], "/nonexistent") for p in pts]
    assert {c.train.seed for c in cfgs} == {cfgs[0].train.seed}  # same lanes
    assert [c.model.arch for c in cfgs] == ["bdh"] * 3 + ["gpt"] * 3
    params = [scaling.count_params(c.model) for c in cfgs]
    assert params[0] < params[1] < params[2] and params[3] < params[4] < params[5]


def test_bad_spec_is_one_clear_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "recipe": "r.yaml", "arches": {"bdh": {"sizes": []}}}))
    with pytest.raises(SystemExit, match="arches.bdh needs a non-empty 'sizes'"):
        scaling.load_spec(str(path))
    bad = {**SPEC, "set": {"model.n_embed": 3}}
    with pytest.raises(SystemExit, match="unknown key .model.n_embed.; did you mean n_embd"):
        scaling.resolved_config(scaling.points(bad)[0], SPEC["recipe"], str(tmp_path))


def test_collect_fits_and_plots_finished_runs(tmp_path):
    """Fake finished runs (final/ and a last validation row) with a loss falling as a power law."""
    spec = {**SPEC, "outputs": str(tmp_path / "docs" / "sc")}
    for p in scaling.points(spec):
        cfg = scaling.resolved_config(p, spec["recipe"], str(tmp_path))
        n = scaling.count_params(cfg.model)
        run = tmp_path / "runs" / p["run_name"]
        (run / "final").mkdir(parents=True)
        loss = (30.0 if p["arch"] == "bdh" else 25.0) * n**-0.3 + 1.0
        (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "tokens": 10240, "loss": loss, "val_loss": loss,
                                                       "val_bpb": loss}) + "\n")
    assert scaling.report(spec, str(tmp_path / "runs")) == 0
    table = json.loads((tmp_path / "docs" / "sc.json").read_text())
    assert len(table) == 6 and all(r["status"] == "done" and r["compute_flops"] > 0 for r in table)
    fits = yaml.safe_load((tmp_path / "docs" / "sc.fit.yaml").read_text())
    assert fits["bdh"]["b"] == pytest.approx(0.3, abs=0.02) and fits["gpt"]["b"] == pytest.approx(0.3, abs=0.02)
    assert (tmp_path / "docs" / "sc.png").stat().st_size > 10_000


@pytest.mark.parametrize("spec_path, lo, hi", [("launch/scaling_cpu.yaml", 0.2e6, 5.2e6),
                                               ("launch/scaling_gpu.yaml", 0.5e6, 120e6)])
def test_committed_specs_resolve_and_span_their_size_range(spec_path, lo, hi):
    spec = scaling.load_spec(spec_path)
    for arch in spec["arches"]:
        pts = [p for p in scaling.points(spec) if p["arch"] == arch]
        params = [scaling.count_params(scaling.resolved_config(p, spec["recipe"], "/nonexistent").model) for p in pts]
        assert params == sorted(params) and lo <= params[0] and params[-1] <= hi
        assert params[-1] / params[0] > 15  # more than a decade of sizes per architecture

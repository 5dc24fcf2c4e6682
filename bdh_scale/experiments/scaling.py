"""Scaling sweeps: BDH and the GPT baseline at several sizes on one corpus, with the same loop,
lanes and token budget; final val loss against parameters and compute, L(N) = a N^-b + c fitted
per architecture, a PNG and a table.

    bdh-scaling launch/scaling_cpu.yaml [--mode run|print|slurm|collect] [--out_dir runs]

A spec (YAML) names the base recipe, overrides for every run (`set`), and per architecture its
own overrides and a list of sizes (each a dict of overrides):

    name: scaling_cpu
    recipe: recipes/europarl_small.yaml
    set: {train.state: reset, train.max_steps: 240}
    arches:
      bdh: {set: {model.arch: bdh}, sizes: [{model.n_embd: 48}, {model.n_embd: 64}]}
      gpt: {set: {model.arch: gpt, model.n_layer: 4}, sizes: [{model.n_embd: 64}]}
    outputs: docs/results/scaling_cpu        # -> .png, .json, .csv (optional; default <out_dir>/sweeps/<name>)

Modes: run (train every point here, one after another, then collect), print (one command per
point), slurm (one sbatch job per point through launch/slurm.sh; --dry-run prints them), collect
(read finished runs, fit, plot). Runs use train.resume=auto, so an interrupted sweep continues
where it stopped; finished points are not rerun. Compute is model FLOPs per token
(model/flops.py) times the tokens the run trained on.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from bdh_scale.config import load_config
from bdh_scale.errors import ConfigError, UsageError
from bdh_scale.experiments.dispatch import add_launch_args, dispatch, job
from bdh_scale.experiments.fit import fit_power_law, plot_scaling
from bdh_scale.experiments.sweep import format_table, result_row, write_table
from bdh_scale.model import build_model
from bdh_scale.model.flops import flops_per_token
from bdh_scale.utils.bounded import read_yaml


def load_spec(path: str) -> dict:
    """The spec, checked: a base recipe that exists and at least one architecture with sizes."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: scaling spec '{p}' not found; e.g. launch/scaling_cpu.yaml")
    try:
        spec = read_yaml(p, what="scaling spec") or {}
    except (UsageError, yaml.YAMLError) as e:
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    for key in ("name", "recipe", "arches"):
        if key not in spec:
            raise SystemExit(f"error: {p}: missing '{key}' (needs name, recipe, arches; see bdh_scale/experiments/scaling.py)")
    if not isinstance(spec["arches"], dict) or not spec["arches"]:
        raise SystemExit(f"error: {p}: 'arches' must map an architecture label to {{set, sizes}}")
    for arch, entry in spec["arches"].items():
        if not isinstance(entry, dict) or not entry.get("sizes"):
            raise SystemExit(f"error: {p}: arches.{arch} needs a non-empty 'sizes' list of override dicts")
    return spec


def as_overrides(d: dict | None) -> list[str]:
    """{model.n_embd: 64} -> ['model.n_embd=64'] (values as YAML, as on the train command line)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in (d or {}).items()]


def points(spec: dict) -> list[dict]:
    """Every run of the spec: arch, run_name and its overrides (shared, then arch, then size)."""
    out = []
    for arch, entry in spec["arches"].items():
        for size in entry["sizes"]:
            label = "-".join(f"{k.split('.')[-1]}{v}" for k, v in size.items())
            out.append({"arch": arch, "run_name": f"{spec['name']}-{arch}-{label}",
                        "overrides": as_overrides(spec.get("set")) + as_overrides(entry.get("set")) + as_overrides(size)})
    return out


def resolved_config(point: dict, recipe: str, out_dir: str):
    """The run's own resolved config when it exists (vocab set by its tokenizer), else the spec's."""
    saved = Path(out_dir) / point["run_name"] / "config.yaml"
    try:
        return load_config(saved if saved.is_file() else recipe, [] if saved.is_file() else point["overrides"])
    except ConfigError as e:
        raise SystemExit(f"error: {point['run_name']}: {e}") from None


def count_params(model_cfg) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init
        return build_model(model_cfg).num_params()


def collect(spec: dict, out_dir: str) -> tuple[list[dict], dict]:
    """One row per point (arch, params, tokens, compute, val loss, status) and the fits."""
    rows = []
    for point in points(spec):
        cfg = resolved_config(point, spec["recipe"], out_dir)
        row = result_row(Path(out_dir) / point["run_name"], {"arch": point["arch"]})
        row["params"] = count_params(cfg.model)
        T = cfg.train.seq_len
        row["flops_per_token"] = flops_per_token(cfg.model, T)
        row["compute_flops"] = row["flops_per_token"] * row["tokens"] if row["tokens"] else None
        rows.append(row)
    fits = {}
    for arch in spec["arches"]:
        done = [r for r in rows if r["arch"] == arch and r["status"] == "done" and r["val_loss"] is not None]
        if len(done) >= 3:
            fits[arch] = fit_power_law([r["params"] for r in done], [r["val_loss"] for r in done])
    return rows, fits


def outputs(spec: dict, out_dir: str) -> Path:
    return Path(spec["outputs"]) if spec.get("outputs") else Path(out_dir) / "sweeps" / spec["name"]


def report(spec: dict, out_dir: str) -> int:
    rows, fits = collect(spec, out_dir)
    stem = outputs(spec, out_dir)
    write_table(rows, stem)
    (stem.with_suffix(".fit.yaml")).write_text(yaml.safe_dump(
        {arch: {k: float(f"{v:.6g}") for k, v in f.items()} for arch, f in fits.items()}, sort_keys=False))
    print(format_table(rows))
    for arch, f in fits.items():
        print(f"fit {arch}: L(N) = {f['a']:.4g} * N^-{f['b']:.4f} + {f['c']:.4f}  (rmse {f['rmse']:.4f})")
    done = [r for r in rows if r["status"] == "done" and r["val_loss"] is not None]
    if done:
        fig = plot_scaling(done, fits, f"{spec['name']}: final val loss, {spec['recipe']}")
        fig.savefig(stem.with_suffix(".png"), dpi=120)
        print(f"plot: {stem.with_suffix('.png')}")
    print(f"table: {stem.with_suffix('.csv')}, {stem.with_suffix('.json')}; fits: {stem.with_suffix('.fit.yaml')}")
    return 0 if len(done) == len(rows) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bdh-scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="scaling spec YAML, e.g. launch/scaling_cpu.yaml")
    add_launch_args(p, run_mode="run")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    spec = load_spec(args.spec)
    todo = points(spec)
    for point in todo:  # fail on a bad override before anything runs
        resolved_config(point, spec["recipe"], args.out_dir)
    dispatch([job(pt["run_name"], spec["recipe"], pt["overrides"], args.out_dir) for pt in todo], args)
    return report(spec, args.out_dir) if args.mode in ("run", "collect") else 0


if __name__ == "__main__":
    sys.exit(main())

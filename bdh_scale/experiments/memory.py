"""The memory experiment: what does a carried synaptic state buy, and from what distance?

    bdh-memory launch/memory_cpu.yaml [--mode run|print|slurm|collect] [--out_dir runs]

A spec (YAML) crosses datasets x window lengths x variants, every run the same model size and
the same tokens, and asks for the measurements made on each finished run:

    name: memory_cpu
    outputs: docs/results/memory_cpu           # -> .json, .csv, _context.png, _recall.png
    set: {train.max_steps: 400, ...}           # every run
    datasets:                                  # label -> recipe and its own overrides
      europarl: {recipe: recipes/europarl_small.yaml, set: {...}}
      passkey: {recipe: recipes/passkey_cpu.yaml, set: {...}, recall: true}
      mqar32: {recipe: recipes/mqar_cpu.yaml, mqar: true, seq_len: [128], variants: [shift]}
    seq_len: [128, 512]                        # T of training and of the measurements (a dataset may give its own)
    tokens_per_step: 2048                      # optional: batch_size = tokens_per_step / T, same tokens at every T
    variants:                                  # label -> overrides
      reset: {train.state: reset}
      carry: {train.state: carry, model.forget_mode: none}
    context: {rows: 8, windows: 16}            # bdh-analyze context on every run
    recall: {distances: [1, 2, 4, 8], episodes: 32, lead: 32}   # bdh-analyze recall where recall: true
    mqar_recall: {distances: [0, 1, 2, 4, 8, 16, 32], episodes: 64, seed: 1}   # where mqar: true

A dataset with `variants: [...]` runs only those of the spec's variants. An `mqar: true` dataset
(data.source synthetic:mqar) is measured by its recall against distance (analysis/recall.py,
mqar_recall) instead of loss by context, which on key/value noise says nothing; its episode
window is set to each T it runs at (data.mqar.window), so its pairs scale with the dataset's
own data.mqar.pairs.

The runs go through the same launcher as the sweeps (dispatch.py: here one after another,
printed, or one SLURM job each) and resume where they stopped. `collect` (also the end of `run`)
reads every finished run, measures loss by context (carried and window readings of the held-out
rows, train/evaluate.py) and passkey recall (analysis/recall.py), and writes one table and two
figures: loss by context per dataset and T, and recall against distance per T.

A variant without a state (model.arch: gpt, the softmax control) is measured by the same
instruments on the same episodes: its window reading only (no carried column), and every
distance or context bucket past its window marked out of reach (null in the JSON, "out of reach"
in the table, a grey band in the figures; analysis/in_window.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from bdh_scale import rundir
from bdh_scale.analysis.context import loss_by_context
from bdh_scale.analysis.in_window import cell, value
from bdh_scale.analysis.recall import mqar_recall, recall
from bdh_scale.config.recipe import run_config
from bdh_scale.data.synthetic.mqar import mqar_for
from bdh_scale.data.synthetic.passkey import passkey_for
from bdh_scale.errors import UsageError
from bdh_scale.experiments.dispatch import add_launch_args, dispatch, job
from bdh_scale.experiments.memory_figures import plot_context, plot_mqar, plot_recall, save_figure
from bdh_scale.experiments.scaling import as_overrides, outputs
from bdh_scale.experiments.sweep import format_table, write_table
from bdh_scale.model.registry import reach
from bdh_scale.utils.atomic import write_json_atomic
from bdh_scale.utils.bounded import read_yaml

KEYS = ("name", "datasets", "variants")


def load_spec(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: memory spec '{p}' not found; e.g. launch/memory_cpu.yaml")
    try:
        spec = read_yaml(p, what="memory spec") or {}
    except (UsageError, yaml.YAMLError) as e:
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    missing = [k for k in KEYS if not spec.get(k)]
    if missing:
        raise SystemExit(f"error: {p}: missing {', '.join(missing)} (needs {', '.join(KEYS)}; "
                         "see bdh_scale/experiments/memory.py)")
    for label, entry in spec["datasets"].items():
        if not isinstance(entry, dict) or "recipe" not in entry:
            raise SystemExit(f"error: {p}: datasets.{label} needs a recipe")
        if not (entry.get("seq_len") or spec.get("seq_len")):
            raise SystemExit(f"error: {p}: datasets.{label} has no seq_len and the spec gives none; "
                             "set seq_len: [T, ...] at the top or in the dataset")
        unknown = [v for v in entry.get("variants") or [] if v not in spec["variants"]]
        if unknown:
            raise SystemExit(f"error: {p}: datasets.{label}.variants names {', '.join(map(str, unknown))}, "
                             f"not among the spec's variants ({', '.join(spec['variants'])})")
    return spec


def batch_for(spec: dict, T: int) -> list[str]:
    """The batch override that keeps tokens per step equal across window lengths, if asked."""
    tokens = spec.get("tokens_per_step")
    if tokens is None:
        return []
    if tokens % T:
        raise SystemExit(f"error: tokens_per_step={tokens} is not a multiple of seq_len {T}; "
                         "pick window lengths that divide it")
    return [f"train.batch_size={tokens // T}"]


def points(spec: dict) -> list[dict]:
    """Every run: dataset, T, variant, run name and overrides (shared, dataset, T, variant)."""
    out = []
    for dataset, entry in spec["datasets"].items():
        mqar = bool(entry.get("mqar"))
        for T in entry.get("seq_len") or spec["seq_len"]:
            for variant in entry.get("variants") or spec["variants"]:
                window = [f"data.mqar.window={T}"] if mqar else []
                out.append({"dataset": dataset, "T": T, "variant": variant, "recipe": entry["recipe"],
                            "recall": bool(entry.get("recall")), "mqar": mqar,
                            "run_name": f"{spec['name']}-{dataset}-T{T}-{variant}",
                            "overrides": as_overrides(spec.get("set")) + as_overrides(entry.get("set")) + window
                            + [f"train.seq_len={T}"] + batch_for(spec, T) + as_overrides(spec["variants"][variant])})
    return out


def measure(point: dict, spec: dict, out_dir: str, device) -> dict | None:
    """The row of one finished run: its final validation, then loss by context and (passkey)
    recall, or for an MQAR run its recall against distance."""
    run = Path(out_dir) / point["run_name"]
    if not (run / rundir.FINAL).is_dir():
        return None
    cfg = run_config(run)
    model, tokenizer = rundir.load_run(run)
    model = model.to(device).eval()
    metrics = rundir.read_metrics(run)
    last_val = [r for r in metrics if "val_loss" in r][-1]
    c = model.config
    row = {"dataset": point["dataset"], "T": point["T"], "variant": point["variant"], "arch": model.arch,
           "state": cfg.train.state, "bptt_windows": cfg.train.bptt_windows,
           "forget_mode": getattr(c, "forget_mode", None), "attn_window": getattr(c, "attn_window", None),
           "token_shift": getattr(c, "token_shift", None), "params": model.num_params(),
           "tokens": metrics[-1]["tokens"], "train_seconds": round(metrics[-1].get("elapsed_s", 0.0)),
           "trained_val_loss": last_val["val_loss"]}
    reach_tokens = reach(model, max(cfg.train.lengths()))  # None: a state, no window bounds it
    if reach_tokens is not None:
        row["reach_tokens"] = reach_tokens
    if point["mqar"]:
        rc = spec.get("mqar_recall", {})
        report = mqar_recall(model, mqar_for(cfg.data, tokenizer, point["T"]),
                             distances=rc.get("distances", [0, 1, 2, 4, 8]), episodes=rc.get("episodes", 64),
                             seed=rc.get("seed", 1), device=device, reach=reach_tokens)
        row.update(pairs=cfg.data.mqar.pairs, trained_answer_accuracy=last_val.get("val_answer_accuracy"),
                   chance_accuracy=report["chance_accuracy"], chance_without_pairs=report["chance_without_pairs"],
                   mqar_recall=report["distances"])
        return row
    ctx = spec.get("context", {})
    context = loss_by_context(model, cfg.data, T=point["T"], rows=ctx.get("rows", 8),
                              windows=ctx.get("windows", 16), device=device, run_dir=run, reach=reach_tokens)
    row.update(val_loss_window=context["val_loss_window"], val_loss_carried=context.get("val_loss_carried"),
               context=context["buckets"])
    if point["recall"]:
        rc = spec.get("recall", {})
        report = recall(model, passkey_for(cfg.data, tokenizer), T=point["T"], distances=rc.get("distances", [1, 2, 4]),
                        episodes=rc.get("episodes", 32), lead=rc.get("lead", 32), seed=rc.get("seed", 1),
                        device=device, reach=reach_tokens)
        row["recall"] = report["distances"]
    return row


def table_rows(rows: list[dict]) -> list[dict]:
    """Flat rows for the CSV and the printed table. A stateless run has no carried reading (its
    cells empty) and its window cells past its reach say "out of reach"."""
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in ("context", "recall", "mqar_recall")}
        if "context" in r:
            carried = r["val_loss_carried"]
            f["carried_minus_window"] = None if carried is None else carried - r["val_loss_window"]
            last = r["context"][-1]
            f[f"late_carried_{last['context_from']}+"] = last.get("carried")
            f[f"late_window_{last['context_from']}+"] = cell(last["window"])
        for key, metric, prefix in (("mqar_recall", "accuracy", "mqar"), ("recall", "exact_match", "recall")):
            for d in r.get(key, []):
                f[f"{prefix}_d{d['distance_windows']}_carried"] = value(d.get("carried"), metric)
                f[f"{prefix}_d{d['distance_windows']}_window"] = cell(value(d["window"], metric))
        flat.append(f)
    return flat


def report(spec: dict, out_dir: str, device) -> int:
    todo = points(spec)
    rows, missing = [], []
    for point in todo:
        t0 = time.perf_counter()
        row = measure(point, spec, out_dir, device)
        if row is None:
            missing.append(point["run_name"])
            continue
        print(f"measured {point['run_name']} in {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append(row)
    stem = outputs(spec, out_dir)  # its folder is made by the first atomic write
    flat = table_rows(rows)
    write_table(flat, stem, with_json=False)  # the flat table; the JSON holds every measurement
    write_json_atomic(stem.with_suffix(".json"), {"spec": spec, "runs": rows})
    plots = []
    if rows:
        print(format_table(flat))
        for kind, draw, key in (("context", plot_context, "context"), ("recall", plot_recall, "recall"),
                                ("mqar", plot_mqar, "mqar_recall")):
            if any(key in r for r in rows):
                save_figure(draw(rows), f"{stem}_{kind}.png")
                plots.append(f"{stem}_{kind}.png")
    print(f"table: {stem}.csv, {stem}.json; plots: {', '.join(plots) or 'none'}")
    if missing:
        print(f"not finished ({len(missing)}): {', '.join(missing)}", file=sys.stderr)
    return 0 if not missing else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bdh-memory", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="memory experiment spec YAML, e.g. launch/memory_cpu.yaml")
    add_launch_args(p, run_mode="run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where collect measures the runs")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    spec = load_spec(args.spec)
    todo = points(spec)
    t0 = time.perf_counter()
    dispatch([job(pt["run_name"], pt["recipe"], pt["overrides"], args.out_dir) for pt in todo], args)
    if args.mode == "run":
        print(f"trained {len(todo)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    return report(spec, args.out_dir, args.device) if args.mode in ("run", "collect") else 0


if __name__ == "__main__":
    sys.exit(main())

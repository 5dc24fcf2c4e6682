"""Sweeps: a grid of recipe overrides, one run per point, and one table of the runs' final metrics.

    bdh-sweep recipes/shakespeare_cpu.yaml --name depth \\
        --grid model.n_layer=2,4 --grid train.seq_len=128,256 [--set train.max_steps=300] \\
        [--point 'train.seq_len=512 train.batch_size=4' ...] \\
        [--mode sequential|print|slurm|collect] [--launcher python|accelerate] [--config_file FILE]

Every point of the grid (the cartesian product of the --grid lists) is one run with its own
run_name, <name>-<key><value>-..., in --out_dir. The modes:

  sequential  run the points one after another here (python -m bdh_scale.train.cli, or under
              `accelerate launch` with --launcher accelerate), then collect;
  print       print one command per point, to run or dispatch elsewhere;
  slurm       submit one `sbatch launch/slurm.sh ...` job per point (--dry-run prints them);
  collect     only collect: after slurm jobs or print-mode runs have finished.

Each run gets train.resume=auto, so re-running a sweep after an interruption continues the
unfinished points; points whose run directory already holds final weights are skipped unless
--force. The table (<out_dir>/sweeps/<name>.csv and .json) has, per point, the overrides, the
status (done | incomplete | failed | missing), the last step and tokens, the last training loss
and the last validation row (val_loss, val_bpb) of its metrics.jsonl.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import re
import sys
from pathlib import Path

import yaml

from bdh_scale import rundir
from bdh_scale.config import MAX_RUN_NAME
from bdh_scale.errors import UsageError
from bdh_scale.experiments.dispatch import add_launch_args, dispatch, job
from bdh_scale.utils.atomic import write_json_atomic, write_text_atomic
from bdh_scale.utils.bounded import load_yaml
from bdh_scale.utils.quote import short


def split_values(raw: str) -> list[str]:
    """'2,4' -> ['2', '4']; commas inside brackets or quotes stay: '[[0,64]],[[0,128]]' is two values."""
    values, depth, quote, cur = [], 0, None, ""
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(cur)
            cur = ""
            continue
        cur += ch
    values.append(cur)
    return [v.strip() for v in values]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['model.n_layer=2,4', ...] -> [('model.n_layer', ['2', '4']), ...]; errors name the bad item."""
    grid = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key or not raw:
            raise SystemExit(f"error: --grid {item!r}: expected section.key=v1,v2,... e.g. model.n_layer=2,4")
        values = split_values(raw)
        if any(v == "" for v in values):
            raise SystemExit(f"error: --grid {item!r}: an empty value; separate values with single commas")
        grid.append((key, values))
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"error: --grid: a key appears twice ({', '.join(keys)})")
    return grid


def points(grid: list[tuple[str, list[str]]], paired: list[dict[str, str]] = ()) -> list[dict[str, str]]:
    """The cartesian product of the grid, in order (first key slowest); with `paired` points
    (--point), each of them crossed with the grid."""
    keys = [k for k, _ in grid]
    product = [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])]
    return [{**p, **g} for p in paired for g in product] if paired else product


def parse_point(item: str) -> dict[str, str]:
    """'train.seq_len=512 train.batch_size=4' -> one point whose keys change together."""
    point = {}
    for part in item.split():
        key, sep, value = part.partition("=")
        if not sep or "." not in key or not value:
            raise SystemExit(f"error: --point {item!r}: expected space-separated section.key=value pairs, "
                             "e.g. --point 'train.seq_len=512 train.batch_size=4'")
        point[key] = value
    return point


def run_name(name: str, point: dict[str, str]) -> str:
    """<name>-<leaf key><value>-...: readable, unique per point, safe as a directory name."""
    parts = [name]
    for key, value in point.items():
        parts.append(f"{key.split('.')[-1]}{value}")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("_")
    if len(name) > MAX_RUN_NAME:  # still unique: the cut is followed by a hash of the whole name
        name = f"{name[:MAX_RUN_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


# -- results ------------------------------------------------------------------------------------

def result_row(run_dir: Path, point: dict[str, str], failed: bool = False) -> dict:
    """One table row: the point's values, its status and its final metrics."""
    rows = rundir.read_metrics(run_dir)
    val = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    if (run_dir / rundir.FINAL).is_dir():
        status = "done"
    elif failed:
        status = "failed"
    elif rows:
        status = "incomplete"
    else:
        status = "missing"
    out = {"run_name": run_dir.name, **point, "status": status}
    out["step"] = rows[-1]["step"] if rows else None
    out["tokens"] = rows[-1].get("tokens") if rows else None
    out["loss"] = train_rows[-1]["loss"] if train_rows else None
    out["val_loss"] = val[-1]["val_loss"] if val else None
    out["val_bpb"] = val[-1].get("val_bpb") if val else None
    timed = [r for r in rows if "elapsed_s" in r]
    out["elapsed_s"] = round(timed[-1]["elapsed_s"], 1) if timed else None  # seconds of training, this machine
    return out


def write_table(rows: list[dict], stem: Path, with_json: bool = True) -> tuple[Path, Path]:
    """<stem>.csv, <stem>.md (the same table in Markdown, for a results page to show as the command
    wrote it) and (with_json) <stem>.json (a list of rows), each written whole and atomically."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_text_atomic(stem.with_suffix(".md"), markdown_table(rows) + "\n")
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, out.getvalue())
    if with_json:
        write_json_atomic(json_path, rows)
    return csv_path, json_path


def cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# -- the command line -----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="bdh-sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="YAML recipe every point starts from")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe key and its values; repeat for more keys (cartesian product)")
    p.add_argument("--point", action="append", default=[], metavar="'K1=V1 K2=V2'",
                   help="keys that change together (e.g. T and B at equal tokens); repeat for more points, each "
                        "crossed with --grid")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="an override applied to every point")
    p.add_argument("--name", default="sweep", help="sweep name: prefix of the run names and of the table")
    add_launch_args(p, run_mode="sequential")
    p.add_argument("--force", action="store_true", help="sequential: rerun points that already finished")
    args = p.parse_args(argv)
    if not args.grid and not args.point:
        p.error("give at least one --grid KEY=V1,V2 or --point 'K1=V1 K2=V2'")
    for item in args.fixed:
        if "=" not in item or "." not in item.partition("=")[0]:
            p.error(f"--set {item!r}: expected section.key=value")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    grid = points(parse_grid(args.grid), [parse_point(p) for p in args.point])
    for point in grid:  # values must be YAML, as on the train command line
        for key, value in point.items():
            try:
                load_yaml(value, f"--grid {key}")
            except yaml.YAMLError:
                raise SystemExit(f"error: --grid {key}: value {short(value)} is not valid YAML") from None
            except UsageError as e:
                raise SystemExit(f"error: {e}") from None
    names = [run_name(args.name, point) for point in grid]
    jobs = [job(name, args.recipe, [*args.fixed, *(f"{k}={v}" for k, v in point.items())], args.out_dir)
            for name, point in zip(names, grid)]
    failed = dispatch(jobs, args, force=args.force)
    if args.mode in ("print", "slurm"):
        return 0
    out_dir = Path(args.out_dir)
    rows = [result_row(out_dir / name, point, name in failed) for name, point in zip(names, grid)]
    csv_path, json_path = write_table(rows, out_dir / "sweeps" / args.name)
    print(format_table(rows))
    print(f"table: {csv_path} and {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

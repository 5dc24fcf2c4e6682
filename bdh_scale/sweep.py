"""Sweeps: a grid of recipe overrides, one run per point, and one table of the runs' final metrics.

    python launch/sweep.py recipes/shakespeare_cpu.yaml --name depth \\
        --grid model.n_layer=2,4 --grid train.seq_len=128,256 [--set train.max_steps=300] \\
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
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPT = ROOT / "launch" / "slurm.sh"
METRIC_COLUMNS = ["step", "tokens", "loss", "val_loss", "val_bpb"]


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


def points(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The cartesian product of the grid, in order (first key slowest)."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in grid])]


def run_name(name: str, point: dict[str, str]) -> str:
    """<name>-<leaf key><value>-...: readable, unique per point, safe as a directory name."""
    parts = [name]
    for key, value in point.items():
        parts.append(f"{key.split('.')[-1]}{value}")
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "-".join(parts)).strip("_")


def overrides_for(point: dict[str, str], fixed: list[str], name: str, out_dir: str) -> list[str]:
    return [*fixed, *(f"{k}={v}" for k, v in point.items()), f"train.run_name={name}",
            f"train.out_dir={out_dir}", "train.resume=auto"]


def train_command(recipe: str, overrides: list[str], launcher: str, config_file: str | None) -> list[str]:
    if launcher == "python":
        return [sys.executable, "-m", "bdh_scale.train.cli", recipe, *overrides]
    cmd = ["accelerate", "launch"]
    if config_file:
        cmd += ["--config_file", config_file]
    return cmd + ["-m", "bdh_scale.train.cli", recipe, *overrides]


def slurm_command(recipe: str, overrides: list[str], name: str, sbatch_args: list[str]) -> list[str]:
    return ["sbatch", f"--job-name={name}", *sbatch_args, str(SLURM_SCRIPT), recipe, *overrides]


# -- results ------------------------------------------------------------------------------------

def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return rows


def result_row(run_dir: Path, point: dict[str, str], failed: bool = False) -> dict:
    """One table row: the point's values, its status and its final metrics."""
    rows = read_metrics(run_dir)
    val = [r for r in rows if "val_loss" in r]
    train_rows = [r for r in rows if "loss" in r]
    if (run_dir / "final").is_dir():
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
    return out


def write_table(rows: list[dict], stem: Path) -> tuple[Path, Path]:
    """<stem>.csv and <stem>.json (a list of rows), written whole."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return csv_path, json_path


def format_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# -- the command line -----------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="YAML recipe every point starts from")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a recipe key and its values; repeat for more keys (cartesian product)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="fixed",
                   help="an override applied to every point")
    p.add_argument("--name", default="sweep", help="sweep name: prefix of the run names and of the table")
    p.add_argument("--out_dir", default="runs", help="where the runs go (train.out_dir)")
    p.add_argument("--mode", choices=["sequential", "print", "slurm", "collect"], default="sequential")
    p.add_argument("--launcher", choices=["python", "accelerate"], default="python",
                   help="sequential/print: run train directly or under `accelerate launch`")
    p.add_argument("--config_file", help="accelerate config for --launcher accelerate (see launch/)")
    p.add_argument("--sbatch", action="append", default=[], metavar="ARG",
                   help="extra sbatch argument for --mode slurm, e.g. --sbatch=--nodes=2")
    p.add_argument("--dry-run", action="store_true", help="slurm: print the sbatch commands, submit nothing")
    p.add_argument("--force", action="store_true", help="sequential: rerun points that already finished")
    args = p.parse_args(argv)
    if not args.grid:
        p.error("give at least one --grid KEY=V1,V2")
    for item in args.fixed:
        if "=" not in item or "." not in item.partition("=")[0]:
            p.error(f"--set {item!r}: expected section.key=value")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    grid = points(parse_grid(args.grid))
    for point in grid:  # values must be YAML, as on the train command line
        for key, value in point.items():
            try:
                yaml.safe_load(value)
            except yaml.YAMLError:
                raise SystemExit(f"error: --grid {key}: value {value!r} is not valid YAML") from None
    out_dir = Path(args.out_dir)
    failed = set()
    for i, point in enumerate(grid, 1):
        name = run_name(args.name, point)
        overrides = overrides_for(point, args.fixed, name, args.out_dir)
        if args.mode == "print":
            print(shlex.join(train_command(args.recipe, overrides, args.launcher, args.config_file)))
        elif args.mode == "slurm":
            cmd = slurm_command(args.recipe, overrides, name, args.sbatch)
            if args.dry_run:
                print(shlex.join(cmd))
            elif shutil.which("sbatch") is None:
                raise SystemExit("error: --mode slurm: sbatch not found on PATH; use --dry-run or --mode print")
            else:
                subprocess.run(cmd, check=True)
        elif args.mode == "sequential":
            if (out_dir / name / "final").is_dir() and not args.force:
                print(f"[{i}/{len(grid)}] {name}: finished already, skipped (--force reruns it)", flush=True)
                continue
            print(f"[{i}/{len(grid)}] {name}", flush=True)
            rc = subprocess.run(train_command(args.recipe, overrides, args.launcher, args.config_file)).returncode
            if rc != 0:
                print(f"[{i}/{len(grid)}] {name}: exit code {rc}", file=sys.stderr, flush=True)
                failed.add(name)
    if args.mode in ("print", "slurm"):
        return 0
    rows = [result_row(out_dir / run_name(args.name, p), p, run_name(args.name, p) in failed) for p in grid]
    csv_path, json_path = write_table(rows, out_dir / "sweeps" / args.name)
    print(format_table(rows))
    print(f"table: {csv_path} and {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

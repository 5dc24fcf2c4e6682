"""bdh-analyze: sparsity | state | selectivity | heads of a trained run, as JSON + PNG.

    bdh-analyze context runs/europarl_small --windows 32
    bdh-analyze recall runs/passkey --distances 1,2,4,8,16
    bdh-analyze sparsity runs/shakespeare_cpu --max-tokens 8192
    bdh-analyze selectivity runs/europarl --label en=en.txt --label fr=fr.txt
    bdh-analyze heads runs/shakespeare_cpu --threshold 0.01 --out /tmp/heads

context and recall also read a model without a state (the GPT baseline, the softmax control): its
window reading alone, and what lies past its window reported as out of reach (in_window.py).

Input problems (missing run, no text, a model the analysis does not apply to) are one
`error:` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys

import torch

from bdh_scale.analysis import context, heads, recall, selectivity, sparsity, state
from bdh_scale.analysis.figures import save
from bdh_scale.analysis.inputs import labelled_files, load_model, out_dir, run_config, val_tokens
from bdh_scale.analysis.trackers import log_to_run_trackers
from bdh_scale.data.synthetic.mqar import SOURCE as MQAR_SOURCE, mqar_for
from bdh_scale.data.synthetic.passkey import passkey_for
from bdh_scale.model.registry import reach


def common(p: argparse.ArgumentParser, max_tokens: int, text: bool = True) -> None:
    p.add_argument("run", help="run directory (runs/<name>, with final/ and tokenizer/)")
    p.add_argument("--out", default=None, help="output directory (default: <run>/analysis)")
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens analysed (default {max_tokens})")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if text:
        p.add_argument("--text", default=None,
                       help="text file to analyse instead of the run's validation split")


def windowed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bdh-analyze", description="Analyses of a trained BDH run; JSON + PNG out.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sparsity", help="fraction of active neurons per layer and head")
    common(p, 8192)
    windowed(p)
    p = sub.add_parser("state", help="norm of the synaptic state rho over a long carried stream")
    common(p, 32768)
    p.add_argument("--chunk", type=int, default=256, help="tokens per forward, state carried (default 256)")
    p = sub.add_parser("selectivity", help="neurons that separate labelled texts (default: English vs French)")
    common(p, 16384, text=False)  # --max-tokens counts per label here
    windowed(p)
    p.add_argument("--label", action="append", default=None, metavar="NAME=FILE",
                   help="a label and its text file; repeat (default: Europarl en and fr)")
    p.add_argument("--signal", choices=("y", "x", "xy"), default="y",
                   help="activation compared: y_sparse (default), x_sparse or their product")
    p.add_argument("--top-k", type=int, default=10, help="neurons listed per label, layer and head")
    p.add_argument("--min-active", type=float, default=0.005,
                   help="rank only neurons active on at least this fraction of tokens")
    p = sub.add_parser("context", help="held-out loss by tokens of context: carried state vs independent windows "
                                       "(a stateless model: its window alone)")
    p.add_argument("run", help="run directory (runs/<name>, with final/, tokenizer/ and config.yaml)")
    p.add_argument("--out", default=None, help="output directory (default: <run>/analysis)")
    p.add_argument("--seq-len", type=int, default=None, help="window T (default: the run's validation window)")
    p.add_argument("--rows", type=int, default=8, help="held-out rows read from their start (default 8)")
    p.add_argument("--windows", type=int, default=32, help="windows of T per row: the longest context (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("recall", help="recall against distance (passkey, or MQAR for an MQAR run): carried state vs "
                                      "windows (a stateless model: in its window, out of reach past it)")
    p.add_argument("run", help="run directory (runs/<name>, with final/, tokenizer/ and config.yaml)")
    p.add_argument("--out", default=None, help="output directory (default: <run>/analysis)")
    p.add_argument("--seq-len", type=int, default=None, help="window T (default: the run's training window)")
    p.add_argument("--distances", default=None,
                   help="distances between fact and question (MQAR: pairs and queries), in windows of T "
                        "(default 1,2,4,8,16,32,64; MQAR: 0,1,2,4,8,16,32)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per distance (default 32; MQAR: 128)")
    p.add_argument("--lead", type=int, default=32, help="filler tokens before the fact (default 32)")
    p.add_argument("--seed", type=int, default=1, help="seed of the episodes (not the training stream's)")
    p.add_argument("--no-trackers", action="store_true",
                   help="do not send the figure and numbers to the run's trackers (tracking.backend)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("heads", help="val loss change when each head is zeroed; prunable heads")
    common(p, 8192)
    windowed(p)
    p.add_argument("--threshold", type=float, default=0.01,
                   help="relative loss increase below which a head is prunable (default 0.01)")
    p.add_argument("--together", type=int, default=6,
                   help="also silence the k least important heads at once, k = 1..this (default 6; 0: skip)")
    return ap


def parse_distances(raw: str) -> list[int]:
    try:
        distances = [int(d) for d in raw.split(",")]
    except ValueError:
        raise ValueError(f"--distances {raw!r}: expected comma-separated whole numbers of windows, e.g. 1,2,4") from None
    if not distances or min(distances) < 0:
        raise ValueError(f"--distances {raw!r}: distances are windows of T, >= 0")
    return distances


def trained_reach(model, cfg) -> int | None:
    """The window a stateless model reads (None: it carries a state): the longest it trained on."""
    return reach(model, max(cfg.train.lengths()))


def run_title(run, cfg, report: dict, token_shift: bool = True) -> str:
    if not report["stateful"]:
        return f"{run}: model.arch={report['arch']}, no state: its window of {report['reach_tokens']} tokens only"
    shift = f"token_shift={cfg.model.token_shift}, " if token_shift else ""
    return f"{run}: trained with state={cfg.train.state}, {shift}forget_mode={cfg.model.forget_mode}"


def note_stateless(report: dict, far: list[str], what: str) -> None:
    """Say on stderr that a stateless model has one reading, and what it cannot reach."""
    if report["stateful"]:
        return
    beyond = f"; out of reach: {what}{'s' * (len(far) > 1)} {', '.join(far)}" if far else ""
    print(f"note: model.arch={report['arch']} carries no state: its window reading alone "
          f"({report['reach_tokens']} tokens), no carried reading{beyond}", file=sys.stderr)


def run(args) -> tuple:
    for name in ("max_tokens", "seq_len", "batch_size", "chunk", "top_k", "rows", "windows", "episodes"):
        if (getattr(args, name, 1) or 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    model, tokenizer = load_model(args.run, args.device)
    out = out_dir(args.run, args.out)
    if args.command == "context":
        cfg = run_config(args.run)
        T = args.seq_len or cfg.train.eval_seq_len or cfg.train.seq_len
        report = context.loss_by_context(model, cfg.data, T=T, rows=args.rows, windows=args.windows,
                                         device=args.device, run_dir=args.run, reach=trained_reach(model, cfg))
        report.update(run=str(args.run), trained_state=cfg.train.state)
        if report["windows_read"] < args.windows:
            print(f"note: the held-out set holds {report['windows_read']} windows of T = {T} per row "
                  f"({report['rows']} rows); read those, not --windows {args.windows}", file=sys.stderr)
        note_stateless(report, [f"{b['context_from']}-{b['context_to']}" for b in report["buckets"]
                                if b.get("out_of_reach")], "context bucket")
        return save(context.plot(report, run_title(args.run, cfg, report, token_shift=False)), report, out, "context")
    if args.command == "recall":
        cfg = run_config(args.run)
        T = args.seq_len or cfg.train.seq_len
        window = trained_reach(model, cfg)
        if cfg.data.source == MQAR_SOURCE:
            distances = parse_distances(args.distances or "0,1,2,4,8,16,32")
            report = recall.mqar_recall(model, mqar_for(cfg.data, tokenizer, T), distances=distances,
                                        episodes=args.episodes or 128, seed=args.seed, device=args.device, reach=window)
        else:
            distances = parse_distances(args.distances or "1,2,4,8,16,32,64")
            report = recall.recall(model, passkey_for(cfg.data, tokenizer), T=T, distances=distances,
                                   episodes=args.episodes or 32, lead=args.lead, seed=args.seed, device=args.device,
                                   reach=window)
        report.update(run=str(args.run), trained_state=cfg.train.state)
        note_stateless(report, [str(r["distance_windows"]) for r in report["distances"] if r.get("out_of_reach")],
                       "distance")
        paths = save(recall.plot(report, run_title(args.run, cfg, report)), report, out, "recall")
        if not args.no_trackers:
            logged = log_to_run_trackers(args.run, cfg, "recall", recall.recall_metrics(report), paths[1])
            if logged:
                print(f"logged to the run's trackers: {', '.join(logged)}")
        return paths
    if args.command == "selectivity":
        report = selectivity.neuron_selectivity(
            model, tokenizer, labelled_files(args.label), max_tokens=args.max_tokens, seq_len=args.seq_len,
            batch_size=args.batch_size, signal=args.signal, top_k=args.top_k, min_active=args.min_active)
        return save(selectivity.plot(report), report, out, "selectivity")
    tokens = val_tokens(args.run, tokenizer, args.max_tokens, args.text)
    if args.command == "sparsity":
        report = sparsity.activation_sparsity(model, tokens, args.seq_len, args.batch_size)
        return save(sparsity.plot(report), report, out, "sparsity")
    if args.command == "state":
        report = state.rho_norms(model, tokens, args.chunk)
        return save(state.plot(report), report, out, "state")
    report = heads.head_ablation(model, tokens, args.seq_len, args.batch_size, args.threshold, args.together)
    return save(heads.plot(report), report, out, "heads")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        paths = run(args)
    except (ValueError, FileNotFoundError) as e:  # AnalysisError, ConfigError and DataError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How fast the data pipeline serves tokens (no model involved), against what the trainer eats.

`bench_data`: stretch lanes of a bundled corpus (build = tokenizing at start-up, serve = cutting
windows). `bench_stream`: stream lanes over a generated local corpus of many parquet or jsonl
shards read through the same `datasets` streaming API as the Hub, with 1, 2, 4 tokenizer
workers, bytes and a BPE, then the same corpus ten times larger: start-up to the first batch and
peak memory must not grow with it. Each stream measurement runs in a fresh process (bench/cli.py
run_worker), so its peak RSS and its worker processes are its own.

serve tokens/s is what the lanes hand out when the consumer asks as fast as it can, over the
second half of the tokens drawn (the first half empties what was buffered during start-up): the
rate a trainer of any speed could be fed at. The ratio to the trainer's
tokens/s (seed config, measured in the same bdh-bench run) says how far ahead the data stays.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import psutil

from bdh_scale.data.build import build_data
from bdh_scale.data.config import DataConfig
from bdh_scale.data.sources.names import BUNDLED_DIR
from bdh_scale.utils.host_memory import proc_status_kib

STREAM_T, STREAM_B = 256, 8   # the seed config's window and lanes per process
# What one H100 would eat, estimated: a ~100M-parameter BDH at T = 1024, its model FLOPs per token
# (model/flops.py) against the datasheet's dense bf16 peak at an assumed 40% MFU.
H100 = {"peak_flops": 989e12, "mfu": 0.4, "T": 1024,
        "model": dict(n_layer=4, n_embd=512, n_head=8, mlp_internal_dim_multiplier=32)}


def bench_data(cfg: DataConfig, T: int, B: int, steps: int) -> dict:
    """Build `cfg` for one rank with B lanes, draw `steps` batches of T; report throughput."""
    t0 = time.perf_counter()
    data = build_data(cfg, batch_size=B, seq_len=T)
    build_s = time.perf_counter() - t0
    try:
        data.train.next_batch(T)  # warm-up: starts the prefetch thread
        t0 = time.perf_counter()
        for _ in range(steps):
            data.train.next_batch(T)
        serve_s = time.perf_counter() - t0
    finally:
        data.close()
    served = steps * B * T
    return {"source": data.source, "tokenizer": data.tokenizer.name,
            "vocab_size": data.tokenizer.vocab_size, "n_tokens": data.n_tokens,
            "T": T, "B": B, "steps": steps, "prefetch": cfg.prefetch,
            "build_s": round(build_s, 4),
            "build_tokens_per_s": data.n_tokens / build_s if build_s > 0 else float("inf"),
            "serve_s": round(serve_s, 4),
            "serve_tokens_per_s": served / serve_s if serve_s > 0 else float("inf"),
            "bytes_per_token": data.bytes_per_token,
            "config": dataclasses.asdict(cfg)}


def bundled_documents() -> list[str]:
    """Documents cut from the bundled corpora: Shakespeare's speeches and runs of Europarl lines."""
    text = (BUNDLED_DIR / "tinyshakespeare" / "input.txt").read_text()
    docs = [p for p in text.split("\n\n") if p.strip()]
    lines = (BUNDLED_DIR / "europarl" / "fr-en" / "en.txt").read_text().splitlines()
    docs += ["\n".join(lines[i:i + 12]) for i in range(0, len(lines), 12)]
    return docs


def make_corpus(root: Path, mbytes: float, shards: int, kind: str = "parquet") -> dict:
    """`shards` files of documents (column "text"), about `mbytes` MB in all, each document
    numbered so that no two are the same."""
    import pyarrow as pa
    import pyarrow.json  # noqa: F401  (pyarrow's writers are loaded on use)
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    docs = bundled_documents()
    per_shard, n, i = mbytes * 1e6 / shards, 0, 0
    for s in range(shards):
        rows, size = [], 0
        while size < per_shard:
            doc = f"[{i}] {docs[i % len(docs)]}"
            rows.append(doc)
            size += len(doc)
            i += 1
        n += size
        if kind == "parquet":
            pq.write_table(pa.table({"text": rows}), root / f"part-{s:05d}.parquet", row_group_size=1024)
        else:
            with open(root / f"part-{s:05d}.jsonl", "w") as f:
                f.writelines(json.dumps({"text": r}) + "\n" for r in rows)
    return {"path": str(root), "kind": kind, "shards": shards, "documents": i, "mbytes": n / 1e6}


class PeakMemory:
    """Peak resident memory of this process and of its largest worker, sampled every 50 ms.

    Not getrusage: ru_maxrss survives fork and exec, so a fresh worker process would report the
    peak of whatever process started it. /proc's VmHWM is this process's own high-water mark
    (reset by exec); workers are sampled while they live (their RSS counts pages shared with us)."""

    def __init__(self, every_s: float = 0.05):
        self.me, self.worker_bytes, self.every_s = psutil.Process(), 0, every_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.done.wait(self.every_s):
            for child in self.me.children(recursive=True):
                try:
                    self.worker_bytes = max(self.worker_bytes, child.memory_info().rss)
                except psutil.Error:  # exited between the listing and the read
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def own_peak_bytes(self) -> int:
        try:
            return proc_status_kib("VmHWM") * 1024
        except (OSError, StopIteration):
            return self.me.memory_info().rss  # no /proc (macOS): the current figure, a lower bound


def measure_stream(case: dict) -> dict:
    """One stream-lanes measurement in this (fresh) process: start-up to the first batch, then
    tokens/s served for case["tokens"] tokens, and the peak RSS of this process and its largest worker."""
    cfg = DataConfig(source=case["source"], lanes="stream", tokenizer=case["tokenizer"], workers=case["workers"],
                     val_tokens=case["val_tokens"])
    T, B = case.get("T", STREAM_T), case.get("B", STREAM_B)
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        data = build_data(cfg, batch_size=B, seq_len=T)
        try:
            data.train.next_batch(T)
            startup = time.perf_counter() - t0
            served, half = 0, None
            while served < case["tokens"]:
                served += data.train.next_batch(T).x.numel()
                if half is None and served >= case["tokens"] // 2:  # the buffer filled at start-up is gone
                    half, t1 = served, time.perf_counter()
            serve_s = time.perf_counter() - t1
        finally:
            data.close()
    return {"startup_s": startup, "serve_tokens_per_s": (served - half) / serve_s, "tokens": served,
            "bytes_per_token": data.bytes_per_token, "peak_rss_mb": memory.own_peak_bytes() / 1e6,
            "peak_worker_rss_mb": memory.worker_bytes / 1e6}


def bench_stream(run_worker, root: Path, trainer_tokens_per_s: float | None, *, mbytes: float = 40,
                 shards: int = 32, workers=(1, 2, 4), tokens: int = 8_000_000, bpe_vocab: int = 8192,
                 say=print) -> dict:
    """Stream lanes over generated corpora under `root`: bytes and BPE with each worker count
    (parquet and jsonl), then start-up and memory on a corpus ten times larger."""
    from bdh_scale.data.tokenize.bpe import train_bpe

    corpora = {kind: make_corpus(root / kind, mbytes, shards, kind) for kind in ("parquet", "jsonl")}
    corpora["parquet_x10"] = make_corpus(root / "parquet_x10", 10 * mbytes, 10 * shards, "parquet")
    bpe = train_bpe(iter(bundled_documents()[:5000]), bpe_vocab)
    bpe.save(root / "bpe")
    tokenizers = {"bytes": "bytes", "bpe": str(root / "bpe" / "tokenizer.json")}
    val_tokens = int(min(DataConfig.val_tokens, mbytes * 1e6 / 20))  # the default, or 5% of a small corpus
    say(f"\nstream lanes (B={STREAM_B}, T={STREAM_T}) over {shards} local shards of {mbytes:g} MB in all, "
        f"read through datasets streaming; trainer at the seed config: "
        + (f"{trainer_tokens_per_s:.0f} tokens/s" if trainer_tokens_per_s else "not measured"))
    say(f"{'corpus':>12} {'tokenizer':>9} {'workers':>7} {'tok/s':>10} {'x trainer':>9} {'start s':>7} "
        f"{'RSS MB':>7} {'worker MB':>9}")
    rows = []
    plan = [(kind, tok, w) for kind in ("parquet", "jsonl") for tok in tokenizers for w in workers]
    plan += [(kind, "bytes", 1) for kind in ("parquet", "parquet_x10")] * 2  # start-up: two runs each
    for kind, tok, w in plan:
        case = {"kind": "stream", "source": corpora[kind]["path"], "tokenizer": tokenizers[tok], "workers": w,
                "tokens": tokens if tok == "bytes" else tokens // 4,  # BPE is the slower: fewer tokens, same time
                "val_tokens": val_tokens}
        r = {"corpus": kind, "tokenizer": tok, "workers": w, **run_worker(case)}
        if "error" not in r and trainer_tokens_per_s:
            r["x_trainer"] = r["serve_tokens_per_s"] / trainer_tokens_per_s
        rows.append(r)
        if "error" in r:
            say(f"{kind:>12} {tok:>9} {w:>7}  error: {r['error']}")
            continue
        say(f"{kind:>12} {tok:>9} {w:>7} {r['serve_tokens_per_s']:>10.0f} {r.get('x_trainer', float('nan')):>9.0f} "
            f"{r['startup_s']:>7.2f} {r['peak_rss_mb']:>7.0f} {r['peak_worker_rss_mb']:>9.0f}", flush=True)
    summary = summarize_stream(rows)
    need = h100_need({tok: summary.get(f"{tok} tokens/s with 1 worker") for tok in tokenizers},
                     {"bytes": 256, "bpe": bpe.vocab_size})
    say(f"an H100 at {H100['mfu']:.0%} MFU on a {need['params'] / 1e6:.0f}M-parameter BDH (T={H100['T']}) "
        "eats " + ", ".join(f"{tok}: {n['tokens_per_s']:,.0f} tokens/s = {n['workers']:.2f} workers of this machine"
                            for tok, n in need["per_tokenizer"].items()))
    return {"corpora": corpora, "trainer_tokens_per_s": trainer_tokens_per_s, "rows": rows,
            "summary": summary, "h100_estimate": need}


def h100_need(per_worker: dict, vocab: dict) -> dict:
    """Tokens/s an H100 trains at on the ~100M BDH (estimated from FLOPs, assumptions in H100),
    and how many tokenizer workers of the measured rate that takes."""
    import torch

    from bdh_scale.model import BDH, ModelConfig
    from bdh_scale.model.flops import flops_per_token

    out = {"assumptions": H100, "per_tokenizer": {}}
    for tok, rate in per_worker.items():
        cfg = ModelConfig(**H100["model"], vocab_size=vocab[tok])
        with torch.device("meta"):
            out["params"] = BDH(cfg).num_params()
        need = H100["peak_flops"] * H100["mfu"] / flops_per_token(cfg, H100["T"])
        out["per_tokenizer"][tok] = {"tokens_per_s": need, "workers": need / rate if rate else float("nan")}
    return out


def summarize_stream(rows: list[dict]) -> dict:
    """Per-worker rates, the best ratio to the trainer, and the 10x corpus against the 1x one."""
    ok = [r for r in rows if "error" not in r]
    out = {}
    for tok in ("bytes", "bpe"):
        one = [r["serve_tokens_per_s"] for r in ok if r["tokenizer"] == tok and r["workers"] == 1
               and r["corpus"] in ("parquet", "jsonl")]
        if one:
            out[f"{tok} tokens/s with 1 worker"] = max(one)
        best = [r.get("x_trainer") for r in ok if r["tokenizer"] == tok and "x_trainer" in r]
        if best:
            out[f"{tok} best x trainer"] = max(best)

    def least(corpus, key):
        vals = [r[key] for r in ok if r["corpus"] == corpus and r["tokenizer"] == "bytes" and r["workers"] == 1]
        return min(vals) if vals else None

    for key, name in (("startup_s", "start-up to first batch"), ("peak_rss_mb", "peak RSS")):
        small, big = least("parquet", key), least("parquet_x10", key)
        if small and big:
            out[f"10x corpus / 1x corpus: {name}"] = big / small
    return out

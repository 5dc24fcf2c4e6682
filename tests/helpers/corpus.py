"""Generated corpora of several shards, read through `datasets` streaming, and the documents a
lane was dealt, read back from its batches.

Every document begins with its own tag "<doc N>" and has a length that varies with N, so a
lane's byte stream can be cut back into documents and each one named.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

TAG = re.compile(r"<doc (\d+)>")


def doc_text(i: int) -> str:
    return f"<doc {i}>" + "".join(f" w{(i * 7 + k) % 13}" for k in range(3 + (i * 5) % 40))


def write_corpus(root: Path, shards: int = 4, per_shard: int = 60, kind: str = "jsonl", start: int = 0) -> list[str]:
    """`shards` files of `per_shard` documents each (jsonl or parquet, column "text"); returns
    every document's text in corpus order."""
    root.mkdir(parents=True, exist_ok=True)
    texts = []
    for s in range(shards):
        docs = [doc_text(start + s * per_shard + i) for i in range(per_shard)]
        texts += docs
        if kind == "jsonl":
            (root / f"part-{s:03d}.jsonl").write_text("".join(json.dumps({"id": i, "text": d}) + "\n"
                                                              for i, d in enumerate(docs)))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), root / f"part-{s:03d}.parquet",
                           row_group_size=16)
    return texts


def lane_streams(lanes, batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every lane's tokens dealt so far (the inputs of `batches`, then what it holds for the next
    window) and their document flags."""
    state = lanes.state_dict()
    out = []
    for i in range(lanes.batch_size):
        x = torch.cat([b.x[i] for b in batches] + [state["pending"][i]]).numpy()
        s = torch.cat([b.doc_start[i] for b in batches] + [state["pending_starts"][i]]).numpy()
        out.append((x, s))
    return out


def documents(tokens: np.ndarray, starts: np.ndarray, decode) -> list[str]:
    """The flagged documents of one lane stream, decoded (the first may be a tail, the last cut)."""
    edges = list(np.flatnonzero(starts)) + [len(tokens)]
    return [decode(tokens[a:b].tolist()) for a, b in zip(edges, edges[1:])]


def doc_ids(texts: list[str]) -> list[int]:
    return [int(TAG.match(t).group(1)) for t in texts]


def write_short_docs(root: Path, files: int, per_file: int) -> None:
    """`files` JSON Lines files of `per_file` very short documents ("d17"): many documents, and
    so many reads, for few tokens, which keeps a stream's reader well behind the end of its files."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(files):
        (root / f"part-{s:03d}.jsonl").write_text("".join(json.dumps({"text": f"d{s * per_file + i}"}) + "\n"
                                                          for i in range(per_file)))


def replace_line(path: Path, line: int, text: str | bytes) -> None:
    """Line `line` (1-based) of a file replaced by `text` (bytes as they are, e.g. invalid UTF-8)."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = text if isinstance(text, bytes) else text.encode()
    path.write_bytes(b"\n".join(lines))

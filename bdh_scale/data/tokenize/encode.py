"""Tokenizing rows as documents, and naming a tokenizer by its content.

Kept free of torch and datasets: the tokenizer worker processes (workers.py) import only this,
numpy and the tokenizer, so they start in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from bdh_scale.data.tokenize.tokenizer import TOKENIZER_FILE, token_dtype


def encode_documents(tokenizer, rows: list) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths): the rows' tokens concatenated, and each row's token count.

    One row at a time through the tokenizer's encode_rows, which gives each row's length: a BPE
    encodes rows independently anyway, so the concatenation is what encode_rows(rows) returns.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    parts = [tokenizer.encode_rows([r]).astype(dtype, copy=False) for r in rows]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return ids, lengths


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer as saved (tokenizer.json): equal exactly for the same tokenizer,
    whatever file or library version it was loaded from (saving normalizes the JSON)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return hashlib.sha256((Path(tmp) / TOKENIZER_FILE).read_bytes()).hexdigest()

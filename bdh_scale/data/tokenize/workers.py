"""Tokenizer processes: batches of rows in, their tokens out, in the order they went in.

    with TokenizerPool(tokenizer, workers=4) as pool:
        for ids, lengths in pool.imap((rows, True) for rows in batches):   # ordered
            ...

`imap` keeps at most `ahead` batches in flight, so memory is bounded whatever the corpus size,
and the output is the same as tokenizing in one process (encode.py, one row at a time): the
worker count changes the speed, never the tokens. workers=0 tokenizes in the calling thread.

Processes rather than threads: the byte tokenizer is Python, and reading rows out of Arrow holds
the GIL, so threads would not add up. On Linux they are forked, all at once, when the pool is
made: in the caller's thread, before it starts any thread of its own (build_data runs before
the model exists), so nothing is re-imported and start-up takes milliseconds; a fork server or
spawn would re-run the trainer's main module, torch included, in every worker. Elsewhere (macOS
cannot fork safely) they are spawned. Each worker tokenizes on one core
(TOKENIZERS_PARALLELISM=false: K workers are K cores) and exits when its parent is gone, so a
SIGKILLed trainer leaves no process behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from bdh_scale.data.tokenize.encode import encode_documents

_tokenizer = None  # set in each worker process by _init


def encode_unit(tokenizer, rows: list, documents: bool) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) of a batch of rows: one length per row when the rows are documents, else
    one length for the whole batch (a piece of running text)."""
    if documents:
        return encode_documents(tokenizer, rows)
    from bdh_scale.data.tokenize.tokenizer import token_dtype

    ids = tokenizer.encode_rows(rows).astype(token_dtype(tokenizer.vocab_size), copy=False)
    return ids, np.array([len(ids)], dtype=np.int64)


def _init(tokenizer) -> None:
    global _tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _tokenizer = tokenizer
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:  # re-parented once the parent (trainer or fork server) is gone
        time.sleep(1.0)
    os._exit(0)


def _encode(rows: list, documents: bool):
    return encode_unit(_tokenizer, rows, documents)


def _ready() -> bool:
    return True


def _context():
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


class TokenizerPool:
    """`workers` tokenizer processes (0: none, tokenize in the caller's thread)."""

    def __init__(self, tokenizer, workers: int, ahead: int | None = None):
        self.tokenizer, self.workers = tokenizer, workers
        self.ahead = ahead or max(2, 2 * workers)
        self._pool = None
        if workers > 0:
            self._pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_init,
                                             initargs=(tokenizer,))
            self._pool.submit(_ready).result()  # forks every worker now, from this thread

    def submit(self, rows: list, documents: bool) -> Future:
        if self._pool is not None:
            return self._pool.submit(_encode, rows, documents)
        done = Future()
        done.set_result(encode_unit(self.tokenizer, rows, documents))
        return done

    def imap(self, units: Iterable[tuple[list, bool]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, lengths) of every (rows, documents) unit, in order, `ahead` in flight at most."""
        pending: deque[Future] = deque()
        for rows, documents in units:
            pending.append(self.submit(rows, documents))
            if len(pending) >= self.ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # idle workers exit at once
            self._pool = None

    def __enter__(self) -> "TokenizerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

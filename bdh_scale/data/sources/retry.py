"""Network faults of streamed data: what is retried, for how long, and by whom.

Two layers, both set from the recipe (data.read_retries, data.retry_wait_s):

  datasets, inside a file: a read or an open of a remote file (fsspec through datasets' xopen, in
  its builders and in records.py) that loses its connection is tried again by `datasets` itself,
  datasets.config.STREAMING_READ_MAX_RETRIES / STREAMING_OPEN_MAX_RETRIES times,
  STREAMING_READ_RETRY_INTERVAL / STREAMING_OPEN_RETRY_INTERVAL seconds apart: `use_recipe_retries`
  sets those four to data.read_retries and data.retry_wait_s.
  the stream, between reads: what datasets does not retry (finding the next file: an HTTP file
  system that cannot list or stat a file says so in other errors; opening a Hub dataset again)
  and what it gave up on. The stream is opened again at the start of the read that failed
  (docstream.py: the dataset's own state_dict), after a wait that doubles from data.retry_wait_s
  up to MAX_WAIT_S, at most data.read_retries times in a row; a read that succeeds starts the
  count again. The reads are the same whether or not they were retried, so are the tokens.

When the retries run out the stream raises a DataFailedMidRun naming the file (or Hub shard) and the
error; the loop saves a checkpoint at the last completed step and stops (exit code 1).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Callable

MAX_WAIT_S = 60.0


def use_recipe_retries(read_retries: int, retry_wait_s: float) -> None:
    """datasets' own retries of a dropped read or open (process-wide settings of datasets.config)."""
    import datasets.config

    datasets.config.STREAMING_READ_MAX_RETRIES = datasets.config.STREAMING_OPEN_MAX_RETRIES = max(1, read_retries)
    datasets.config.STREAMING_READ_RETRY_INTERVAL = datasets.config.STREAMING_OPEN_RETRY_INTERVAL = retry_wait_s


def is_network_error(e: BaseException) -> bool:
    """A connection that failed or dropped, a timeout, or a host answering 5xx / 429: worth retrying.
    fsspec's HTTP file system says "not found" for a file whose size it could not ask (its
    FileNotFoundError then comes from the network error)."""
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        return is_network_error(e.__cause__)
    if isinstance(e, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    kinds = []
    if "aiohttp" in sys.modules:
        from aiohttp import ClientError, ClientResponseError

        if isinstance(e, ClientResponseError):
            return e.status >= 500 or e.status == 429
        kinds.append(ClientError)
    if "httpx" in sys.modules:
        import httpx

        kinds.append(httpx.TransportError)
    if "requests" in sys.modules:
        import requests

        kinds.append(requests.exceptions.ConnectionError)
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        status = getattr(e.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    return isinstance(e, tuple(kinds))


def describe_error(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Backoff:
    """Waits that double from `first_s` up to MAX_WAIT_S, `retries` of them in a row at most."""

    def __init__(self, retries: int, first_s: float, say: Callable[[str], None]):
        self.retries, self.first_s, self.say = retries, first_s, say
        self.failures = 0
        self.waited = 0.0

    def succeeded(self) -> None:
        self.failures, self.waited = 0, 0.0

    def wait(self, error: BaseException, stopping: Callable[[], bool]) -> bool:
        """After `error`: sleep and return True to try again, False when the retries are spent (or
        the reader is being stopped)."""
        if self.failures >= self.retries or stopping():
            return False
        wait = min(self.first_s * 2 ** self.failures, MAX_WAIT_S)
        self.failures += 1
        self.say(f"data: {describe_error(error)}; opening the stream again in {wait:.1f} s "
                 f"(retry {self.failures} of {self.retries})")
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if stopping():
                return False
            time.sleep(max(0.0, min(0.05, end - time.monotonic())))
        self.waited += wait
        return True

"""A daemon thread that fills a bounded queue ahead of its consumer, and can be stopped at once.

Both background producers of the data side use it: prefetched stretch-lane batches (prefetch.py)
and the tokenized reads of stream lanes (streamlanes.py). An exception in the producer is handed
to the consumer, raised by its next get().
"""

from __future__ import annotations

import queue
import threading
from typing import Callable


class Feeder:
    """Runs work(put, stopping) in a daemon thread; put(item) blocks while the queue is full and
    returns False once stop() was called (the producer should then return)."""

    def __init__(self, work: Callable, depth: int, name: str):
        self._queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        # the thread holds the Feeder and `work` only: an owner dropped without close() is still
        # collected, and its __del__ can stop the thread
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable) -> None:
        try:
            work(self.put, self._stop.is_set)
        except BaseException as e:  # hand the error to the consumer
            self.put(e)

    def put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        """The next item; the producer's exception, if that is what comes next."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """Stop the producer and wait for its thread; what it had queued is dropped."""
        self._stop.set()
        self._thread.join()

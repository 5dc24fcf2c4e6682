"""Files served over HTTP on 127.0.0.1, as a data host serves them: byte ranges (what `datasets`
streaming asks for through fsspec), a directory listing (what a URL glob is resolved from), and a
server that can be stopped and started again on the same port while a run reads from it.

    server = FileServer(root)           # serving root/ at server.url
    server.stop(); server.start()       # the port refuses connections in between
    server.go_down_at("part-016", for_s=1.5)   # the first request for it drops, and the host is
                                               # gone for 1.5 s (None: for good)
"""
from __future__ import annotations

import os
import re
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler (listing, HEAD, GET) plus single byte ranges (206 Partial Content)."""

    def log_message(self, *args) -> None:  # quiet: the tests read the trainer's output, not the server's
        pass

    def send_head(self):
        if self.server.owner.drop(self.path):
            self.close_connection = True  # no answer at all: the client sees the connection drop
            return None
        path = self.translate_path(self.path)
        wanted = RANGE.match(self.headers.get("Range", "").strip())
        if os.path.isdir(path) or not wanted:
            return super().send_head()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        first, last = wanted.groups()
        start = int(first) if first else max(0, size - int(last or 0))
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            block = source.read(min(remaining, 1 << 16))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)


class FileServer:
    """root/ served at http://127.0.0.1:<port>/ from a thread of this process."""

    def __init__(self, root: Path, port: int = 0):
        self.root = Path(root)
        self._server = None
        self.port = port
        self._trigger: tuple[str, float | None] | None = None
        self.went_down: float | None = None  # time.monotonic() of the outage
        self.came_back: float | None = None
        self._lock = threading.Lock()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        handler = partial(RangeHandler, directory=str(self.root))
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._server.owner = self
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="file-server", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the port: new connections are refused until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def go_down_at(self, name: str, for_s: float | None) -> None:
        """At the first request whose path holds `name`: drop it, stop, and start again `for_s`
        seconds later (None: stay down)."""
        self._trigger = (name, for_s)

    def drop(self, path: str) -> bool:
        """Called by the handler for every request: True when this one is the trigger."""
        with self._lock:
            if self._trigger is None or self._trigger[0] not in path:
                return False
            _, for_s = self._trigger
            self._trigger = None
        self.went_down = time.monotonic()
        threading.Thread(target=self._outage, args=(for_s,), daemon=True).start()
        return True

    def _outage(self, for_s: float | None) -> None:
        self.stop()
        if for_s is not None:
            time.sleep(for_s)
            self.start()
            self.came_back = time.monotonic()

    def __enter__(self) -> "FileServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

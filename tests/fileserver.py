"""A local HTTP file server for tests: serves a folder on 127.0.0.1, with Range support and
injectable faults (cut connections, error statuses, HTML pages, stalls, ignored Range,
redirects, a wrong first byte, no Content-Length, a hang mid-body).

In-process:

    with serve(root, faults=Faults(statuses=[500])) as base_url:
        ...  # base_url is "http://127.0.0.1:PORT"; files are at base_url + "/relative/path"

As a separate process (for subprocess tests): `python tests/fileserver.py ROOT` prints the
port on its first stdout line, then serves until SIGTERM or SIGINT.
"""

import contextlib
import re
import signal
import sys
import threading
import urllib.parse
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><body><h1>Oops</h1><p>Something went wrong.</p></body></html>\n"
)


class Request(NamedTuple):
    """One request the server received."""

    method: str
    path: str  # URL path, without the query string
    range: str | None  # the Range header, if any
    headers: dict[str, str]


@dataclass
class Faults:
    """Misbehaviour to inject, and the log of requests received.

    Faults apply to requests whose path is in `paths` (every path when None). Counted faults
    are used up request by request: first `statuses` (such a request gets nothing else), then
    `stalls` and `cuts` together.
    Pass `Faults()` just to record requests.
    """

    paths: Collection[str] | None = None
    statuses: list[int] = field(default_factory=list)  # answer these codes first, one a request
    stall: float = 0.0  # seconds to wait before answering (or until the server stops)...
    stalls: int = 0  # ...for this many requests
    cut_after: int | None = None  # send only this many body bytes, then drop the connection...
    cuts: int = 1  # ...for this many requests
    html: bool = False  # always answer 200 with an HTML page instead of the file
    ignore_range: bool = False  # always answer 200 with the whole file
    redirect: str | None = None  # answer 302 to this base URL + the path asked for
    resume_from: int | None = None  # answer a Range request from this byte, not the one asked
    no_length: bool = False  # send no Content-Length: the body ends where the connection does
    hang_after: int | None = None  # send this many body bytes, then wait for the server's end
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)

    def _take(self, request: Request) -> tuple[int | None, float, int | None]:
        """Record `request`; return the (status, stall, cut) faults to apply to it."""
        with self._lock:
            self.requests.append(request)
            if not self._applies(request.path):
                return None, 0.0, None
            if self.statuses:
                return self.statuses.pop(0), 0.0, None
            stall = 0.0
            if self.stalls > 0:
                self.stalls -= 1
                stall = self.stall
            cut = None
            if self.cut_after is not None and self.cuts > 0:
                self.cuts -= 1
                cut = self.cut_after
            return None, stall, cut

    def _applies(self, path: str) -> bool:
        return self.paths is None or path in self.paths


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        request = Request("GET", path, self.headers.get("Range"), dict(self.headers.items()))
        faults = self.server.faults
        status, stall, cut = faults._take(request) if faults else (None, 0.0, None)
        if stall and faults:
            faults._stopped.wait(stall)  # a stalled answer ends when the server stops
        if status is not None:
            self._send(status, f"fault injected: {status}\n".encode())
            return
        if faults and faults.redirect and faults._applies(path):
            self._send(302, b"", extra={"Location": faults.redirect.rstrip("/") + path})
            return
        if faults and faults.html and faults._applies(path):
            self._send(200, HTML_PAGE, content_type="text/html")
            return
        file = self._resolve(path)
        if file is None:
            self._send(404, b"not found\n")
            return
        data = file.read_bytes()
        start = self._range_start(request.range)
        if faults and faults.ignore_range and faults._applies(path):
            start = None
        applies = faults is not None and faults._applies(path)
        if applies and faults.resume_from is not None and start is not None:
            start = faults.resume_from
        if start is not None and start >= len(data):
            self._send(416, b"", extra={"Content-Range": f"bytes */{len(data)}"})
        elif start is not None:
            content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            extra = {"Content-Range": content_range}
            self._send(206, body, cut=cut, extra=extra, faults=faults if applies else None)
        else:
            self._send(200, data, cut=cut, faults=faults if applies else None)

    def _resolve(self, path: str) -> Path | None:
        root = self.server.root
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return None
        return file

    @staticmethod
    def _range_start(header: str | None) -> int | None:
        """First byte asked for by a `bytes=N-` or `bytes=N-M` Range header (the end is
        ignored: clients here always ask for the rest of the file)."""
        match = re.fullmatch(r"bytes=(\d+)-\d*", (header or "").strip())
        return int(match.group(1)) if match else None

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        cut: int | None = None,
        extra: dict[str, str] | None = None,
        faults: Faults | None = None,  # the file's: its no_length and hang_after
    ) -> None:
        no_length = faults is not None and faults.no_length
        hang = faults.hang_after if faults is not None else None
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if not no_length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if cut is not None or no_length:
            self.send_header("Connection", "close")
        self.end_headers()
        if hang is not None:
            self.wfile.write(body[:hang])
            self.wfile.flush()
            faults._stopped.wait()  # neither more bytes nor the end: the client's timeout
            return
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None or no_length:
            self.close_connection = True  # the client sees the body end (short, for a cut)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean; Faults.requests is the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not hold up shutdown

    def __init__(self, root: Path, faults: Faults | None) -> None:
        self.root = root.resolve()
        self.faults = faults
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients that hang up are fine
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(root: Path, *, faults: Faults | None = None) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 at a free port; yield the base URL, stop on exit."""
    server = _Server(Path(root), faults)
    # A short poll interval: shutdown() waits for the serving loop to notice it.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="fileserver", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if faults:
            faults._stopped.set()
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python tests/fileserver.py ROOT")
    # Turn SIGTERM into a normal exit so that the server is shut down cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with serve(Path(argv[0])) as url, contextlib.suppress(KeyboardInterrupt):
        print(url.rsplit(":", 1)[1], flush=True)
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])

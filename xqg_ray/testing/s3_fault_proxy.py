"""A fault-injecting HTTP proxy in front of an S3 endpoint on loopback (tests and fault scripts).

Point a client's `AWS_ENDPOINT_URL` at `proxy.endpoint` and every request goes through it to the
real server (the moto server of the tests). A seeded plan decides, request by request, whether it
passes untouched or gets one of these faults:

- `error_500` / `error_503`: the proxy answers itself with S3's own XML error (`InternalError`,
  `SlowDown`); the request never reaches the server;
- `reset`: the connection is reset (TCP RST) before the request is forwarded;
- `drop_response`: the request is forwarded (the server acts on it), then the connection is reset
  instead of answering, so the client does not know it succeeded;
- `delay`: the answer is held back `delay_s` seconds;
- `cut_upload`: an upload (a PUT with a body: PutObject or UploadPart) is cut halfway: half of its
  body is forwarded to the server, then both connections are reset.

`FaultPlan.rate` is the share of requests drawn for one of the first five (by `weights`);
`cut_uploads` uploads are cut (after `cut_after` others passed, among those whose path contains
`cut_match`). `force(kind, count, match)` queues faults for the next matching requests, before the
draw, so a test can fault exactly what it means to.

The proxy counts what it saw (`stats()`): requests, faults per kind, and what the client did about
the failing ones (everything but `delay`): a request is the same one again when its method, target
and Range header match; `retried` counts such repeats of a failed request, `recovered` the failed
requests that later got through, and `failed` those whose last attempt failed (the client gave up).

    with S3FaultProxy("http://127.0.0.1:5000", FaultPlan(rate=0.1, seed=1)) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        ...
        print(proxy.stats())

Plain asyncio on its own thread (like moto's `ThreadedMotoServer`), HTTP/1.1 with keep-alive;
the proxy buffers whole bodies, so it suits test-sized objects, not a benchmark of bandwidth.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DRAWN_KINDS = ("error_500", "error_503", "reset", "drop_response", "delay")
KINDS = (*DRAWN_KINDS, "cut_upload")
FAILING_KINDS = tuple(kind for kind in KINDS if kind != "delay")
DEFAULT_WEIGHTS = {
    "error_500": 0.2,
    "error_503": 0.3,
    "reset": 0.2,
    "drop_response": 0.1,
    "delay": 0.2,
}
S3_ERRORS = {
    "error_500": (500, "Internal Server Error", "InternalError", "Internal error."),
    "error_503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}  # fmt: skip
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "expect", "te", "upgrade"}


@dataclass
class FaultPlan:
    """What the proxy does to the requests it sees; the same seed and arrival order give the same
    faults."""

    rate: float = 0.0  # share of requests drawn for a fault among `weights`' kinds
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    delay_s: float = 0.5  # how long a `delay` holds the answer back
    cut_uploads: int = 0  # uploads to cut halfway
    cut_after: int = 0  # matching uploads let through before the first cut
    cut_match: str = ""  # only uploads whose target contains this are cut
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {self.rate}")
        unknown = set(self.weights) - set(DRAWN_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}: use {list(DRAWN_KINDS)}")
        if self.rate and not any(w > 0 for w in self.weights.values()):
            raise ValueError("a positive rate needs at least one positive weight")


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default

    @property
    def key(self) -> str:
        """What identifies a retry of this request: method, target, Range."""
        byte_range = self.header("range")
        return f"{self.method} {self.target}" + (f" [{byte_range}]" if byte_range else "")

    @property
    def is_upload(self) -> bool:
        return (
            self.method == "PUT"
            and int(self.header("content-length", "0") or 0) > 0
            and not self.header("x-amz-copy-source")
        )


class S3FaultProxy:
    """The proxy; `start()` / `stop()` or a `with` block. `endpoint` is its http://127.0.0.1 URL."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None, host: str = "127.0.0.1"):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.plan = plan or FaultPlan()
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._forced: list[tuple[str, int, str]] = []  # [kind, remaining, match]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.clear()

    # --- control ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def clear(self) -> None:
        """Forget every count and the random draw's position (the plan's seed starts again)."""
        with self._lock:
            self._rng = random.Random(self.plan.seed)
            self._requests = 0
            self._methods: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._uploads_seen = 0
            self._cuts_done = 0
            self._retried = 0
            self._recovered = 0
            self._outstanding: dict[str, int] = {}  # request key -> failed attempts in a row
            self._forced = []

    def set_plan(self, plan: FaultPlan) -> None:
        """Use another plan from the next request on (the counts stay)."""
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self._uploads_seen = 0
            self._cuts_done = 0

    def force(self, kind: str, count: int = 1, match: str = "") -> None:
        """Give the next `count` requests whose `METHOD target` contains `match` this fault
        (uploads only for `cut_upload`), whatever the plan draws."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}: use {list(KINDS)}")
        with self._lock:
            self._forced.append((kind, count, match))

    def stats(self) -> dict:
        """Counts so far: requests seen (and per method), faults injected per kind, and what the
        client did about the failing ones."""
        with self._lock:
            failed = sorted(key for key, n in self._outstanding.items() if n > 0)
            return {
                "requests": self._requests,
                "methods": dict(sorted(self._methods.items())),
                "faults": {kind: self._faults.get(kind, 0) for kind in KINDS},
                "faults_total": sum(self._faults.values()),
                "retried": self._retried,
                "recovered": self._recovered,
                "failed": len(failed),
                "failed_requests": failed[:10],
            }

    def start(self) -> S3FaultProxy:
        self._thread = threading.Thread(target=self._run, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._startup_error is not None:
            raise RuntimeError(f"S3 fault proxy did not start: {self._startup_error}")
        if not self.port:
            raise RuntimeError("S3 fault proxy did not start within 30 s")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the event loop --------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, 0, limit=1 << 20)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported by start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        assert self._loop is not None
        self._loop.stop()

    # --- deciding --------------------------------------------------------------------------------

    def _decide(self, request: _Request) -> str | None:
        """Count the request and pick its fault (None: pass it through)."""
        with self._lock:
            self._requests += 1
            self._methods[request.method] += 1
            key = request.key
            if self._outstanding.get(key):
                self._retried += 1
            # every request takes its two draws, so a fault here does not shift the ones after
            draw = self._rng.random()
            kinds = [k for k in DRAWN_KINDS if self.plan.weights.get(k, 0) > 0]
            drawn = (
                self._rng.choices(kinds, [self.plan.weights[k] for k in kinds])[0]
                if kinds
                else None
            )
            fault = drawn if draw < self.plan.rate else None
            line = f"{request.method} {request.target}"
            for i, (kind, remaining, match) in enumerate(self._forced):
                if match in line and (kind != "cut_upload" or request.is_upload):
                    fault = kind
                    if remaining <= 1:
                        del self._forced[i]
                    else:
                        self._forced[i] = (kind, remaining - 1, match)
                    break
            else:
                if request.is_upload and self.plan.cut_match in request.target:
                    self._uploads_seen += 1
                    if (
                        self._cuts_done < self.plan.cut_uploads
                        and self._uploads_seen > self.plan.cut_after
                    ):
                        self._cuts_done += 1
                        fault = "cut_upload"
            if fault is not None:
                self._faults[fault] += 1
            if fault in FAILING_KINDS:
                self._outstanding[key] = self._outstanding.get(key, 0) + 1
            return fault

    def _answered(self, request: _Request) -> None:
        """The server's answer reached the client: a failed request that was retried recovered."""
        with self._lock:
            if self._outstanding.pop(request.key, 0):
                self._recovered += 1

    # --- one client connection -------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request_head(reader)
                if request is None:
                    return
                if not await self._serve(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except asyncio.CancelledError:
            return  # the proxy is stopping
        finally:
            if not writer.is_closing():
                writer.close()

    async def _serve(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request (or fault it); False when the connection is done."""
        fault = self._decide(request)
        if fault == "reset":
            _reset(writer)
            return False
        if request.header("expect").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if fault == "cut_upload":
            length = int(request.header("content-length", "0"))
            half = await reader.readexactly(length // 2)
            await self._cut_upstream(request, half)
            _reset(writer)
            return False
        body = await _read_body(reader, request.header, is_response=False)
        keep_alive = request.header("connection").lower() != "close"
        if fault in S3_ERRORS:
            writer.write(_s3_error(fault, request))
            await writer.drain()
            return keep_alive
        head, payload = await self._forward(request, body)
        if fault == "drop_response":
            _reset(writer)
            return False
        if fault == "delay":
            await asyncio.sleep(self.plan.delay_s)
        self._answered(request)  # before the client can see the answer (and read the stats)
        writer.write(head + payload)
        await writer.drain()
        return keep_alive

    async def _forward(self, request: _Request, body: bytes) -> tuple[bytes, bytes]:
        """Send the request to the server on a fresh connection; its answer, re-framed for a
        keep-alive client (Content-Length, no hop-by-hop headers)."""
        up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=1 << 20)
        try:
            up_writer.write(_request_bytes(request, body))
            await up_writer.drain()
            status_line, headers = await _read_head(up_reader)
            status = int(status_line.split(b" ", 2)[1])
            if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                payload = b""
            else:

                def header(name: str, default: str = "") -> str:
                    return _get(headers, name, default)

                payload = await _read_body(up_reader, header, is_response=True)
        finally:
            up_writer.close()
        keep = [
            (k, v)
            for k, v in headers
            if k.lower() not in _HOP_HEADERS and k.lower() != "transfer-encoding"
        ]
        if request.method != "HEAD":
            keep = [(k, v) for k, v in keep if k.lower() != "content-length"]
            keep.append(("Content-Length", str(len(payload))))
        version, _, rest = status_line.decode("latin-1").partition(" ")
        head = f"HTTP/1.1 {rest}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keep) + "\r\n"
        return head.encode("latin-1"), payload

    async def _cut_upstream(self, request: _Request, half: bytes) -> None:
        """Forward the upload's head and half its body, then reset the server's connection."""
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            return
        up_writer.write(_request_bytes(request, half))
        await up_writer.drain()
        await asyncio.sleep(0.05)  # let the server start reading before the connection dies
        _reset(up_writer)


# --- HTTP/1.1 framing -----------------------------------------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    first, *lines = raw[:-4].split(b"\r\n")
    headers = []
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return first, headers


async def _read_request_head(reader: asyncio.StreamReader) -> _Request | None:
    try:
        first, headers = await _read_head(reader)
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle keep-alive connection
    method, target, version = first.decode("latin-1").split(" ", 2)
    return _Request(method, target, version, headers)


def _get(headers: list[tuple[str, str]], name: str, default: str = "") -> str:
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return default


async def _read_body(reader: asyncio.StreamReader, header, is_response: bool) -> bytes:
    """A message body as framed by its headers (chunked bodies are de-chunked)."""
    if "chunked" in header("transfer-encoding").lower():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    length = header("content-length")
    if length:
        return await reader.readexactly(int(length))
    return await reader.read() if is_response else b""


def _request_bytes(request: _Request, body: bytes) -> bytes:
    """The request for the server: one request per connection, the body re-framed by length."""
    headers = [
        (k, v)
        for k, v in request.headers
        if k.lower() not in _HOP_HEADERS
        and k.lower() not in ("transfer-encoding", "content-length")
    ]
    if body or request.method in ("PUT", "POST"):
        headers.append(("Content-Length", request.header("content-length") or str(len(body))))
    headers.append(("Connection", "close"))
    head = f"{request.method} {request.target} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def _s3_error(kind: str, request: _Request) -> bytes:
    status, reason, code, message = S3_ERRORS[kind]
    request_id = uuid.uuid4().hex[:16].upper()
    resource = request.target.split("?", 1)[0]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    if request.method == "HEAD":
        body = b""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dying server or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

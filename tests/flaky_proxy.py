"""A loopback HTTP/1.1 proxy that breaks connections on purpose, for the client's retry tests.

Each accepted connection carries one request (the proxy asks the upstream to close after it)
and draws its fate from a seeded RNG, in the order connections arrive:

- `cut` of them are cut partway: a request with a body loses the rest of it half of the time,
  otherwise the response stops partway through its body (a body-less response partway through
  its head); the cut is a FIN or, half of the time, a reset (RST);
- `unavailable` of them are answered 503 with `Retry-After: 0` without reaching the upstream
  (the request body is read first, so the client sees the answer, not a broken pipe);
- the rest pass through unchanged.

`counts` says what happened: connections, cut_request, cut_response, unavailable, passed,
ranged (requests that carried a Range header) and ranged_<status> (how the upstream answered
those that reached it: 206 when it resumed).

    with FlakyProxy(("127.0.0.1", server_port), seed=1) as proxy:
        Client(proxy.url, ...)
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

_BLOCK = 1 << 20


class FlakyProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        cut: float = 0.2,
        unavailable: float = 0.1,
        seed: int = 0,
    ) -> None:
        if cut + unavailable > 1:
            raise ValueError("cut + unavailable must be <= 1")
        self.upstream = upstream
        self.cut, self.unavailable = cut, unavailable
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> FlakyProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            pending = asyncio.all_tasks(loop)  # connections a client left open
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="flaky-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the flaky proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------ a connection
    def _fate(self) -> tuple[str, float, bool, bool]:
        """(pass | cut | unavailable, where to cut in [0, 1), cut the request?, reset?)."""
        u, where = self.rng.random(), self.rng.random()
        in_request, reset = self.rng.random() < 0.5, self.rng.random() < 0.5
        if u < self.cut:
            return "cut", where, in_request, reset
        return ("unavailable" if u < self.cut + self.unavailable else "pass"), where, False, False

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        self._tasks.add(asyncio.current_task())  # the loop holds tasks weakly
        fate, where, in_request, reset = self._fate()
        self.counts["connections"] += 1
        upstream_w = None
        try:
            try:
                head = await client_r.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the client closed an idle connection
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if "range" in headers:
                self.counts["ranged"] += 1
            if fate == "unavailable":
                await client_r.readexactly(length)
                body = b'{"code":"storage_error","message":"flaky proxy: try again"}'
                client_w.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\n"
                    b"Content-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await client_w.drain()
                self.counts["unavailable"] += 1
                return
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
            kept = [h for h in lines[1:] if h and not h.lower().startswith("connection:")]
            head = "\r\n".join([lines[0], *kept, "Connection: close"]) + "\r\n\r\n"
            upstream_w.write(head.encode("latin-1"))
            cut_request = fate == "cut" and in_request and length > 0
            send = int(where * length) if cut_request else length
            await _copy(client_r, upstream_w, send)
            if cut_request:
                self.counts["cut_request"] += 1
                await self._cut(client_w, reset)
                return
            response_head = await upstream_r.readuntil(b"\r\n\r\n")
            status_line, *response_lines = response_head.decode("latin-1").split("\r\n")
            status = status_line.split(" ")[1]
            if "range" in headers:
                self.counts[f"ranged_{status}"] += 1
            if fate != "cut":
                client_w.write(response_head)
                await _copy(upstream_r, client_w, None)
                self.counts["passed"] += 1
                return
            body_length = 0
            for line in response_lines:
                if line.lower().startswith("content-length:"):
                    body_length = int(line.split(":", 1)[1])
            if body_length:
                client_w.write(response_head)
                await _copy(upstream_r, client_w, int(where * body_length))
            else:
                client_w.write(response_head[: int(where * len(response_head))])
            self.counts["cut_response"] += 1
            await self._cut(client_w, reset)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.counts["client_gone"] += 1  # the client gave up on this connection first
        finally:
            for w in (upstream_w, client_w):
                if w is not None and not w.is_closing():
                    w.close()
            self._tasks.discard(asyncio.current_task())

    async def _cut(self, writer: asyncio.StreamWriter, reset: bool) -> None:
        await writer.drain()
        if reset:
            writer.transport.abort()  # RST: the client's next read fails at once


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int | None
) -> None:
    """Copy `count` bytes (None: until EOF) from reader to writer."""
    left = count
    while left is None or left > 0:
        block = await reader.read(_BLOCK if left is None else min(_BLOCK, left))
        if not block:
            if left is not None:
                raise asyncio.IncompleteReadError(b"", left)
            break
        writer.write(block)
        await writer.drain()
        if left is not None:
            left -= len(block)

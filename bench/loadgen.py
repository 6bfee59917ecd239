"""A lean HTTP/1.1 load client for the benches: one keep-alive connection per simulated client,
on asyncio streams, requests encoded once up front.

Why not httpx: the clients share the 2 cores with the server they measure, so the client's own
CPU per request is taken from the server. httpx costs far more per request than the server's
model does: against the same CLINC150 server (1 worker, 1 model thread, 64 clients, 8 s),
httpx's AsyncClient drove 57.5 requests/s and this client 223.1 (docs/RESULTS.md, "Serving under
load", names both commands).
A load generator must be cheaper than what it measures (as wrk is); this one parses only the
status line and Content-Length, and leaves the body to the caller.

    conn = LeanConnection("127.0.0.1", port)
    status, body = await conn.request(encode_post("/v1/chat/completions", doc))
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


def encode_post(path: str, doc: Any, headers: dict[str, str] | None = None) -> bytes:
    """One POST request with a JSON body, as the bytes sent on the wire."""
    body = json.dumps(doc).encode()
    head = [f"POST {path} HTTP/1.1", "Host: bench", "Content-Type: application/json",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class LeanConnection:
    """One keep-alive connection; reconnects after the server closes it (or after an error)."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """(status, body) of one request given as wire bytes (`encode_post`). Raises OSError or
        asyncio.TimeoutError (and drops the connection) when the exchange fails."""
        try:
            return await asyncio.wait_for(self._exchange(raw), self.timeout_s)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        if self._w is None:
            self._r, self._w = await asyncio.open_connection(self.host, self.port)
        assert self._r is not None
        self._w.write(raw)
        head = await self._r.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close, chunked = 0, False, False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
        if chunked:  # a streamed answer: the benches never ask for one
            raise ValueError("chunked (streamed) responses are not supported by this client")
        out = await self._r.readexactly(length)
        if close:
            self.close()
        return status, out

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
        self._r = self._w = None

"""A lean HTTP/1.1 load generator: asyncio streams, one keep-alive connection per client, no parsing of bodies.

The load generator shares the cores with the server under test, so it must cost little: requests are
pre-encoded bytes, responses are read by Content-Length (or chunks) and only their status is checked.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""


def build_request(url: str, path: str, body: bytes) -> bytes:
    host = urlsplit(url).netloc
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(parts)
    raise RuntimeError("response without Content-Length or chunked encoding")


async def _client(url: str, requests: Sequence[bytes], start: int, stop_at: float,
                  result: LoadResult, record: bool) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        for raw in itertools.islice(itertools.cycle(requests), start, None):
            if time.perf_counter() >= stop_at:
                return
            sent = time.perf_counter()
            writer.write(raw)
            status, body = await _read_response(reader)
            if record:
                result.latencies.append(time.perf_counter() - sent)
                result.requests += 1
                if status != 200:
                    result.errors += 1
                    result.first_error = result.first_error or f"{status}: {body[:300]!r}"
    finally:
        writer.close()


async def _run(url: str, requests: Sequence[bytes], clients: int, seconds: float, warmup: float,
               on_start: Callable[[], None] | None) -> LoadResult:
    result = LoadResult()
    if warmup > 0:
        stop = time.perf_counter() + warmup
        await asyncio.gather(*(_client(url, requests, i, stop, result, False) for i in range(clients)))
    if on_start is not None:
        on_start()
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*(_client(url, requests, i * 7, stop, result, True) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(url: str, path: str, bodies: Sequence[bytes], clients: int, seconds: float,
             warmup: float = 1.0, on_start: Callable[[], None] | None = None) -> LoadResult:
    """`clients` concurrent keep-alive clients POST `bodies` in turn for `seconds`, after a warm-up.

    `on_start` runs between the warm-up and the measured part (e.g. to read the server's CPU time).
    """
    requests = [build_request(url, path, body) for body in bodies]
    return asyncio.run(_run(url, requests, clients, seconds, warmup, on_start))


def run_load_mixed(url: str, calls: Sequence[tuple[str, bytes]], clients: int, seconds: float,
                   warmup: float = 1.0) -> LoadResult:
    """As `run_load`, each client POSTing (path, body) `calls` in turn (several routes: e.g. one per output)."""
    requests = [build_request(url, path, body) for path, body in calls]
    return asyncio.run(_run(url, requests, clients, seconds, warmup, None))

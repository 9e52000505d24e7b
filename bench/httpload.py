"""A small HTTP/1.1 load generator for the benchmarks: keep-alive connections on asyncio
streams, fixed concurrency, latency of every request. Lighter than a general client, so that on
a 2-core machine the client costs the server as little CPU as possible."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class LoadResult:
    """What one run measured."""

    requests: int
    errors: int
    seconds: float
    latencies_s: list[float]
    body_bytes: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        """The p-th percentile latency in milliseconds."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.rps:,.0f} req/s, p50 {self.pct(50):.1f} ms, p95 {self.pct(95):.1f} "
            f"ms, p99 {self.pct(99):.1f} ms ({self.requests} requests, {self.errors} errors, "
            f"{self.body_bytes / max(self.requests, 1) / 1024:.1f} KiB each)"
        )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    size = 0
    if length is not None:
        await reader.readexactly(length)
        size = length
    elif chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            n = int(size_line.strip().split(b";")[0], 16)
            await reader.readexactly(n + 2)
            size += n
            if n == 0:
                break
    return status, size


async def _worker(
    host: str,
    port: int,
    requests: Sequence[bytes],
    deadline: float,
    stop_after: int,
    counter: list[int],
    out: list[float],
    errors: list[int],
    sizes: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < deadline and counter[0] < stop_after:
            counter[0] += 1
            request = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            writer.write(request)
            status, size = await _read_response(reader)
            out.append(time.perf_counter() - started)
            sizes[0] += size
            if status >= 400:
                errors[0] += 1
    finally:
        writer.close()


def request_bytes(url: str, headers: dict[str, str]) -> bytes:
    """A GET request for `url` (path and query used) with keep-alive."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run_load(
    base_url: str,
    urls: Sequence[str],
    *,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    max_requests: int = 10**9,
) -> LoadResult:
    """GET `urls` round-robin on `concurrency` connections for `seconds` (or `max_requests`)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [request_bytes(base_url + u, headers) for u in urls]

    async def main() -> LoadResult:
        latencies: list[float] = []
        errors, sizes, counter = [0], [0], [0]
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(
                _worker(
                    host, port, requests, deadline, max_requests, counter, latencies, errors, sizes
                )
                for _ in range(concurrency)
            )
        )
        elapsed = time.perf_counter() - started
        return LoadResult(len(latencies), errors[0], elapsed, latencies, sizes[0])

    return asyncio.run(main())


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")

"""What annotate_http.py and label_studio_http.py share, so both servers are driven and timed alike.

An HTTP/1.1 client that opens a new connection per request and reads the whole answer
(no keep-alive: the way the Label Studio figures of issue #9 were taken), a wait for a
server to come up, latency percentiles, the CPU a server's process tree and the whole
machine spent, and the PostgreSQL database each benchmark creates when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time


async def http_request(
    port: int, method: str, path: str, headers: str, body: bytes = b"", content_type: str = ""
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection (closed after the answer).
    ``headers``: extra header lines, each ending in CRLF."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{headers}"
    if body:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        raw = await reader.read(-1)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    response_headers, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in response_headers.lower():
        payload = _dechunk(payload)
    return int(status_line.split()[1]), payload


def _dechunk(payload: bytes) -> bytes:
    chunks = []
    while payload:
        size, _, payload = payload.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        chunks.append(payload[:n])
        payload = payload[n + 2 :]
    return b"".join(chunks)


def wait_until_up(
    url: str, what: str, *, server: subprocess.Popen | None = None, timeout: float = 60
) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``server`` exits instead."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up")


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q`` quantile of latencies in seconds, in milliseconds (NaN when there are none)."""
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants, the ones already gone included."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()  # children_*: descendants it has reaped
            total += times.user + times.system + times.children_user + times.children_system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have spent (not idle, not waiting on disk)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def postgres_pid(database_url: str) -> int:
    """The postmaster, whose tree's CPU is the database's: with a connection per request
    (Label Studio; Tandem with ?conn_max_age=0) backends come and go, and the postmaster's
    children times count the ones already gone."""
    import psutil
    import psycopg

    with psycopg.connect(database_url) as conn:  # the backend exits with its connection: ask before
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return psutil.Process(backend).ppid()


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names (its query string aside) if it is missing."""
    import psycopg

    base, name = url.rsplit("/", 1)
    name = name.split("?")[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')

"""The machine-wide benchmark lock: two CPU-heavy benchmarks never share the cores.

Every script in this folder holds it (an exclusive ``flock``, default ``/tmp/bench.lock``,
``--lock`` to change) around the part whose figures it reports, and waits, saying so, when
another benchmark holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys

DEFAULT_LOCK = "/tmp/bench.lock"


@contextlib.contextmanager
def bench_lock(path: str = DEFAULT_LOCK, what: str = "benchmark"):
    """Hold ``path`` exclusively for the duration of the block."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"[{what}] waiting for {path} (another benchmark holds the cores) ...",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

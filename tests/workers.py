"""Real Celery worker processes for tests that need one: started, killed and stopped by the test.

A worker is ``python -m celery -A webapp worker --pool solo`` on the ``default`` and
``gpu`` queues: with the solo pool the task runs in the worker process itself, so
``kill()`` (SIGKILL) stops the work mid-step, as the OOM killer or a lost machine would.
It shares the test database (a ``transaction=True`` test: its rows are committed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from tests.services import service_missing

ROOT = Path(__file__).resolve().parents[1]


def database_url() -> str:
    """The URL of the database this test process uses (pytest-django's test database)."""
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    credentials = f"{db['USER']}:{db['PASSWORD']}" if db["PASSWORD"] else db["USER"]
    return f"postgres://{credentials}@{host}:{port}/{db['NAME']}"


def redis_broker_url() -> str:
    """The Redis broker of this test run (CELERY_BROKER_URL); skips the test when there is none."""
    import redis

    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith(("redis://", "rediss://")):
        service_missing("a real worker needs a Redis broker: set CELERY_BROKER_URL=redis://...")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        service_missing(f"Redis is not reachable at {url}")
    return url


def flush_broker(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()


class Worker:
    """One worker process; its output goes to ``log_path``."""

    def __init__(self, *, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        full_env = {
            **os.environ,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url(),
            **env,
        }
        full_env.pop("CELERY_TASK_EAGER_PROPAGATES", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "default,gpu"]
            + ["-c", "1", "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"]
            + ["--loglevel", "INFO"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, last: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-last:]

    def kill(self) -> None:
        """SIGKILL: no cleanup, no acknowledgement, no final write."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, every: float = 0.1, worker=None):
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout`` seconds.

    Fails early when ``worker`` has exited, with the end of its output.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if worker is not None and not worker.alive():
            pytest.fail(f"the worker exited while waiting for {what}:\n{worker.output()}")
        if time.monotonic() > deadline:
            tail = f"\nworker output:\n{worker.output()}" if worker is not None else ""
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(every)

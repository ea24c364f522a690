"""Celery tasks: thin. Each loads rows, calls a service or ``training.ml``, writes rows.

Heavy imports (torch, transformers, trl) happen inside the task bodies or the
services they call, never at module level: the web process imports this module
to enqueue tasks and must start without torch.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="training.tasks.ping")
def ping() -> str:
    """Round-trip check used by the embedded-mode test: the worker is consuming."""
    return "pong"

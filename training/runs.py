"""The life of a TrainingRun: launch, claim, report, finish, cancel, retry.

Every long job (generation, reward model, PPO, loop, export) is a TrainingRun row
and a Celery task that receives only the run's id. The row is the truth: tasks
claim it with a conditional UPDATE, so a duplicate delivery or a second worker
does nothing twice, and a redelivery after a killed worker resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from training.models import Metric, TrainingRun

log = logging.getLogger(__name__)

# A running run whose worker has not written a heartbeat for this long is presumed
# dead (SIGKILL, OOM, power cut): a redelivered task may take it over and resume.
STALE_AFTER = timedelta(minutes=2)
LOG_TAIL_LINES = 200


class QueueUnavailable(Exception):
    """The broker could not be reached, so nothing was enqueued (and nothing was kept)."""


class RunCancelled(Exception):
    """Raised inside a task when the admin asked the run to stop."""


def enqueue(run: TrainingRun, task, *, cleanup: Callable[[], None] | None = None) -> None:
    """Send ``task(run.pk)`` to the broker after the current transaction commits.

    Called outside a transaction it sends at once. When the broker cannot be
    reached, ``cleanup`` (default: delete the run) removes what was created and
    :class:`QueueUnavailable` is raised, so a failed launch leaves nothing behind.
    """
    from kombu.exceptions import OperationalError

    def send():
        try:
            result = task.apply_async(args=[run.pk], retry=False)
        except (OperationalError, ConnectionError, OSError) as exc:
            (cleanup or run.delete)()
            raise QueueUnavailable(
                "The task queue cannot be reached, so nothing was started. "
                "Check that the broker (CELERY_BROKER_URL) is running, then try again."
            ) from exc
        if result.id:
            TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=result.id)

    connection_in_atomic = transaction.get_connection().in_atomic_block
    if connection_in_atomic:
        transaction.on_commit(send, robust=False)
    else:
        send()


def run_launch(
    *, project, kind: str, config: dict, task, created_by=None, parent=None, **fields
) -> TrainingRun:
    """Create a queued run and enqueue ``task`` for it; raises QueueUnavailable with nothing kept."""
    run = TrainingRun.objects.create(
        project=project, kind=kind, config=config, created_by=created_by, parent=parent, **fields
    )
    enqueue(run, task)
    return run


def run_claim(run_id: int) -> TrainingRun | None:
    """Mark the run running for this worker, or return None when there is nothing to do.

    Claims a queued run, or a running one whose heartbeat is stale (its worker died
    and the broker redelivered the task). A finished or cancelled run, or one that
    another live worker holds, is left alone: duplicate deliveries are no-ops.
    """
    now = timezone.now()
    claimable = Q(status=TrainingRun.Status.QUEUED) | Q(
        status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER
    )
    claimed = TrainingRun.objects.filter(claimable, pk=run_id, cancel_requested=False).update(
        status=TrainingRun.Status.RUNNING, heartbeat_at=now, error=""
    )
    if not claimed:
        # A queued run cancelled before any worker picked it up ends here.
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED, cancel_requested=True).update(
            status=TrainingRun.Status.CANCELLED, finished_at=now
        )
        return None
    run = TrainingRun.objects.get(pk=run_id)
    if run.started_at is None:
        run.started_at = now
    run.attempts += 1
    run.save(update_fields=["started_at", "attempts"])
    return run


class RunReporter:
    """What a task hands to ML code: progress, metrics, log lines and the cancel flag.

    Writes are throttled (at most every ``interval`` seconds, plus the last one) so a
    fast loop does not hammer the database; metrics are buffered and flushed in bulk.
    """

    def __init__(self, run: TrainingRun, *, interval: float = 2.0):
        self.run = run
        self.interval = interval
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._metrics: list[Metric] = []
        self._log_lines: list[str] = run.log_tail.splitlines()[-LOG_TAIL_LINES:]

    # --- progress ---------------------------------------------------------
    def progress(self, done: int, total: int, stage: str | None = None, *, force: bool = False) -> None:
        self.run.progress_done, self.run.progress_total = min(done, total), total
        if stage is not None:
            self.run.stage = stage
        if force or done >= total or time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def stage(self, text: str) -> None:
        self.run.stage = text
        self.log(text)
        self.flush()

    # --- metrics and log -------------------------------------------------
    def metrics(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            if value is None:
                continue
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):  # NaN/inf cannot be charted
                continue
            self._metrics.append(Metric(run_id=self.run.pk, step=int(step), name=name[:64], value=value))
        if time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self._log_lines.append(f"{stamp} {line.rstrip()}")
        del self._log_lines[:-LOG_TAIL_LINES]
        log.info("run %s: %s", self.run.pk, line.rstrip())

    def flush(self) -> None:
        if self._metrics:
            Metric.objects.bulk_create(self._metrics, ignore_conflicts=True)
            self._metrics = []
        self.run.log_tail = "\n".join(self._log_lines)
        self.run.heartbeat_at = timezone.now()
        TrainingRun.objects.filter(pk=self.run.pk).update(
            progress_done=self.run.progress_done,
            progress_total=self.run.progress_total,
            stage=self.run.stage[:200],
            log_tail=self.run.log_tail,
            heartbeat_at=self.run.heartbeat_at,
            outputs=self.run.outputs,
        )
        self._last_write = time.monotonic()

    # --- cancellation -----------------------------------------------------
    def should_stop(self) -> bool:
        """True once an admin asked to cancel; checks the database at most once a second."""
        if not self._cancelled and time.monotonic() - self._last_cancel_check >= 1.0:
            self._last_cancel_check = time.monotonic()
            self._cancelled = TrainingRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists()
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        if self.should_stop():
            raise RunCancelled


def run_finish(run: TrainingRun, *, status: str, error: str = "") -> None:
    """Record the end of a run once; a run already finished is left as it is."""
    TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
        status=status,
        error=error,
        finished_at=timezone.now(),
        heartbeat_at=timezone.now(),
        outputs=run.outputs,
    )
    run.refresh_from_db()


def describe_error(exc: BaseException) -> str:
    """The error in plain words for the dashboard (the traceback goes to the log)."""
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        return "The run took longer than the task time limit (TASK_SOFT_TIME_LIMIT) and was stopped."
    if type(exc).__name__ == "OutOfMemoryError":
        return (
            "The GPU ran out of memory. Lower the batch size or the maximum length, "
            "or use a GPU with more memory, then retry."
        )
    if isinstance(exc, FileNotFoundError):
        return str(exc) or "A file or model path does not exist."
    message = str(exc).strip() or type(exc).__name__
    return message if type(exc).__name__ in message else f"{type(exc).__name__}: {message}"


@contextlib.contextmanager
def running(run_id: int) -> Iterator[RunReporter | None]:
    """Claim the run and yield a reporter (None when there is nothing to do).

    Ends the run as succeeded when the block completes, cancelled on RunCancelled,
    failed with a readable reason on any other exception.
    """
    run = run_claim(run_id)
    if run is None:
        yield None
        return
    reporter = RunReporter(run)
    reporter.log(f"Started on attempt {run.attempts}.")
    try:
        yield reporter
    except RunCancelled:
        reporter.log("Cancelled at the admin's request.")
        reporter.flush()
        run_finish(run, status=TrainingRun.Status.CANCELLED)
    except Exception as exc:
        reporter.log(traceback.format_exc(limit=8))
        reporter.flush()
        run_finish(run, status=TrainingRun.Status.FAILED, error=describe_error(exc))
        log.exception("run %s failed", run_id)
    else:
        if reporter.should_stop():
            reporter.log("Cancelled at the admin's request.")
            reporter.flush()
            run_finish(run, status=TrainingRun.Status.CANCELLED)
            return
        reporter.progress(run.progress_total, run.progress_total, force=True)
        reporter.log("Finished.")
        reporter.flush()
        run_finish(run, status=TrainingRun.Status.SUCCEEDED)


def run_cancel(run: TrainingRun) -> None:
    """Ask a run to stop: a queued run is cancelled now, a running one within seconds."""
    now = timezone.now()
    TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.CANCELLED, cancel_requested=True, finished_at=now
    )
    TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(cancel_requested=True)
    TrainingRun.objects.filter(parent=run, status__in=TrainingRun.ACTIVE).update(cancel_requested=True)
    run.refresh_from_db()


def run_retry(run: TrainingRun, task) -> TrainingRun:
    """Queue a failed or cancelled run again with the same inputs; it resumes where it can."""
    updated = TrainingRun.objects.filter(
        pk=run.pk, status__in=[TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED]
    ).update(status=TrainingRun.Status.QUEUED, cancel_requested=False, error="", finished_at=None)
    run.refresh_from_db()
    if updated:
        enqueue(run, task, cleanup=lambda: run_finish_requeue_failed(run))
    return run


def run_finish_requeue_failed(run: TrainingRun) -> None:
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.FAILED, error="The task queue could not be reached; retry again later."
    )

"""The life of a TrainingRun: launch, claim, report, finish, cancel, retry.

Every long job (generation, reward model, PPO, loop, export) is a TrainingRun row
and a Celery task that receives only the run's id. The row is the truth: tasks
claim it with a conditional UPDATE, so a duplicate delivery or a second worker
does nothing twice, and a redelivery after a killed worker resumes it.

A worker that dies (SIGKILL, OOM killer, power cut) cannot say so. While a run is
claimed, a heartbeat thread touches ``heartbeat_at`` every few seconds, even through
long silent steps (loading a model, one slow batch). A running run whose heartbeat is
older than ``RUN_STALE_AFTER_SECONDS`` is presumed lost: :func:`runs_reap_lost` fails
it with a plain reason (called when a worker starts and when the dashboard lists or
shows runs), and the admin's Retry resumes it from what it saved. Every write a worker
makes to its run is fenced by the attempt number it claimed, so a worker that was
presumed dead but was not cannot overwrite the run once it is failed or claimed again;
it notices at its next heartbeat and stops.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.models import Round
from training.models import Metric, TrainingRun
from training.run_kinds import run_kind

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 200
# A live run's heartbeat is written at least this often (more often with a short stale window).
HEARTBEAT_MAX_SECONDS = 10.0
# What the admin's Retry does for each kind of run, said when a run is declared lost.
RETRY_AFTER_LOSS = {
    TrainingRun.Kind.GENERATE: "Retry continues with the responses already saved.",
    TrainingRun.Kind.REWARD_MODEL: "Retry trains the reward model again from the start.",
    TrainingRun.Kind.PPO: "Retry resumes from the last saved PPO state (saved every save_every updates).",
    TrainingRun.Kind.LOOP: "Retry skips the steps that already finished.",
}


def stale_after() -> timedelta:
    """How long a running run's heartbeat may be silent before its worker is presumed dead.

    A redelivered task may then take the run over (:func:`run_claim`) and the reaper
    fails it (:func:`runs_reap_lost`). Web and workers must agree on it.
    """
    return timedelta(seconds=settings.RUN_STALE_AFTER_SECONDS)


def heartbeat_interval() -> float:
    """Seconds between two heartbeats: four beats fit in the stale window, so one slow write is not a death."""
    return min(HEARTBEAT_MAX_SECONDS, stale_after().total_seconds() / 4)


class QueueUnavailable(Exception):
    """The broker could not be reached, so nothing was enqueued (and nothing was kept)."""


class RunCancelled(Exception):
    """Raised inside a task when the admin asked the run to stop."""


class RunStopped(Exception):
    """Raised inside a task to fail the run with a reason written for the admin: the dashboard
    and the API show the message as it is, with no exception name in front."""


QUEUE_DOWN = (
    "The task queue cannot be reached, so {what} started. "
    "Check that the broker (CELERY_BROKER_URL) is running, then try again."
)


def task_named(name: str):
    """The Celery task called ``name``, or a signature that sends it by name.

    Tasks register when Django starts (``training.apps``), so in the web process and
    on a worker this is the task itself (and ``CELERY_TASK_ALWAYS_EAGER`` runs it in
    place); a name no module defines is still sent, routed like any other.
    """
    from celery import current_app

    task = current_app.tasks.get(name)
    return task if task is not None else current_app.signature(name)


def send_on_commit(
    task_name: str,
    object_id: int,
    *,
    unreachable: Callable[[], str],
    sent: Callable[[str], None] | None = None,
) -> None:
    """Send ``task_name(object_id)`` once the current transaction commits (at once outside one).

    When the broker cannot be reached, ``unreachable()`` undoes or marks what was created
    and returns the message that :class:`QueueUnavailable` then carries; ``sent(task_id)``
    is called once the broker has the task.
    """
    from kombu.exceptions import OperationalError

    def send():
        try:
            result = task_named(task_name).apply_async(args=[object_id], retry=False)
        except (OperationalError, ConnectionError, OSError) as exc:
            raise QueueUnavailable(unreachable()) from exc
        if sent is not None and result.id:
            sent(result.id)

    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(send, robust=False)
    else:
        send()


def enqueue(run: TrainingRun, *, cleanup: Callable[[], None] | None = None) -> None:
    """Send the task of ``run``'s kind (``training.run_kinds``) after the current transaction commits.

    Called outside a transaction it sends at once. When the broker cannot be
    reached, ``cleanup`` (default: delete the run) removes what was created and
    :class:`QueueUnavailable` is raised, so a failed launch leaves nothing behind.
    """

    def unreachable() -> str:
        (cleanup or run.delete)()
        return QUEUE_DOWN.format(what="nothing was")

    send_on_commit(
        run_kind(run.kind).task,
        run.pk,
        unreachable=unreachable,
        sent=lambda task_id: TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=task_id),
    )


def run_launch(*, project, kind: str, config: dict, created_by=None, parent=None, **fields) -> TrainingRun:
    """Create a queued run and enqueue its kind's task; raises QueueUnavailable with nothing kept."""
    run = TrainingRun.objects.create(
        project=project, kind=kind, config=config, created_by=created_by, parent=parent, **fields
    )
    enqueue(run)
    return run


def run_claim(run_id: int) -> TrainingRun | None:
    """Mark the run running for this worker, or return None when there is nothing to do.

    Claims a queued run, or a running one whose heartbeat is stale (its worker died
    and the broker redelivered the task). A finished or cancelled run, or one that
    another live worker holds, is left alone: duplicate deliveries are no-ops. The
    claim counts the attempt in the same UPDATE; that number fences this worker's writes.
    """
    now = timezone.now()
    claimable = Q(status=TrainingRun.Status.QUEUED) | Q(
        status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - stale_after()
    )
    claimed = TrainingRun.objects.filter(claimable, pk=run_id, cancel_requested=False).update(
        status=TrainingRun.Status.RUNNING,
        heartbeat_at=now,
        error="",
        attempts=F("attempts") + 1,
        started_at=Coalesce("started_at", now),
    )
    if not claimed:
        # A queued run cancelled before any worker picked it up ends here.
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED, cancel_requested=True).update(
            status=TrainingRun.Status.CANCELLED, finished_at=now
        )
        return None
    return TrainingRun.objects.get(pk=run_id)


def _held(run: TrainingRun):
    """The run's row as long as this attempt holds it: running, and not claimed again since."""
    return TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING, attempts=run.attempts)


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
        self.lost = False  # set when the run was declared lost or claimed by another attempt
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
        written = _held(self.run).update(
            progress_done=self.run.progress_done,
            progress_total=self.run.progress_total,
            stage=self.run.stage[:200],
            log_tail=self.run.log_tail,
            heartbeat_at=self.run.heartbeat_at,
            outputs=self.run.outputs,
        )
        if not written:
            self.run_lost()
        self._last_write = time.monotonic()

    def run_lost(self) -> None:
        """The run is no longer this attempt's (declared lost, or claimed again): stop working on it."""
        if not self.lost:
            log.warning(
                "run %s: this worker no longer holds the run (attempt %s); stopping.",
                self.run.pk,
                self.run.attempts,
            )
        self.lost = True

    # --- cancellation -----------------------------------------------------
    def should_stop(self) -> bool:
        """True once an admin asked to cancel, or the run was taken from this worker; checks the
        database at most once a second."""
        if self.lost:
            return True
        if not self._cancelled and time.monotonic() - self._last_cancel_check >= 1.0:
            self._last_cancel_check = time.monotonic()
            self._cancelled = TrainingRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists()
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        if self.should_stop():
            raise RunCancelled


class _Heartbeat(threading.Thread):
    """Touches the run's ``heartbeat_at`` every ``interval`` seconds while the run is alive.

    Progress writes alone do not prove life: loading a model or one long batch can be
    silent for minutes. The thread has its own database connection and closes it when
    it ends. When the row is no longer this attempt's, it tells the reporter and stops.
    """

    def __init__(self, reporter: RunReporter, interval: float):
        super().__init__(name=f"run-{reporter.run.pk}-heartbeat", daemon=True)
        self.reporter, self.interval = reporter, interval
        self._done = threading.Event()

    def run(self) -> None:
        try:
            while not self._done.wait(self.interval):
                try:
                    beat = _held(self.reporter.run).update(heartbeat_at=timezone.now())
                except DatabaseError:  # a blip: the next beat tries again on a fresh connection
                    log.warning("run %s: heartbeat failed", self.reporter.run.pk, exc_info=True)
                    connection.close()
                    continue
                if not beat:
                    self.reporter.run_lost()
                    return
        finally:
            connection.close()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)


def _heartbeat_start(reporter: RunReporter) -> _Heartbeat | None:
    # Inside a transaction (a test, or a caller's atomic block) another connection cannot see
    # the row, or waits on its lock; such a run lives and ends within that one call anyway.
    if transaction.get_connection().in_atomic_block:
        return None
    heartbeat = _Heartbeat(reporter, heartbeat_interval())
    heartbeat.start()
    return heartbeat


def run_finish(run: TrainingRun, *, status: str, error: str = "") -> None:
    """Record the end of a run once; a run already finished, or no longer this attempt's, is left as it is."""
    _held(run).update(
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
    if isinstance(exc, MemoryError):
        return (
            "The worker ran out of memory. Lower the batch size or the maximum length (or the number "
            "of processes), then retry; retrying as it is would run out again."
        )
    if isinstance(exc, RunStopped):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return str(exc) or "A file or model path does not exist."
    message = str(exc).strip() or type(exc).__name__
    return message if type(exc).__name__ in message else f"{type(exc).__name__}: {message}"


@contextlib.contextmanager
def running(run_id: int) -> Iterator[RunReporter | None]:
    """Claim the run and yield a reporter (None when there is nothing to do).

    Ends the run as succeeded when the block completes, cancelled on RunCancelled,
    failed with a readable reason on any other exception. A run taken from this worker
    meanwhile (declared lost, or claimed by another attempt) is left as its new owner has it.
    """
    run = run_claim(run_id)
    if run is None:
        yield None
        return
    reporter = RunReporter(run)
    reporter.log(f"Started on attempt {run.attempts}.")
    heartbeat = _heartbeat_start(reporter)
    try:
        with contextlib.ExitStack() as stack:
            if heartbeat is not None:
                stack.callback(heartbeat.stop)
            yield reporter
    except RunCancelled:
        _run_end(reporter, TrainingRun.Status.CANCELLED, "Cancelled at the admin's request.")
    except Exception as exc:
        _run_end(
            reporter, TrainingRun.Status.FAILED, traceback.format_exc(limit=8), error=describe_error(exc)
        )
        log.exception("run %s failed", run_id)
    else:
        if reporter.should_stop():
            _run_end(reporter, TrainingRun.Status.CANCELLED, "Cancelled at the admin's request.")
            return
        reporter.progress(run.progress_total, run.progress_total, force=True)
        _run_end(reporter, TrainingRun.Status.SUCCEEDED, "Finished.")


def _run_end(reporter: RunReporter, status: str, line: str, *, error: str = "") -> None:
    if reporter.lost:
        log.warning(
            "run %s: attempt %s ended (%s) after losing the run",
            reporter.run.pk,
            reporter.run.attempts,
            status,
        )
        return
    reporter.log(line)
    reporter.flush()
    run_finish(reporter.run, status=status, error=error)


def lost_reason(run: TrainingRun) -> str:
    """Why a lost run failed, in the words the dashboard shows."""
    seen = timezone.localtime(run.heartbeat_at).strftime("%Y-%m-%d %H:%M:%S %Z")
    hint = RETRY_AFTER_LOSS.get(run.kind, "Retry runs it again.")
    return f"The worker stopped responding at {seen} (killed or lost). {hint}"


def runs_reap_lost(*, now=None) -> list[TrainingRun]:
    """Fail every running run whose heartbeat is older than :func:`stale_after`; the runs failed.

    Each run is failed with a conditional UPDATE on the heartbeat it was seen with, so a
    worker that beats in between keeps its run. A lost loop takes its unfinished steps
    with it; a lost generation run fails its round (retryable, ``round_retry``). A chunked
    round's own run is never reaped: it has no worker, it follows its chunks. Cheap when
    nothing is lost (one query): the dashboard calls it on every look at the runs.
    """
    now = now or timezone.now()
    chunked_round = Q(kind=TrainingRun.Kind.GENERATE) & Exists(
        TrainingRun.objects.filter(parent=OuterRef("pk"))
    )
    suspects = list(
        TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING, heartbeat_at__lt=now - stale_after())
        .exclude(chunked_round)
        .only("pk", "kind", "heartbeat_at", "log_tail", "parent_id")
    )
    reaped = []
    for run in suspects:
        if _reap(run, now):
            log.warning("run %s declared lost: %s", run.pk, run.error)
            reaped.append(run)
    return reaped


@transaction.atomic
def _reap(run: TrainingRun, now) -> bool:
    """Fail one lost run (and what fails with it) in one transaction; False when it beat meanwhile."""
    reason = lost_reason(run)
    stamp = timezone.localtime(now).strftime("%H:%M:%S")
    lines = [*run.log_tail.splitlines(), f"{stamp} Declared lost: {reason}"][-LOG_TAIL_LINES:]
    failed = TrainingRun.objects.filter(
        pk=run.pk, status=TrainingRun.Status.RUNNING, heartbeat_at=run.heartbeat_at
    ).update(status=TrainingRun.Status.FAILED, error=reason, finished_at=now, log_tail="\n".join(lines))
    if not failed:
        return False
    run.status, run.error, run.finished_at = TrainingRun.Status.FAILED, reason, now
    if run.kind == TrainingRun.Kind.LOOP:
        TrainingRun.objects.filter(parent_id=run.pk, status__in=TrainingRun.ACTIVE).update(
            status=TrainingRun.Status.FAILED,
            error=f"The loop (run #{run.pk}) stopped with it: {reason}",
            finished_at=now,
        )
    if run.kind == TrainingRun.Kind.GENERATE:
        generation_settle(run.pk)  # the round fails with the same reason, ready for round_retry
    return True


# --- a round's generation runs -----------------------------------------------------------------


def generation_settle(run_id: int) -> None:
    """After a generation run ends: a failed or cancelled run fails its round, with the reason.

    Also brings a chunked round's own run up to date with its chunks. Called by the
    task after ``running()`` has recorded the run's outcome.
    """
    run = TrainingRun.objects.filter(pk=run_id).first()
    if run is None or "round_id" not in run.config:
        return
    if run.parent_id:
        _parent_sync(run.parent_id)
    if run.status == TrainingRun.Status.FAILED:
        reason = run.error or "Generation failed."
    elif run.status == TrainingRun.Status.CANCELLED:
        reason = "Generation was cancelled. Retry to continue where it stopped."
    else:
        return
    if run.parent_id:
        reason = f"Chunk {run.config.get('chunk')} of {run.config.get('chunks')}: {reason}"
    Round.objects.filter(pk=run.config["round_id"], status=Round.Status.GENERATING).update(
        status=Round.Status.FAILED, error=reason
    )


def _parent_sync(parent_id: int) -> None:
    children = list(TrainingRun.objects.filter(parent_id=parent_id).order_by("pk"))
    if not children:
        return
    statuses = {c.status for c in children}
    S = TrainingRun.Status
    error = ""
    if statuses & set(TrainingRun.ACTIVE):
        status = S.RUNNING
    elif statuses == {S.SUCCEEDED}:
        status = S.SUCCEEDED
    elif S.FAILED in statuses:
        status = S.FAILED
        failed = next(c for c in children if c.status == S.FAILED)
        error = f"Chunk {failed.config.get('chunk')}: {failed.error}"
    else:
        status = S.CANCELLED
    done = sum(c.progress_done for c in children)
    total = sum(c.progress_total for c in children)
    TrainingRun.objects.filter(pk=parent_id).update(
        status=status,
        error=error,
        progress_done=min(done, total),
        progress_total=total,
        finished_at=None if status == S.RUNNING else timezone.now(),
        heartbeat_at=timezone.now(),
    )


def run_cancel(run: TrainingRun) -> None:
    """Ask a run to stop: a queued run is cancelled now, a running one within seconds."""
    now = timezone.now()
    TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.CANCELLED, cancel_requested=True, finished_at=now
    )
    TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(cancel_requested=True)
    TrainingRun.objects.filter(parent=run, status__in=TrainingRun.ACTIVE).update(cancel_requested=True)
    run.refresh_from_db()


def run_retry(run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again with the same inputs; it resumes where it can."""
    updated = TrainingRun.objects.filter(
        pk=run.pk, status__in=[TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED]
    ).update(status=TrainingRun.Status.QUEUED, cancel_requested=False, error="", finished_at=None)
    run.refresh_from_db()
    if updated:
        enqueue(run, cleanup=lambda: run_finish_requeue_failed(run))
    return run


def run_finish_requeue_failed(run: TrainingRun) -> None:
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.FAILED, error="The task queue could not be reached; retry again later."
    )

"""The generate_round task: crash and resume, cancel, readable failures, the broker, a real worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from annotation.models import Response, Round
from tests.services import needs, service_missing
from tests.training.conftest import make_checkpoint, make_prompts
from tests.workers import Worker, database_url
from training.ml import generation
from training.models import TrainingRun
from training.rounds import round_open, round_retry
from training.runs import RunReporter
from training.tasks import generate_round

ROOT = Path(__file__).resolve().parents[2]
FAST = {"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "seed": 1, "batch_size": 2}


@pytest.fixture
def round_queued(project, tiny_checkpoint, django_capture_on_commit_callbacks):
    """A round of 3 prompts x 2 samples, opened but not yet generated (6 requests, batches of 2)."""
    make_prompts(project, 3)
    base = make_checkpoint(project, tiny_checkpoint)
    with django_capture_on_commit_callbacks(execute=False):
        return round_open(project=project, checkpoints=[base], config=FAST)


def keys(round):
    return list(
        Response.objects.filter(round=round).values_list("prompt_id", "checkpoint_id", "sample_index")
    )


def crash_after_first_batch(monkeypatch):
    real, calls = generation.generate_batch, []

    def generate_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("worker died mid-round")
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", generate_batch)
    return calls


def test_a_crash_mid_round_fails_it_and_a_retry_fills_only_what_is_missing(
    round_queued, monkeypatch, eager, django_capture_on_commit_callbacks
):
    round = round_queued
    crash_after_first_batch(monkeypatch)

    generate_round(round.generation_run_id)

    round.refresh_from_db()
    assert round.status == Round.Status.FAILED and "worker died mid-round" in round.error
    assert len(keys(round)) == 2  # the first batch was saved as it arrived
    first_batch = set(Response.objects.filter(round=round).values_list("pk", "text"))

    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        round_retry(round=round)

    round.refresh_from_db()
    assert round.status == Round.Status.OPEN and round.error == ""
    assert len(keys(round)) == len(set(keys(round))) == 6
    assert first_batch <= set(Response.objects.filter(round=round).values_list("pk", "text"))
    assert round.comparisons.count() == 3
    run = round.generation_run
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.attempts == 2


def test_a_cancel_stops_after_the_batch_and_retry_completes_it(
    round_queued, monkeypatch, eager, django_capture_on_commit_callbacks
):
    round = round_queued
    batches = []
    real = generation.generate_batch
    monkeypatch.setattr(generation, "generate_batch", lambda *a, **k: batches.append(1) or real(*a, **k))
    monkeypatch.setattr(RunReporter, "should_stop", lambda self: len(batches) >= 1)

    generate_round(round.generation_run_id)

    round.refresh_from_db()
    assert round.status == Round.Status.FAILED and "cancelled" in round.error
    assert round.generation_run.status == TrainingRun.Status.CANCELLED
    assert len(keys(round)) == 2

    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        round_retry(round=round)

    round.refresh_from_db()
    assert round.status == Round.Status.OPEN and len(set(keys(round))) == len(keys(round)) == 6


def test_a_killed_worker_is_resumed_by_the_redelivered_task(round_queued, monkeypatch):
    round = round_queued
    crash_after_first_batch(monkeypatch)
    generate_round(round.generation_run_id)
    monkeypatch.undo()
    # As if the worker had been SIGKILLed: the run still says running, its heartbeat goes stale.
    Round.objects.filter(pk=round.pk).update(status=Round.Status.GENERATING, error="")
    TrainingRun.objects.filter(pk=round.generation_run_id).update(
        status=TrainingRun.Status.RUNNING, error="", heartbeat_at=timezone.now() - timedelta(minutes=10)
    )

    generate_round(round.generation_run_id)  # the broker delivers the unacknowledged task again

    round.refresh_from_db()
    assert round.status == Round.Status.OPEN and len(set(keys(round))) == len(keys(round)) == 6
    before = Response.objects.filter(round=round).count(), round.comparisons.count()
    generate_round(round.generation_run_id)  # a duplicate delivery of a finished run does nothing
    assert (Response.objects.filter(round=round).count(), round.comparisons.count()) == before


def test_a_missing_model_fails_the_round_with_a_readable_reason(
    project, eager, django_capture_on_commit_callbacks
):
    make_prompts(project, 2)
    base = make_checkpoint(project, "/nonexistent/models/policy-v0")

    with django_capture_on_commit_callbacks(execute=True):
        round = round_open(project=project, checkpoints=[base], config=FAST)

    round.refresh_from_db()
    assert round.status == Round.Status.FAILED
    assert round.error == "No checkpoint at /nonexistent/models/policy-v0."
    assert round.generation_run.status == TrainingRun.Status.FAILED and not keys(round)


def test_a_tokenizer_without_chat_template_fails_the_round(
    project, tiny_checkpoint, tmp_path, eager, django_capture_on_commit_callbacks
):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_checkpoint, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    make_prompts(project, 1)
    base = make_checkpoint(project, model)

    with django_capture_on_commit_callbacks(execute=True):
        round = round_open(project=project, checkpoints=[base], config=FAST)

    round.refresh_from_db()
    assert round.status == Round.Status.FAILED and "no chat template" in round.error


def test_the_admin_retries_a_failed_round(admin_user, round_queued, monkeypatch, eager, client):
    round = round_queued
    crash_after_first_batch(monkeypatch)
    generate_round(round.generation_run_id)
    monkeypatch.undo()
    client.force_login(admin_user)

    page = client.get("/admin/annotation/round/")
    assert b"worker died mid-round" in page.content and b"Failed" in page.content
    response = client.post(
        "/admin/annotation/round/",
        {"action": "retry_failed_generation", "_selected_action": [round.pk]},
        follow=True,
    )

    assert response.status_code == 200
    round.refresh_from_db()
    # The test's transaction never commits, so the retry is queued but not sent here.
    assert round.status == Round.Status.GENERATING and round.error == ""
    assert round.generation_run.status == TrainingRun.Status.QUEUED
    assert b"Generation of 1 round queued again" in response.content


# --- against the real broker and a real worker ---------------------------------

REDIS_URL = os.environ.get("ROUNDS_TEST_BROKER_URL", "redis://127.0.0.1:6379/11")


def _subprocess_env(**extra):
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("CELERY_TASK_EAGER_PROPAGATES", None)
    return {**env, **extra}


def _manage(*args, **env):
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=_subprocess_env(**env),
        capture_output=True,
        text=True,
    )


needs_postgres = needs(
    "postgresql" in os.environ.get("DATABASE_URL", "") or "postgres://" in os.environ.get("DATABASE_URL", ""),
    "a worker process needs a database it can share: set DATABASE_URL to PostgreSQL",
)


def _redis():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        service_missing(f"Redis is not reachable at {REDIS_URL}")
    return client


@pytest.fixture
def worker(transactional_db, tmp_path):
    """A real Celery worker on the default and gpu queues, sharing the test database."""
    broker = _redis()
    broker.flushdb()
    process = Worker(env={"CELERY_BROKER_URL": REDIS_URL}, log_path=tmp_path / "worker.log")
    yield process
    process.stop()
    broker.flushdb()


@pytest.mark.postgres
@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_fills_a_chunked_round_and_opens_it(project, tiny_checkpoint, worker):
    make_prompts(project, 3)
    make_checkpoint(project, tiny_checkpoint)

    opened = _manage(
        "open_round",
        "--project",
        project.name,
        "--max-new-tokens",
        "4",
        "--chunks",
        "2",
        CELERY_BROKER_URL=REDIS_URL,
    )
    assert opened.returncode == 0, opened.stderr

    round = Round.objects.get(project=project)
    deadline = time.monotonic() + 180
    while round.status == Round.Status.GENERATING and time.monotonic() < deadline and worker.alive():
        time.sleep(0.5)
        round.refresh_from_db()
    assert round.status == Round.Status.OPEN, f"round is {round.status} {round.error}\n{worker.output(3000)}"
    assert Response.objects.filter(round=round).count() == 6 and round.comparisons.count() == 3
    parent = round.generation_run
    parent.refresh_from_db()
    # The round opens inside the last chunk's task; its parent run is settled just after.
    settle_by = time.monotonic() + 30
    while parent.status != TrainingRun.Status.SUCCEEDED and time.monotonic() < settle_by:
        time.sleep(0.2)
        parent.refresh_from_db()
    assert parent.children.count() == 2 and parent.status == TrainingRun.Status.SUCCEEDED


@pytest.mark.postgres
@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_an_unreachable_broker_leaves_nothing_behind(project, tiny_checkpoint):
    make_prompts(project, 2)
    make_checkpoint(project, tiny_checkpoint)

    opened = _manage("open_round", "--project", project.name, CELERY_BROKER_URL="redis://127.0.0.1:9/0")

    assert opened.returncode != 0
    assert "task queue cannot be reached" in opened.stderr
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and not Response.objects.exists()

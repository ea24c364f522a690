"""A worker killed with SIGKILL mid-generation, mid-PPO, and while it writes a reward model.

Each real-worker test starts a Celery worker process (``tests/workers.py``), launches the
run through the product's own service, waits until the run is demonstrably half done (or,
for the reward model, until the worker is between two files of the model it is writing:
``training.ml.checkpoints.pause_between_files``), and kills the worker. Then: the run is not succeeded; once its heartbeat has been silent
for the stale window it is failed with a reason a person can read (found by a fresh
worker starting, or by the dashboard looking); nothing half-written is registered or
loadable at a final path; and Retry on a fresh worker completes it, resuming what it saved.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.models import Judgment, Response, Round
from tests.conftest import PASSWORD
from tests.services import service_missing
from tests.training.conftest import make_checkpoint, make_judged_round, make_prompts
from tests.workers import Worker, flush_broker, redis_broker_url, wait_for
from training.launch import run_retry_launch, run_start
from training.ml.checkpoints import (
    PAUSE_WRITES_ENV,
    TMP_PREFIX,
    atomic_directory,
    is_complete_checkpoint,
    partial_writes,
)
from training.ml.ppo import latest_state
from training.ml.reward import RESULTS_FILE
from training.models import Checkpoint, Metric, RewardModel, TrainingRun
from training.policies import policy_dir, run_dir
from training.reward_models import reward_model_dir
from training.rounds import round_open
from training.runs import running, runs_reap_lost

# Short enough to keep the tests quick, long enough that a loaded machine's live worker
# (beating every STALE / 4 seconds) is never taken for dead.
STALE = 8
BOOT = 240  # a worker's start and its first task's torch import, on a busy 2-core machine


@pytest.fixture
def workers(transactional_db, settings, tmp_path):
    """Start workers with ``workers.start()``; they share the test database, the broker and ARTIFACTS_DIR."""
    broker = redis_broker_url()
    if connection.vendor != "postgresql":
        service_missing("a worker process needs a database it can share: set DATABASE_URL to PostgreSQL")
    flush_broker(broker)
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.RUN_STALE_AFTER_SECONDS = STALE
    started: list[Worker] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this process loads the models it checks

    class Workers:
        def start(self, **env: str) -> Worker:
            worker = Worker(
                env={
                    "CELERY_BROKER_URL": broker,
                    "ARTIFACTS_DIR": str(settings.ARTIFACTS_DIR),
                    "RUN_STALE_AFTER_SECONDS": str(STALE),
                    # Two-layer models gain nothing from threads and lose badly on busy cores.
                    "OMP_NUM_THREADS": "1",
                    **env,
                },
                log_path=tmp_path / f"worker-{len(started) + 1}.log",
            )
            started.append(worker)
            return worker

    yield Workers()
    for worker in started:
        worker.stop()
    flush_broker(broker)
    torch.set_num_threads(threads)


def refreshed(row):
    row.refresh_from_db()
    return row


def wait_until_stale(run: TrainingRun) -> None:
    """Wait (on the clock, not on speed) until the dead worker's last heartbeat is older than the window."""
    run.refresh_from_db()
    wait_for(
        lambda: timezone.now() > run.heartbeat_at + timedelta(seconds=STALE + 0.5),
        timeout=STALE + 30,
        what="the heartbeat to go stale",
    )


def assert_lost_reason(run: TrainingRun) -> None:
    assert run.status == TrainingRun.Status.FAILED
    assert run.error.startswith("The worker stopped responding at "), run.error
    assert "(killed or lost)" in run.error and "Retry" in run.error


def loadable_directories(root: Path) -> list[Path]:
    """Every final (not hidden) model directory under ARTIFACTS_DIR: those a row or a resume could use."""
    return [
        config.parent
        for config in root.rglob("config.json")
        if not any(part.startswith(".") for part in config.relative_to(root).parts)
    ]


def assert_nothing_half_written(root: Path) -> None:
    """Every model directory at a final path is complete and loads; partial writes are hidden and unregistered."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    for directory in loadable_directories(root):
        assert is_complete_checkpoint(directory), f"{directory} is incomplete at a final path"
        if directory.name == "value_model":  # a PPO state's value head
            AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1)
        elif "reward_models" in directory.parts:
            AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1)
        else:
            AutoModelForCausalLM.from_pretrained(directory)
    registered = [Path(uri) for uri in Checkpoint.objects.values_list("uri", flat=True)]
    registered += [Path(uri) for uri in RewardModel.objects.values_list("uri", flat=True)]
    for uri in registered:
        assert not uri.name.startswith("."), f"a row points at the temporary directory {uri}"
        assert is_complete_checkpoint(uri), f"a row points at {uri}, which is not a complete model"


def no_partial_writes_left(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TMP_PREFIX}*") if p.is_dir()]


# --- generation -----------------------------------------------------------------------

GENERATION = {
    "max_new_tokens": 32,
    "temperature": 1.0,
    "top_p": 1.0,
    "seed": 3,
    "batch_size": 2,
    "device": "cpu",
}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_round_whose_worker_is_killed_fails_when_a_worker_starts_and_retry_fills_the_rest(
    project, tiny_checkpoint, workers
):
    make_prompts(project, 12)
    base = make_checkpoint(project, tiny_checkpoint)
    first = workers.start()
    round = round_open(project=project, checkpoints=[base], config=GENERATION)
    run = round.generation_run
    total = 12 * 2

    def some_responses():
        # Meanwhile the dashboard looks: a live worker's run is never taken for lost, even
        # through the silent start (worker boot, torch import, model load).
        runs_reap_lost()
        assert refreshed(run).status in TrainingRun.ACTIVE, run.error
        return Response.objects.filter(round=round).count()

    wait_for(some_responses, timeout=BOOT, what="the first responses", every=0.05, worker=first)
    first.kill()

    saved = set(Response.objects.filter(round=round).values_list("pk", "text"))
    assert 0 < len(saved) < total, "the round finished before the kill: make it longer"
    assert refreshed(run).status == TrainingRun.Status.RUNNING
    assert refreshed(round).status == Round.Status.GENERATING

    wait_until_stale(run)
    second = workers.start()  # a worker that starts fails the runs of dead workers
    wait_for(
        lambda: refreshed(run).status == TrainingRun.Status.FAILED,
        timeout=BOOT,
        what="the starting worker to fail the lost run",
        worker=second,
    )
    assert_lost_reason(run)
    assert "Retry continues with the responses already saved." in run.error
    assert refreshed(round).status == Round.Status.FAILED and round.error == run.error

    run_retry_launch(run)  # what the dashboard's Retry does for a generation run
    # The round opens inside the task; the run is recorded as finished just after.
    wait_for(
        lambda: refreshed(run).status not in TrainingRun.ACTIVE,
        timeout=BOOT,
        what="the retried generation to finish",
        worker=second,
    )
    assert refreshed(round).status == Round.Status.OPEN, round.error
    keys = list(
        Response.objects.filter(round=round).values_list("prompt_id", "checkpoint_id", "sample_index")
    )
    assert len(keys) == len(set(keys)) == total
    assert saved <= set(Response.objects.filter(round=round).values_list("pk", "text"))  # kept, not redone
    assert round.comparisons.count() == 12
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 2), run.error


# --- reward model ---------------------------------------------------------------------

TINY_RM = {
    "learning_rate": 1e-3,
    "max_steps": 20,
    "batch_size": 2,
    "warmup_ratio": 0.0,
    "eval_fraction": 0.25,
    "logging_steps": 1,
}


def judged(project, base: Checkpoint, n: int = 16) -> None:
    """``n`` comparisons judged by a simulated annotator who prefers the response saying 'thanks'."""
    make_judged_round(project, base, n)
    assert Judgment.objects.count() == n


def signed_in(admin_user) -> Client:
    client = Client()
    client.login(username=admin_user.username, password=PASSWORD)
    return client


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_reward_model_whose_worker_is_killed_while_writing_it_is_failed_by_the_dashboard_and_retrains_on_retry(
    project, tiny_checkpoint, admin_user, workers, settings, tmp_path
):
    base = make_checkpoint(project, tiny_checkpoint)
    judged(project, base)
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    first = workers.start(**{PAUSE_WRITES_ENV: str(pauses)})  # it stops between two files of the model
    run = run_start(
        kind="reward_model", project=project, config={"base_checkpoint_id": base.pk, "training": TINY_RM}
    )

    announced = wait_for(
        lambda: next(pauses.iterdir(), None), timeout=BOOT, what="the model's write to begin", worker=first
    )
    being_written = Path(announced.read_text())
    assert {"config.json", "model.safetensors"} <= {p.name for p in being_written.iterdir()}
    assert not (being_written / RESULTS_FILE).exists()  # the last file is still to come
    first.kill()
    second = workers.start()  # boots while the dead worker's heartbeat goes stale

    assert refreshed(run).status == TrainingRun.Status.RUNNING
    assert not RewardModel.objects.exists()
    assert not reward_model_dir(run).exists()
    assert partial_writes(reward_model_dir(run)) == [being_written]  # hidden, never read
    assert_nothing_half_written(Path(settings.ARTIFACTS_DIR))

    admin = signed_in(admin_user)
    page = reverse("dashboard-run", args=[run.pk])

    def dashboard_says_failed():
        html = admin.get(page, HTTP_HX_REQUEST="true").content.decode()  # the run page's poll
        return "The worker stopped responding at" in html and html

    wait_for(dashboard_says_failed, timeout=STALE + 60, what="the run page to show the run failed", every=0.5)
    assert_lost_reason(refreshed(run))
    assert "Retry trains the reward model again from the start." in run.error

    admin.post(reverse("dashboard-run-retry", args=[run.pk]))
    wait_for(
        lambda: refreshed(run).status not in TrainingRun.ACTIVE,
        timeout=BOOT,
        what="the retried run to finish",
        worker=second,
    )
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 2), run.error
    reward_model = RewardModel.objects.get(run=run)
    assert Path(reward_model.uri) == reward_model_dir(run)
    assert (reward_model_dir(run) / RESULTS_FILE).is_file()
    assert_nothing_half_written(Path(settings.ARTIFACTS_DIR))
    assert not no_partial_writes_left(Path(settings.ARTIFACTS_DIR))  # the retry cleared the killed write


# --- PPO ------------------------------------------------------------------------------

TINY_PPO = {
    "total_episodes": 4 * 16,
    "batch_size": 4,
    "mini_batch_size": 2,
    "num_ppo_epochs": 1,
    "response_length": 8,
    "reward_norm_samples": 4,
    "save_every": 1,
    "keep_states": 2,
    "learning_rate": 1e-4,
}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ppo_whose_worker_is_killed_is_failed_by_the_runs_list_and_resumes_on_retry(
    project, tiny_checkpoint, admin_user, workers, settings
):
    base = make_checkpoint(project, tiny_checkpoint)
    make_prompts(project, 8)
    # A reward model row on the tiny Llama: a fresh scalar head scores well enough to train against.
    reward_model = RewardModel.objects.create(project=project, base_checkpoint=base, uri=str(tiny_checkpoint))
    first = workers.start()
    run = run_start(
        kind="ppo",
        project=project,
        config={"policy_checkpoint_id": base.pk, "reward_model_id": reward_model.pk, "training": TINY_PPO},
    )
    state_dir = run_dir(run) / "ppo-state"

    wait_for(
        lambda: (state := latest_state(state_dir)) is not None and state.name >= "update-000002",
        timeout=BOOT,
        what="two saved PPO states",
        every=0.05,
        worker=first,
    )
    first.kill()
    second = workers.start()

    killed_at = latest_state(state_dir)
    assert refreshed(run).status == TrainingRun.Status.RUNNING
    assert not policy_dir(run).exists(), "PPO finished before the kill: make it longer"
    assert not Checkpoint.objects.filter(produced_by=run).exists()
    assert_nothing_half_written(Path(settings.ARTIFACTS_DIR))

    admin = signed_in(admin_user)

    def runs_list_says_failed():
        admin.get(reverse("dashboard-runs"))  # the admin opens the list of runs
        return refreshed(run).status == TrainingRun.Status.FAILED

    wait_for(runs_list_says_failed, timeout=STALE + 60, what="the runs list to fail the run", every=0.5)
    assert_lost_reason(run)
    assert "Retry resumes from the last saved PPO state" in run.error

    run_retry_launch(run)
    wait_for(
        lambda: refreshed(run).status not in TrainingRun.ACTIVE,
        timeout=BOOT,
        what="the retried PPO run to finish",
        worker=second,
    )
    assert (run.status, run.attempts) == (TrainingRun.Status.SUCCEEDED, 2), run.error
    resumed_after = int(killed_at.name.split("-")[1])
    assert f"Resuming PPO from {killed_at.name}" in run.log_tail
    assert f"after update {resumed_after}/16." in run.log_tail
    # Every update is charted once: those before the saved state by the killed attempt, the rest by the retry.
    steps = sorted(Metric.objects.filter(run=run, name="objective/kl").values_list("step", flat=True))
    assert steps == list(range(1, 17))
    checkpoint = Checkpoint.objects.get(produced_by=run)
    assert Path(checkpoint.uri) == policy_dir(run) and checkpoint.parent == base
    assert_nothing_half_written(Path(settings.ARTIFACTS_DIR))
    assert not no_partial_writes_left(Path(settings.ARTIFACTS_DIR))


# --- without a worker: the reaper's rules, fencing, partial writes -----------------------


def test_the_reaper_fails_a_lost_loop_with_its_steps_and_leaves_live_and_chunked_runs_alone(
    project, settings
):
    settings.RUN_STALE_AFTER_SECONDS = 60
    now = timezone.now()
    silent, fresh = now - timedelta(seconds=61), now - timedelta(seconds=5)

    def run(kind, heartbeat, **fields):
        return TrainingRun.objects.create(
            project=project, kind=kind, status=TrainingRun.Status.RUNNING, heartbeat_at=heartbeat, **fields
        )

    loop = run("loop", silent)
    step = run("reward_model", silent, parent=loop)
    waiting_step = TrainingRun.objects.create(project=project, kind="ppo", parent=loop)
    alive = run("ppo", fresh)
    chunked = run("generate", silent, config={"round_id": 0, "chunks": 2})
    chunk = TrainingRun.objects.create(project=project, kind="generate", parent=chunked)

    reaped = runs_reap_lost(now=now)

    assert {r.pk for r in reaped} >= {loop.pk}
    assert_lost_reason(refreshed(loop))
    assert "Retry skips the steps that already finished." in loop.error
    for child in (step, waiting_step):
        assert refreshed(child).status == TrainingRun.Status.FAILED and child.error
    assert refreshed(alive).status == TrainingRun.Status.RUNNING
    assert refreshed(chunked).status == TrainingRun.Status.RUNNING  # it follows its chunks
    assert refreshed(chunk).status == TrainingRun.Status.QUEUED
    assert "Declared lost" in loop.log_tail
    assert runs_reap_lost(now=now) == []  # once


def test_a_worker_whose_run_was_declared_lost_stops_and_leaves_the_run_as_failed(project, settings):
    settings.RUN_STALE_AFTER_SECONDS = 60
    run = TrainingRun.objects.create(project=project, kind="reward_model")
    steps_done = []

    with running(run.pk) as reporter:
        # The worker stalled past the window (a long pause, a partition) and was reaped meanwhile.
        TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=61))
        assert [r.pk for r in runs_reap_lost()] == [run.pk]
        for step in range(5):
            if reporter.should_stop():
                break
            steps_done.append(step)
            reporter.progress(step + 1, 5, force=True)

    assert steps_done == [0]  # its next write found the run gone and it stopped
    assert_lost_reason(refreshed(run))
    assert run.progress_done == 0 and "Finished." not in run.log_tail


def test_a_partial_write_left_by_a_killed_writer_is_never_read_and_is_cleared_by_the_next_write(tmp_path):
    final = tmp_path / "checkpoints" / "run-7"
    leftover = final.parent / f"{TMP_PREFIX}run-7-1a2b3c4d"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")  # a kill between two files
    state_dir = tmp_path / "ppo-state"
    (state_dir / f"{TMP_PREFIX}update-000003-5e6f7a8b").mkdir(parents=True)

    assert not final.exists() and not is_complete_checkpoint(final)
    assert latest_state(state_dir) is None  # a resume never picks up a partial state
    assert partial_writes(final) == [leftover]

    with atomic_directory(final) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"")

    assert is_complete_checkpoint(final) and partial_writes(final) == []
    assert sorted(p.name for p in final.parent.iterdir()) == ["run-7"]


def test_a_script_polling_a_lost_run_through_the_api_sees_it_failed(project, admin_user, settings):
    from rest_framework.test import APIClient

    settings.RUN_STALE_AFTER_SECONDS = 60
    run = TrainingRun.objects.create(
        project=project,
        kind="ppo",
        status=TrainingRun.Status.RUNNING,
        heartbeat_at=timezone.now() - timedelta(seconds=61),
    )
    client = APIClient()
    client.force_authenticate(admin_user)

    body = client.get(f"/api/runs/{run.pk}/").json()

    assert body["status"] == "failed"
    assert body["error"].startswith("The worker stopped responding at ")

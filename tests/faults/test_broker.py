"""The task broker fails: annotation goes on, launches say so and keep nothing, and recover by themselves.

Each test runs its own ``redis-server`` on a free port (never the machine's shared
one), stops it to cut the broker off and starts it again on the same port, while the
web side is driven through its views and a real worker process consumes the queue.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse

from annotation.models import Judgment, Response, Round
from tests.conftest import PASSWORD
from tests.dashboard.conftest import csrf_post
from tests.dashboard.test_launch import launch_url, reward_model_data, round_data
from tests.factories import make_round
from tests.services import needs
from tests.training.conftest import make_checkpoint, make_prompts
from tests.training.test_generation_task import FAST, ROOT, _subprocess_env, needs_postgres
from training.models import Checkpoint, Metric, PreferenceSnapshot, TrainingRun
from training.rounds import round_open
from training.tasks import generate_round

REDIS_SERVER = "/usr/bin/redis-server"
QUEUE_DOWN = "The queue cannot be reached"

pytestmark = needs(os.path.exists(REDIS_SERVER), f"needs {REDIS_SERVER}")


def _free_port(low: int, high: int) -> int:
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {low} and {high}")


class PrivateRedis:
    """A redis-server of this test's own, on a fixed free port, that the test can stop and start."""

    def __init__(self, folder: Path):
        # Below the ephemeral range, so no outgoing connection takes the port while the server is down.
        self.port = _free_port(20000, 32000)
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = self.folder / "redis.log"
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
                + ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.folder)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().ping()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """The broker goes away: its process ends and its port refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def queued(self, queue: str = "gpu") -> list[tuple[str, list]]:
        """The messages waiting in ``queue``, oldest first, as (task name, args)."""
        out = []
        for raw in reversed(self.client().lrange(queue, 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            out.append((message["headers"]["task"], args))
        return out


@pytest.fixture
def broker(tmp_path, point_broker_at, settings):
    """A private Redis, up, with Tandem's broker pointed at it (with the options a Redis broker gets)."""
    redis = PrivateRedis(tmp_path)
    redis.start()
    point_broker_at(redis.url, **settings.REDIS_BROKER_TRANSPORT_OPTIONS)
    yield redis
    redis.stop()


def _admin_client(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    return client


class _JudgeForm(HTMLParser):
    """The fields the annotator's page carries in ``#judge-form`` (what the browser would post)."""

    def __init__(self, html: str):
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "judge-form":
            self._inside, self.action = True, attrs["action"]
        elif self._inside and tag == "input" and attrs.get("type") == "hidden":
            self.fields[attrs["name"]] = attrs.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._inside = False


def _judge_everything(client: Client, round: Round) -> list[str]:
    """Open the round and judge item after item over HTMX, as the page does; the client ids posted.

    The first answer is posted twice (a browser retrying after a lost response).
    """
    page = client.get(reverse("annotate-round", args=[round.pk])).content.decode()
    token = client.cookies["csrftoken"].value
    posted: list[str] = []
    while (form := _JudgeForm(page)).action:
        data = {**form.fields, "choice": "a_much", "time_spent_ms": "2100"}
        answered = client.post(form.action, data, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token)
        assert answered.status_code == 200
        assert "Saved." in answered.content.decode()
        if not posted:
            again = client.post(form.action, data, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token)
            assert again.status_code == 200 and "Already saved." in again.content.decode()
        posted.append(data["client_id"])
        page = answered.content.decode()
        assert len(posted) <= 50, "the page keeps offering work"
    return posted


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_annotation_goes_on_while_the_broker_is_down_and_launches_work_again_when_it_is_back(
    broker, annotator, admin_user, project
):
    round = make_round(project, 4)
    base = Checkpoint.objects.create(project=project, version=0, uri="/models/base", status="published")
    admin = _admin_client(admin_user)
    # A launch while the broker is up leaves a pooled connection behind, as in a long-running web process.
    assert csrf_post(admin, launch_url(project, "reward-model"), reward_model_data(base)).status_code == 302
    assert [name for name, _ in broker.queued()] == ["training.tasks.train_reward_model"]
    runs_before = set(TrainingRun.objects.values_list("pk", flat=True))
    responses_before = Response.objects.count()

    broker.stop()

    annotator_client = Client(enforce_csrf_checks=True)
    assert annotator_client.login(username=annotator.username, password=PASSWORD)
    posted = _judge_everything(annotator_client, round)
    assert len(posted) == 4
    saved = list(Judgment.objects.filter(annotator=annotator).values_list("client_id", "comparison_id"))
    assert sorted(str(client_id) for client_id, _ in saved) == sorted(posted)
    assert len({comparison for _, comparison in saved}) == 4  # every item judged, none twice

    for kind, data in [
        ("reward-model", reward_model_data(base)),
        ("round", round_data(base, samples_per_checkpoint="2", prompt_count="2")),
    ]:
        refused = csrf_post(admin, launch_url(project, kind), data)
        assert refused.status_code == 503, kind
        assert QUEUE_DOWN in refused.content.decode()
    assert set(TrainingRun.objects.values_list("pk", flat=True)) == runs_before
    assert list(Round.objects.values_list("pk", flat=True)) == [round.pk]
    assert Response.objects.count() == responses_before and not PreferenceSnapshot.objects.exists()

    broker.start()  # the same port, empty (no persistence in this test's Redis)

    launched = csrf_post(admin, launch_url(project, "reward-model"), reward_model_data(base))
    assert launched.status_code == 302
    opened = csrf_post(admin, launch_url(project, "round"), round_data(base, samples_per_checkpoint="2"))
    assert opened.status_code == 302
    run = TrainingRun.objects.exclude(pk__in=runs_before).get(kind=TrainingRun.Kind.REWARD_MODEL)
    new_round = Round.objects.exclude(pk=round.pk).get()
    assert run.status == TrainingRun.Status.QUEUED and run.celery_task_id
    assert new_round.status == Round.Status.GENERATING
    assert broker.queued() == [
        ("training.tasks.train_reward_model", [run.pk]),
        ("training.tasks.generate_round", [new_round.generation_run_id]),
    ]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_frozen_broker_fails_a_launch_within_seconds_instead_of_hanging_it(broker, admin_user, project):
    base = Checkpoint.objects.create(project=project, version=0, uri="/models/base", status="published")
    admin = _admin_client(admin_user)
    assert csrf_post(admin, launch_url(project, "reward-model"), reward_model_data(base)).status_code == 302
    runs_before = set(TrainingRun.objects.values_list("pk", flat=True))
    answers = []

    def launch():
        try:
            answers.append(csrf_post(admin, launch_url(project, "reward-model"), reward_model_data(base)))
        finally:
            connections.close_all()

    # The server stops answering but its connections stay open (a hung host, a dropped network path).
    broker.process.send_signal(signal.SIGSTOP)
    try:
        attempt = threading.Thread(target=launch, daemon=True)
        attempt.start()
        attempt.join(timeout=90)  # the socket timeout is 5 s; generous for a loaded machine
        assert not attempt.is_alive(), "the launch still waits on the frozen broker"
    finally:
        broker.process.send_signal(signal.SIGCONT)
    [answer] = answers
    assert answer.status_code == 503 and QUEUE_DOWN in answer.content.decode()
    assert set(TrainingRun.objects.values_list("pk", flat=True)) == runs_before


# --- duplicate deliveries, with a real worker ------------------------------------------------


def _start_worker(broker: PrivateRedis, log_path: Path, concurrency: int) -> subprocess.Popen:
    """A Celery worker on the gpu queue with ``concurrency`` processes, sharing the test database."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "default,gpu"]
            + ["--pool", "prefork", "-c", str(concurrency), "--without-gossip", "--without-mingle"]
            + ["--without-heartbeat", "--loglevel", "INFO"],
            cwd=ROOT,
            env=_subprocess_env(CELERY_BROKER_URL=broker.url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _task_lines(log_path: Path, task_id: str, event: str) -> list[int]:
    """Line numbers of the worker log where task ``task_id`` was ``received`` or ``succeeded``."""
    marker = f"[{task_id}] {event}"
    return [i for i, line in enumerate(log_path.read_text().splitlines()) if marker in line]


def _wait_for_deliveries(worker, log_path: Path, task_id: str, count: int, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while len(_task_lines(log_path, task_id, "succeeded")) < count:
        assert worker.poll() is None, f"the worker died:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{count} deliveries not done:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.3)


def _round_state(round: Round) -> dict:
    run = TrainingRun.objects.get(pk=round.generation_run_id)
    round.refresh_from_db()
    return {
        "round": (round.status, round.opened_at),
        "responses": sorted(Response.objects.filter(round=round).values_list("pk", "text")),
        "comparisons": sorted(round.comparisons.values_list("pk", flat=True)),
        "run": (run.status, run.attempts, run.started_at, run.finished_at, run.outputs, run.log_tail),
        "metrics": Metric.objects.filter(run=run).count(),
    }


@pytest.mark.slow
@pytest.mark.postgres
@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_task_delivered_twice_does_its_work_once(broker, project, tiny_checkpoint, tmp_path):
    make_prompts(project, 3)
    base = make_checkpoint(project, tiny_checkpoint)
    round = round_open(project=project, checkpoints=[base], config=FAST)  # sent when it commits
    run = TrainingRun.objects.get(pk=round.generation_run_id)
    redis = broker.client()
    [message] = redis.lrange("gpu", 0, -1)
    # The broker hands out the very same message twice (as Redis does when it restores an
    # unacknowledged message), and two worker processes take one copy each, at once.
    redis.lpush("gpu", message)
    log_path = tmp_path / "worker.log"
    worker = _start_worker(broker, log_path, concurrency=2)
    try:
        _wait_for_deliveries(worker, log_path, run.celery_task_id, 2)
        received = _task_lines(log_path, run.celery_task_id, "received")
        first_done = _task_lines(log_path, run.celery_task_id, "succeeded")[0]
        assert len(received) == 2 and max(received) < first_done  # the two deliveries overlapped

        done = _round_state(round)
        assert done["round"][0] == Round.Status.OPEN
        assert done["run"][:2] == (TrainingRun.Status.SUCCEEDED, 1)  # one attempt: one execution worked
        assert done["run"][-1].count("Started on attempt") == 1
        assert len(done["responses"]) == 6 and len(done["comparisons"]) == 3

        # Later the same task arrives once more (a publisher retry, same task id): nothing changes.
        generate_round.apply_async(args=[run.pk], task_id=run.celery_task_id, retry=False)
        _wait_for_deliveries(worker, log_path, run.celery_task_id, 3)
        assert _round_state(round) == done
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

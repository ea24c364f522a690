"""The dashboard in real Chromium: launch a run, watch it finish live, see its charts.

A launched run is carried out by the real task body of its kind (``training.tasks``: a
snapshot of the judgments, TRL's RewardTrainer or DPOTrainer on a tiny model) in a worker
thread, as a Celery worker would; only the broker hop is left out.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from annotation.models import Project
from tests.conftest import PASSWORD, SCREENSHOTS
from tests.dashboard.conftest import make_vote_round
from training.models import Checkpoint, Metric, RewardModel, TrainingRun

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


def worker_thread(run_id: int) -> None:
    """The task of the run's kind (training.run_kinds), as a worker would run it."""
    from celery import current_app

    from training.run_kinds import run_kind

    try:
        kind = TrainingRun.objects.values_list("kind", flat=True).get(pk=run_id)
        current_app.tasks[run_kind(kind).task].run(run_id)
    finally:
        connection.close()


class InProcessQueue:
    """Stands in for the broker: sending the task hands the run to a worker thread."""

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def apply_async(self, args, retry=False):
        thread = threading.Thread(target=worker_thread, args=(args[0],), daemon=True)
        thread.start()
        self.threads.append(thread)
        return type("Result", (), {"id": f"in-process-{args[0]}"})()


@pytest.fixture
def worker(monkeypatch, settings, tmp_path):
    from training import runs

    settings.ARTIFACTS_DIR = tmp_path
    queue = InProcessQueue()
    monkeypatch.setattr(runs, "task_named", lambda name: queue)
    yield queue
    for thread in queue.threads:
        thread.join(timeout=60)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


@pytest.fixture
def history(project, annotator, other_annotator, tiny_checkpoint):
    """A project with three checkpoints, three rounds of votes and a PPO run in progress."""
    v0 = Checkpoint.objects.create(
        project=project, version=0, uri=str(tiny_checkpoint), origin="base", status="published", notes="tiny"
    )
    ppo = TrainingRun.objects.create(
        project=project, kind="ppo", status="succeeded", progress_total=8, progress_done=8
    )
    v1 = Checkpoint.objects.create(
        project=project, version=1, uri=str(tiny_checkpoint), parent=v0, produced_by=ppo, status="published"
    )
    v2 = Checkpoint.objects.create(project=project, version=2, uri="/models/v2", parent=v1)
    make_vote_round(
        project, [v1, v0], ["left"] * 7 + ["right"] * 3 + ["tie"], annotators=[annotator], number=1
    )
    make_vote_round(
        project,
        [v2, v1],
        ["left"] * 5 + ["right"] * 4 + ["both_bad"],
        annotators=[annotator, other_annotator],
        number=2,
    )
    _rnd, latest = make_vote_round(
        project, [v2, v0], ["left"] * 8 + ["right"] * 2, annotators=[annotator, other_annotator], number=3
    )
    for comparison in latest[:2]:  # two disagreements, so agreement is high but not perfect
        judgment = comparison.judgments.get(annotator=other_annotator)
        judgment.ranking = list(reversed(judgment.ranking))
        judgment.save()
    Project.objects.create(name="Code review assistant", description="Not started yet.")
    TrainingRun.objects.create(
        project=project,
        kind="ppo",
        status="running",
        stage="PPO update 3 of 8",
        progress_done=3,
        progress_total=8,
    )
    return v0, v1, v2


def log_in(page, live_server, user):
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(f"{live_server.url}/dashboard/")


def test_an_admin_launches_a_run_and_watches_it_finish(
    page, live_server, admin_user, project, history, worker
):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    log_in(page, live_server, admin_user)
    cards = page.locator(".dash-project-card h2").all_inner_texts()
    assert cards == ["Code review assistant", project.name]
    page.screenshot(path=str(SCREENSHOTS / "dashboard-overview.png"), full_page=True)

    # Launch a reward model with the defaults.
    page.locator(f"section[aria-labelledby=project-{project.pk}]").get_by_text("Train reward model").click()
    page.wait_for_selector("form[data-launch-form=reward-model]")
    assert page.input_value("#id_batch_size") == "4"
    page.click("button[type=submit].primary")
    page.wait_for_url("**/dashboard/runs/*/")
    run = TrainingRun.objects.get(kind="reward_model")
    assert page.url.endswith(f"/dashboard/runs/{run.pk}/")
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    # The progress bar reaches 100% without a reload, and polling stops.
    page.wait_for_selector("[data-testid=run-percent]:text('100%')", timeout=90_000)
    page.wait_for_selector("#run-live[data-run-status=succeeded]", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.get_attribute("#run-live", "hx-trigger") is None
    assert page.get_attribute(".dash-bigbar [role=progressbar]", "aria-valuenow") == "100"
    reward_model = RewardModel.objects.get(run=run)
    log = page.text_content("[data-testid=run-log]")  # folded away once done
    assert f"Reward model #{reward_model.pk}: held-out accuracy" in log and "Finished." in log

    # The loss chart: a canvas, titled, with the step axis and a legend entry.
    page.wait_for_selector("#charts[data-active=false]", timeout=10_000)
    loss = page.locator("#metric-loss")
    assert loss.locator("canvas").count() == 1
    assert loss.locator(".u-title").inner_text() == "loss"
    axis_labels = page.evaluate("tandemCharts['loss'].plot.axes.map(a => a.label)")  # drawn on the canvas
    assert axis_labels == ["step", "loss"]
    assert "loss" in loss.locator(".u-legend").inner_text()
    names = page.eval_on_selector_all("figure.dash-chart", "els => els.map(e => e.dataset.metric)")
    assert names[:2] == ["loss", "accuracy"] and "eval/accuracy" in names
    points = page.evaluate("fetch(document.getElementById('charts').dataset.metricsUrl).then(r => r.json())")
    logged = Metric.objects.filter(run=run, name="loss").count()
    assert logged >= 5 and len(points["series"]["loss"]) == logged
    page.screenshot(path=str(SCREENSHOTS / "dashboard-run.png"), full_page=True)

    # A second launch with bad values: errors next to the fields, nothing started.
    page.goto(f"{live_server.url}/dashboard/projects/{project.pk}/launch/reward-model/")
    page.fill("#id_learning_rate", "abc")
    page.fill("#id_batch_size", "-4")
    page.click("button[type=submit].primary")
    page.wait_for_selector("#id_learning_rate_errors")
    assert page.inner_text("#id_learning_rate_errors") == "Enter a number."
    assert "greater than or equal to 1" in page.inner_text("#id_batch_size_errors")
    assert page.input_value("#id_learning_rate") == "abc"  # the input is kept for correction
    page.screenshot(path=str(SCREENSHOTS / "dashboard-launch-errors.png"), full_page=True)
    assert TrainingRun.objects.filter(kind="reward_model").count() == 1
    assert len(worker.threads) == 1

    # The leaderboard of the seeded votes.
    page.goto(f"{live_server.url}/dashboard/projects/{project.pk}/leaderboard/")
    versions = page.locator(".dash-leaderboard tbody tr td:nth-child(2) strong").all_inner_texts()
    assert versions[0] == "v2" and versions[-1] == "v0"
    page.screenshot(path=str(SCREENSHOTS / "dashboard-leaderboard.png"), full_page=True)
    assert page.errors == []


def test_an_admin_launches_dpo_and_watches_its_margins_chart(
    page, live_server, admin_user, project, history, worker
):
    log_in(page, live_server, admin_user)
    page.goto(f"{live_server.url}/dashboard/projects/{project.pk}/launch/dpo/")
    page.wait_for_selector("form[data-launch-form=dpo]")
    assert page.input_value("#id_beta") == "0.1"
    page.fill("#id_max_steps", "6")
    page.fill("#id_learning_rate", "1e-3")
    page.click("button[type=submit].primary")
    page.wait_for_url("**/dashboard/runs/*/")
    run = TrainingRun.objects.get(kind="dpo")

    page.wait_for_selector("[data-testid=run-percent]:text('100%')", timeout=90_000)
    page.wait_for_selector("#run-live[data-run-status=succeeded]", timeout=10_000)
    checkpoint = Checkpoint.objects.get(produced_by=run)
    assert checkpoint.status == "draft" and checkpoint.parent_id == run.config["policy_checkpoint_id"]
    page.wait_for_selector("#charts[data-active=false]", timeout=10_000)
    names = page.eval_on_selector_all("figure.dash-chart", "els => els.map(e => e.dataset.metric)")
    assert {"loss", "rewards/margins", "rewards/accuracies"} <= set(names)
    assert page.locator("#metric-rewards-margins canvas").count() == 1
    page.screenshot(path=str(SCREENSHOTS / "dashboard-dpo-run.png"), full_page=True)
    assert page.errors == []

"""The dashboard in real Chromium: launch a reward-model run, watch it finish live, see its charts.

The worker's side is simulated: launching hands the run to a thread that drives it
through the real ``training.runs.running`` reporter (progress, stage, metrics, log),
as a Celery worker would, without a broker or a model.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from annotation.models import Project
from tests.conftest import PASSWORD
from tests.dashboard.conftest import make_vote_round
from training.models import Checkpoint, TrainingRun

# Playwright's sync API runs an event loop in this thread; Django's ORM calls from the
# test body are still plain synchronous calls.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
STEPS = 12


def simulated_worker(run_id: int) -> None:
    """What train_reward_model does to its run row, minus the model: 12 steps, a few metrics."""
    from training.runs import running

    try:
        time.sleep(1.0)  # queued for a moment, as with a real worker
        with running(run_id) as reporter:
            reporter.interval = 0.3
            reporter.stage("Building the preference snapshot")
            time.sleep(0.6)
            reporter.stage("Training the reward model")
            for step in range(1, STEPS + 1):
                time.sleep(0.45)
                loss = 0.69 * 0.86**step + 0.05
                reporter.metrics(
                    step, {"loss": loss, "accuracy": min(0.98, 0.5 + 0.04 * step), "margin": 0.1 * step}
                )
                reporter.log(f"step {step}/{STEPS} loss {loss:.3f}")
                reporter.progress(step, STEPS)
            reporter.metrics(STEPS, {"eval/accuracy": 0.74, "eval/loss": 0.52})
            reporter.stage("Evaluating on held-out pairs")
            reporter.run.outputs = {"reward_model_id": None}
    finally:
        connection.close()


class FakeTask:
    """Stands in for the Celery task: 'sending' it starts the simulated worker."""

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def apply_async(self, args, retry=False):
        thread = threading.Thread(target=simulated_worker, args=(args[0],), daemon=True)
        thread.start()
        self.threads.append(thread)
        return type("Result", (), {"id": f"fake-{args[0]}"})()


@pytest.fixture
def worker(monkeypatch):
    from training import launch

    fake = FakeTask()
    monkeypatch.setattr(launch, "task_for", lambda name: fake)
    yield fake
    for thread in fake.threads:
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


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
def history(project, annotator, other_annotator):
    """A project with three checkpoints, two rounds of votes and a PPO run in progress."""
    v0 = Checkpoint.objects.create(
        project=project, version=0, uri="/models/base", origin="base", status="published", notes="SmolLM2"
    )
    ppo = TrainingRun.objects.create(
        project=project, kind="ppo", status="succeeded", progress_total=8, progress_done=8
    )
    v1 = Checkpoint.objects.create(
        project=project, version=1, uri="/models/v1", parent=v0, produced_by=ppo, status="published"
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
    page.wait_for_selector("[data-testid=run-percent]:text('100%')", timeout=40_000)
    page.wait_for_selector("#run-live[data-run-status=succeeded]", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.get_attribute("#run-live", "hx-trigger") is None
    assert page.get_attribute(".dash-bigbar [role=progressbar]", "aria-valuenow") == "100"
    assert "step 12/12" in page.text_content("[data-testid=run-log]")  # folded away once done

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
    assert len(points["series"]["loss"]) == STEPS
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

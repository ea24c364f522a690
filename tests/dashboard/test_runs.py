"""Watching a run: the polled partial stops polling when the run ends; metrics JSON; cancel and retry."""

from __future__ import annotations

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from tests.dashboard.conftest import csrf_post
from training.dashboard.views import eta_of, human_duration
from training.models import Metric, TrainingRun


def poll(client, run):
    return client.get(reverse("dashboard-run", args=[run.pk]), HTTP_HX_REQUEST="true")


def test_it_renders_the_run_page_with_progress_stage_and_log(admin_client, running_run):
    html = admin_client.get(reverse("dashboard-run", args=[running_run.pk])).content.decode()
    assert 'aria-valuenow="30"' in html
    assert "Training" in html
    assert "step 3/10 loss 0.69" in html
    assert 'hx-trigger="every 2s"' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "js/dashboard.js" in html
    assert "Cancel run" in html


def test_it_polls_while_the_run_is_active_and_stops_when_it_ends(admin_client, running_run):
    live = poll(admin_client, running_run)
    html = live.content.decode()
    assert live.status_code == 200
    assert "<html" not in html  # the partial only
    assert 'hx-trigger="every 2s"' in html and 'id="run-live"' in html

    TrainingRun.objects.filter(pk=running_run.pk).update(
        status="succeeded", progress_done=10, finished_at=timezone.now()
    )
    html = poll(admin_client, running_run).content.decode()
    assert 'id="run-live"' in html
    assert "hx-trigger" not in html and "hx-get" not in html  # swapped in without a trigger: polling stops
    assert 'aria-valuenow="100"' in html
    assert 'data-run-active="false"' in html


def test_it_explains_a_failure_in_plain_words_and_offers_retry(admin_client, running_run):
    TrainingRun.objects.filter(pk=running_run.pk).update(
        status="failed", error="The GPU ran out of memory. Lower the batch size.", finished_at=timezone.now()
    )
    html = poll(admin_client, running_run).content.decode()
    assert "Why it failed:" in html and "The GPU ran out of memory" in html
    assert "Retry" in html and "hx-trigger" not in html


def test_it_estimates_the_time_left_from_the_pace_so_far(running_run):
    now = running_run.started_at + timedelta(seconds=30)
    assert eta_of(running_run, now=now) == timedelta(seconds=70)  # 3 steps in 30 s, 7 to go
    assert human_duration(timedelta(seconds=70)) == "1 min"
    running_run.status = "succeeded"
    assert eta_of(running_run, now=now) is None


def test_it_serves_metrics_since_a_cursor_or_a_step(admin_client, running_run):
    Metric.objects.bulk_create(
        [Metric(run=running_run, step=s, name="loss", value=1.0 / s) for s in (1, 2, 3)]
        + [Metric(run=running_run, step=s, name="eval/accuracy", value=0.5) for s in (2,)]
    )
    url = reverse("dashboard-run-metrics", args=[running_run.pk])
    data = admin_client.get(url).json()
    assert data["active"] is True
    assert data["series"]["loss"] == [[1, 1.0], [2, 0.5], [3, 1 / 3]]
    assert data["series"]["eval/accuracy"] == [[2, 0.5]]

    Metric.objects.create(run=running_run, step=4, name="loss", value=0.2)
    later = admin_client.get(url, {"after": data["cursor"]}).json()
    assert later["series"] == {"loss": [[4, 0.2]]}
    assert admin_client.get(url, {"since": 3}).json()["series"] == {"loss": [[4, 0.2]]}
    nothing = admin_client.get(url, {"after": later["cursor"]}).json()
    assert nothing["series"] == {} and nothing["cursor"] == later["cursor"]


def test_it_cancels_a_run_by_post_with_csrf(admin_client, running_run):
    url = reverse("dashboard-run-cancel", args=[running_run.pk])
    assert admin_client.post(url).status_code == 403  # no CSRF token
    assert admin_client.get(url).status_code == 405
    response = csrf_post(admin_client, url)
    assert response.status_code == 302
    running_run.refresh_from_db()
    assert running_run.cancel_requested and running_run.status == "running"  # the worker stops it


def test_it_retries_a_failed_run(admin_client, running_run, django_capture_on_commit_callbacks):
    TrainingRun.objects.filter(pk=running_run.pk).update(status="failed", error="boom")
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(admin_client, reverse("dashboard-run-retry", args=[running_run.pk]))
    assert response.status_code == 302
    running_run.refresh_from_db()
    assert running_run.status == "queued" and running_run.error == ""
    assert len(sends) == 1


def test_it_lists_runs_filtered_by_project_and_status(admin_client, project, running_run):
    TrainingRun.objects.create(project=project, kind="ppo", status="failed")
    html = admin_client.get(reverse("dashboard-runs"), {"project": project.pk, "status": "running"}).content
    assert f"Reward model #{running_run.pk}".encode() in html
    assert b"PPO #" not in html


VERDICT = "held-out accuracy 0.55 [0.42, 0.68] on 40 pairs from 12 prompts: not better than chance"


def test_it_shows_a_reward_model_that_did_not_learn_with_its_interval(
    admin_client, project, unlearned_reward_model
):
    rm = unlearned_reward_model
    html = admin_client.get(reverse("dashboard-run", args=[rm.run_id])).content.decode()
    assert f"Reward model #{rm.pk}: {VERDICT}" in html and "did not learn" in html

    # The loop that made it, and PPO launched on it by hand, say the same.
    loop = TrainingRun.objects.create(project=project, kind="loop", status="failed")
    TrainingRun.objects.filter(pk=rm.run_id).update(parent=loop)
    html = admin_client.get(reverse("dashboard-run", args=[loop.pk])).content.decode()
    assert f"Reward model #{rm.pk}: {VERDICT}" in html
    ppo = TrainingRun.objects.create(project=project, kind="ppo", config={"reward_model_id": rm.pk})
    html = admin_client.get(reverse("dashboard-run", args=[ppo.pk])).content.decode()
    assert f"Against reward model #{rm.pk}" in html and VERDICT in html and "did not learn" in html

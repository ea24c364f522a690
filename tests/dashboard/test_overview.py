"""The overview: each project's figures, in a number of queries that does not grow with projects."""

from __future__ import annotations

from django.urls import reverse

from annotation.models import Project
from tests.dashboard.conftest import make_vote_round
from training.models import Checkpoint, TrainingRun


def add_project(name, annotators):
    project = Project.objects.create(name=name)
    base = Checkpoint.objects.create(project=project, version=0, uri="/b", status="published")
    new = Checkpoint.objects.create(project=project, version=1, uri="/n", parent=base)
    make_vote_round(project, [base, new], ["right", "right", "left", "tie"], annotators=annotators)
    TrainingRun.objects.create(project=project, kind="reward_model", status="running", progress_total=4)
    return project


def test_it_shows_where_each_project_stands(admin_client, annotator, other_annotator):
    project = add_project("Helpful", [annotator, other_annotator])
    response = admin_client.get(reverse("dashboard"))
    summary = response.context["summaries"][0]
    assert summary.project == project
    assert summary.current_round.number == 1
    assert (summary.judgments_today, summary.judgments_total) == (8, 8)
    assert summary.active_annotators == 2
    assert summary.agreement == 1.0  # both annotators gave the same verdicts
    assert summary.newest_checkpoint.version == 1
    # v1 won 2 of 4 votes per annotator, lost 1, tied 1: (2 + 0.5) / 4
    assert summary.win_rate == 0.625 and summary.win_votes == 8
    assert len(summary.active_runs) == 1
    html = response.content.decode()
    assert "62%" in html and "Runs in progress" in html  # widthratio rounds half to even


def test_it_keeps_the_query_count_flat(admin_client, annotator, other_annotator, django_assert_num_queries):
    add_project("One", [annotator, other_annotator])
    url = reverse("dashboard")
    admin_client.get(url)  # warm up
    # session, user with roles, lost runs (reaper), projects, rounds, checkpoints, runs,
    # judgments + items (votes), judgments (alpha)
    with django_assert_num_queries(10) as one:
        admin_client.get(url)
    add_project("Two", [annotator])
    add_project("Three", [other_annotator])
    with django_assert_num_queries(len(one.captured_queries)):
        response = admin_client.get(url)
    assert len(response.context["summaries"]) == 3

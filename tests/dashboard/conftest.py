"""Fixtures for the dashboard tests: a logged-in admin, checkpoints, a round with votes between checkpoints."""

from __future__ import annotations

import pytest
from django.test import Client

from annotation.models import Comparison, ComparisonItem, Judgment, Prompt, Response, Round
from tests.conftest import PASSWORD
from training.models import Checkpoint, RewardModel, TrainingRun


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.login(username=admin_user.username, password=PASSWORD)
    return client


def csrf_post(client: Client, url: str, data: dict | None = None, **extra):
    """POST the way a browser does: with the CSRF token from the cookie."""
    client.get("/dashboard/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    return client.post(url, data or {}, HTTP_X_CSRFTOKEN=token, **extra)


@pytest.fixture
def base_checkpoint(project) -> Checkpoint:
    return Checkpoint.objects.create(
        project=project, version=0, uri="/models/base", origin="base", status="published"
    )


@pytest.fixture
def child_checkpoint(project, base_checkpoint) -> Checkpoint:
    run = TrainingRun.objects.create(project=project, kind="ppo", status="succeeded")
    return Checkpoint.objects.create(
        project=project, version=1, uri="/models/v1", parent=base_checkpoint, produced_by=run
    )


@pytest.fixture
def running_run(project, admin_user) -> TrainingRun:
    from django.utils import timezone

    return TrainingRun.objects.create(
        project=project,
        kind="reward_model",
        status="running",
        stage="Training",
        progress_done=3,
        progress_total=10,
        started_at=timezone.now() - timezone.timedelta(seconds=30),
        log_tail="12:00:00 Started on attempt 1.\n12:00:01 step 3/10 loss 0.69",
        created_by=admin_user,
    )


@pytest.fixture
def unlearned_reward_model(project) -> RewardModel:
    """A finished reward model whose held-out interval includes chance."""
    run = TrainingRun.objects.create(project=project, kind="reward_model", status="succeeded")
    return RewardModel.objects.create(
        project=project,
        run=run,
        uri="/rm",
        accuracy=0.55,
        learned=False,
        evaluation={
            "pairs": 40,
            "prompts": 12,
            "accuracy": 0.55,
            "accuracy_lower": 0.42,
            "accuracy_upper": 0.68,
        },
    )


def make_vote_round(project, checkpoints, verdicts, *, number=1, annotators=()):
    """A round with one pairwise comparison per verdict between checkpoints[0] (left) and checkpoints[1].

    ``verdicts``: "left", "right", "tie" or "both_bad"; each judged by the annotators given
    (one judgment each).
    """
    rnd = Round.objects.create(project=project, number=number, status="open")
    rnd.checkpoints.set(checkpoints)
    comparisons = []
    for i, verdict in enumerate(verdicts):
        prompt = Prompt.objects.create(project=project, conversation=[{"role": "user", "content": f"Q{i}?"}])
        left, right = (
            Response.objects.create(
                prompt=prompt, round=rnd, checkpoint=c, text=f"answer of v{c.version} to {i}"
            )
            for c in checkpoints
        )
        comparison = Comparison.objects.create(round=rnd, prompt=prompt)
        ComparisonItem.objects.create(comparison=comparison, response=left, position=0)
        ComparisonItem.objects.create(comparison=comparison, response=right, position=1)
        ranking = {
            "left": [[left.pk], [right.pk]],
            "right": [[right.pk], [left.pk]],
            "tie": [[left.pk, right.pk]],
            "both_bad": [[left.pk], [right.pk]],
        }[verdict]
        for annotator in annotators:
            Judgment.objects.create(
                comparison=comparison,
                annotator=annotator,
                ranking=ranking,
                is_tie=verdict == "tie",
                both_bad=verdict == "both_bad",
                order_shown=[left.pk, right.pk],
                time_spent_ms=4000 + 1000 * i,
            )
        comparisons.append(comparison)
    return rnd, comparisons

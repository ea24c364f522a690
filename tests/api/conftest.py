"""API fixtures: token clients for the cast, and a project with one of everything."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.exports.conftest import judged  # noqa: F401  (a fixture, used by name)
from training.exports import export_run
from training.models import Export, RewardModel, TrainingRun


def token_client(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def world(judged, admin_user):  # noqa: F811
    """The judged project plus a finished export, a run and its reward model, so every detail URL
    has an object."""
    export = export_run(Export.objects.create(project=judged, format=Export.Format.TRL_JSONL))
    assert export.status == Export.Status.SUCCEEDED, export.error
    run = TrainingRun.objects.create(
        project=judged, kind=TrainingRun.Kind.REWARD_MODEL, created_by=admin_user
    )
    reward_model = RewardModel.objects.create(  # one whose held-out interval includes chance
        project=judged,
        run=run,
        uri="/rm",
        accuracy=0.55,
        learned=False,
        evaluation={"pairs": 40, "prompts": 12, "accuracy_lower": 0.42, "accuracy_upper": 0.68},
    )
    return {"project": judged, "export": export, "run": run, "reward_model": reward_model}


@pytest.fixture
def no_queue(monkeypatch):
    """Nothing reaches a broker: launches and exports are recorded, not sent."""
    import training.runs
    from training import tasks

    sent = []
    monkeypatch.setattr(training.runs, "enqueue", lambda run, task, **kw: sent.append(("run", run.pk)))
    monkeypatch.setattr(
        tasks.export_build, "apply_async", lambda args, **kw: sent.append(("export", args[0]))
    )
    return sent

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


class RecordingQueue:
    """Stands in for the broker: each task sent is recorded as (task name, object id)."""

    def __init__(self):
        self.sent: list[tuple[str, int]] = []

    def task_named(self, name: str):
        queue = self

        class Recorded:
            def apply_async(self, args, **kwargs):
                queue.sent.append((name.rsplit(".", 1)[-1], args[0]))
                return type("Result", (), {"id": f"recorded-{args[0]}"})()

        return Recorded()


@pytest.fixture
def no_queue(monkeypatch):
    """Nothing reaches a broker: launches and exports are recorded, not sent
    (``[("train_ppo", run id), ("export_build", export id), ...]``)."""
    import training.runs

    queue = RecordingQueue()
    monkeypatch.setattr(training.runs, "task_named", queue.task_named)
    return queue.sent

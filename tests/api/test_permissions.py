"""Every endpoint, every role: researchers read, admins write, annotators 403, anonymous 401."""

from __future__ import annotations

import pytest

from annotation.models import Comparison, Judgment, Prompt, Round
from tests.api.conftest import token_client
from training.models import Checkpoint, RewardModel

pytestmark = pytest.mark.django_db


def _reads(w) -> list[str]:
    project = w["project"]
    return [
        "/api/",
        "/api/projects/",
        f"/api/projects/{project.pk}/",
        "/api/prompts/",
        f"/api/prompts/{Prompt.objects.filter(project=project).first().pk}/",
        "/api/rounds/",
        f"/api/rounds/{Round.objects.filter(project=project).first().pk}/",
        "/api/comparisons/",
        f"/api/comparisons/{Comparison.objects.first().pk}/",
        "/api/judgments/",
        f"/api/judgments/{Judgment.objects.first().pk}/",
        "/api/checkpoints/",
        f"/api/checkpoints/{Checkpoint.objects.first().pk}/",
        "/api/reward-models/",
        f"/api/reward-models/{RewardModel.objects.first().pk}/",
        "/api/runs/",
        f"/api/runs/{w['run'].pk}/",
        "/api/exports/",
        f"/api/exports/{w['export'].pk}/",
        f"/api/exports/{w['export'].pk}/download/",
    ]


def _writes(w) -> list[tuple[str, str, dict]]:
    project = w["project"]
    return [
        ("post", "/api/projects/", {"name": "Another"}),
        ("patch", f"/api/projects/{project.pk}/", {"description": "Changed"}),
        (
            "post",
            "/api/prompts/",
            {"project": project.pk, "conversation": [{"role": "user", "content": "Hi?"}]},
        ),
        ("post", "/api/runs/", {"project": project.pk, "kind": "reward_model", "config": {}}),
        ("post", "/api/exports/", {"project": project.pk, "format": "parquet"}),
    ]


ROLE_FIXTURES = {
    "anonymous": None,
    "outsider": "outsider",
    "annotator": "annotator",
    "researcher": "researcher",
    "admin": "admin_user",
}
READ_STATUS = {"anonymous": 401, "outsider": 403, "annotator": 403, "researcher": 200, "admin": 200}


def _client(request, role):
    name = ROLE_FIXTURES[role]
    return token_client(request.getfixturevalue(name) if name else None)


@pytest.mark.parametrize("role", list(ROLE_FIXTURES))
def test_reads(request, world, role):
    client = _client(request, role)
    for url in _reads(world):
        assert client.get(url).status_code == READ_STATUS[role], (role, url)


@pytest.mark.parametrize("role", list(ROLE_FIXTURES))
def test_writes(request, world, role, no_queue):
    client = _client(request, role)
    for method, url, data in _writes(world):
        status = getattr(client, method)(url, data, format="json").status_code
        if role == "admin" or (role == "researcher" and url == "/api/exports/"):
            expected = 200 if method == "patch" else 201
        else:
            expected = READ_STATUS[role] if READ_STATUS[role] != 200 else 403
        assert status == expected, (role, method, url, status)


def test_deletes_are_not_offered(world, admin_user):
    client = token_client(admin_user)
    assert client.delete(f"/api/projects/{world['project'].pk}/").status_code == 405
    assert client.delete(f"/api/exports/{world['export'].pk}/").status_code == 405


def test_the_browser_session_works_too(client, world, researcher):
    client.force_login(researcher)
    assert client.get("/api/projects/").status_code == 200

"""A crash page never shows configuration, and the input that used to crash every submit is refused.

Found by a hostile user (issue #18): ``PATCH /api/projects/N/`` with ``{"criteria": [{"x": 1}]}``
was accepted and then every submit that used a criterion was a 500, whose DEBUG page (DEBUG
defaulted to true even with a real database) showed ``DATABASE_URL`` and ``CELERY_BROKER_URL``,
passwords included.
"""

from __future__ import annotations

import json
import sys

import pytest
from django.test import RequestFactory, override_settings
from django.views.debug import technical_500_response

from annotation.models import Project
from tests.api.conftest import token_client
from tests.foundation.test_settings import READ_SETTINGS, _python
from webapp.security import SecretMaskingFilter

SECRET = "hunter2-s3cret"


def test_debug_is_off_by_default_once_a_database_server_is_named(tmp_path):
    result = _python(
        READ_SETTINGS, tmp_path, SECRET_KEY="x" * 60, DATABASE_URL="postgres://tandem@db.internal/tandem"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["debug"] is False


def test_the_embedded_default_keeps_debug_on(tmp_path):
    for env in ({}, {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}):
        result = _python(READ_SETTINGS, tmp_path, **env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["debug"] is True


@override_settings(
    DATABASE_URL=f"postgres://tandem:{SECRET}@db.internal:5432/tandem",
    CELERY_BROKER_URL=f"redis://:{SECRET}@redis:6379/0",
    CACHE_URL=f"redis://:{SECRET}@redis:6379/1",
    SENTRY_DSN=f"https://{SECRET}@sentry.example.org/1",
)
def test_every_setting_that_can_hold_a_password_is_masked_on_the_debug_page():
    safe = SecretMaskingFilter().get_safe_settings()
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "SENTRY_DSN", "DATABASES", "SECRET_KEY"):
        assert SECRET not in str(safe[name]), name
    request = RequestFactory().get("/boom/")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()
    assert "DATABASE_URL" in page and SECRET not in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    "criteria, message",
    [
        ([{"x": 1}], "not a name"),
        (["helpfulness", ""], "not a name"),
        (["helpfulness", "Helpfulness"], "listed twice"),
        ("helpfulness", "a list of names"),
        ([" padded"], "spaces"),
        (["x" * 61], "at most 60"),
    ],
)
def test_the_api_refuses_criteria_that_are_not_unique_names(admin_user, criteria, message):
    project = Project.objects.create(name="Criteria")
    response = token_client(admin_user).patch(
        f"/api/projects/{project.pk}/", {"criteria": criteria}, format="json"
    )
    assert response.status_code == 400, response.content
    assert message in json.dumps(response.json()["criteria"])
    project.refresh_from_db()
    assert project.criteria == []


@pytest.mark.django_db
def test_the_api_accepts_a_list_of_names(admin_user):
    project = Project.objects.create(name="Criteria")
    response = token_client(admin_user).patch(
        f"/api/projects/{project.pk}/", {"criteria": ["helpfulness", "harmlessness"]}, format="json"
    )
    assert response.status_code == 200, response.content
    project.refresh_from_db()
    assert project.criteria == ["helpfulness", "harmlessness"]


@pytest.mark.django_db
def test_the_admin_refuses_criteria_that_are_not_unique_names(admin_client):
    project = Project.objects.create(name="Criteria")
    url = f"/admin/annotation/project/{project.pk}/change/"
    form = admin_client.get(url).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "annotators"}
    data.update(criteria='[{"x": 1}]', comparison_mode="pairwise", scale="likert4")
    response = admin_client.post(url, data)
    assert response.status_code == 200  # the form again, with the error
    assert "not a name" in response.content.decode()
    project.refresh_from_db()
    assert project.criteria == []

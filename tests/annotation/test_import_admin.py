"""The Project admin's "Import prompts" and "Import preference data" pages."""

from __future__ import annotations

import gzip
import json

import pytest
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import path, reverse

from annotation.models import Comparison, Judgment, Prompt, Response

# Only the admin: these pages must not depend on the rest of the site's URLs.
urlpatterns = [path("admin/", admin.site.urls)]
pytestmark = pytest.mark.urls(__name__)


def prompts_url(project) -> str:
    return reverse("admin:annotation_project_import_prompts", args=[project.pk])


def preferences_url(project) -> str:
    return reverse("admin:annotation_project_import_preferences", args=[project.pk])


def upload(name: str, rows) -> SimpleUploadedFile:
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    return SimpleUploadedFile(name, gzip.compress(data) if name.endswith(".gz") else data)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


HH = {
    "chosen": "\n\nHuman: Is the sky blue?\n\nAssistant: Yes, on a clear day.",
    "rejected": "\n\nHuman: Is the sky blue?\n\nAssistant: It is green.",
}


@pytest.fixture
def admin_client(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    return client


def post_with_csrf(client: Client, url: str, data: dict):
    """GET the form for its CSRF cookie, then POST with the token, as a browser does."""
    assert client.get(url).status_code == 200
    return client.post(url, {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"].value}, follow=True)


@pytest.mark.django_db
def test_the_project_page_has_both_import_buttons(admin_client, project):
    response = admin_client.get(reverse("admin:annotation_project_change", args=[project.pk]))

    assert response.status_code == 200
    assert prompts_url(project) in response.text and "Import prompts" in response.text
    assert preferences_url(project) in response.text and "Import preference data" in response.text


@pytest.mark.django_db
def test_an_admin_imports_prompts_and_lands_back_on_the_project(admin_client, project):
    file = upload("seed.jsonl", [{"prompt": "Hello"}, {"prompt": "Bye", "split": "eval"}])

    response = post_with_csrf(
        admin_client, prompts_url(project), {"file": file, "source": "", "split": "", "file_format": "auto"}
    )

    assert response.redirect_chain == [(reverse("admin:annotation_project_change", args=[project.pk]), 302)]
    assert messages_of(response) == ["Imported 2 of 2 rows as 'seed.jsonl'."]
    assert list(Prompt.objects.filter(project=project).values_list("split", flat=True)) == ["train", "eval"]


@pytest.mark.django_db
def test_a_bad_row_refuses_the_upload_and_lists_the_line(admin_client, project):
    file = upload("seed.csv", [b"prompt,split", b"Hello,train", b"Bye,holdout"])

    response = post_with_csrf(admin_client, prompts_url(project), {"file": file, "file_format": "auto"})

    assert response.status_code == 200 and not response.redirect_chain
    assert messages_of(response)[0].startswith("Import refused, nothing written: 1 of 2 rows are bad")
    assert "line 3: unknown split 'holdout'; use one of train, eval" in messages_of(response)
    assert "holdout" in response.text.split('id="import-result"')[1]
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_skip_bad_imports_the_rest_and_still_shows_the_bad_rows(admin_client, project):
    file = upload("seed.jsonl", [{"prompt": "Hello"}, b"{broken", {"prompt": "Bye"}])

    response = post_with_csrf(
        admin_client,
        prompts_url(project),
        {"file": file, "file_format": "jsonl", "skip_bad": "on", "source": "s1"},
    )

    assert messages_of(response)[0] == "Imported 2 of 3 rows as 's1'; skipped 1 bad rows."
    assert any(m.startswith("line 2: malformed JSON") for m in messages_of(response))
    assert Prompt.objects.count() == 2


@pytest.mark.django_db
def test_an_admin_imports_gzipped_preference_data(admin_client, project):
    file = upload("harmless.jsonl.gz", [HH, {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1}])

    response = post_with_csrf(
        admin_client, preferences_url(project), {"file": file, "data_format": "auto", "name": ""}
    )

    assert messages_of(response) == ["Imported 2 of 2 rows as 'imported:harmless'."]
    assert Comparison.objects.filter(source="imported:harmless", judgment_count=1).count() == 2
    assert Judgment.objects.filter(annotator=None, source="imported:harmless").count() == 2
    assert Response.objects.filter(finish_reason="imported").count() == 4


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8",
            "Import refused, nothing written: 3 of 3 rows are bad",
        ),
        (
            gzip.compress(json.dumps(HH).encode() + b"\n")[:-12],  # the trailer cut off
            "Import refused, nothing written: the file cannot be read",
        ),
        (b"", "The submitted file is empty."),  # Django's form refuses it before any import runs
    ],
    ids=["binary", "truncated-gzip", "empty"],
)
def test_a_malformed_upload_gets_a_clear_message_and_writes_nothing(admin_client, project, content, message):
    file = SimpleUploadedFile("data.jsonl.gz", content)

    response = post_with_csrf(admin_client, preferences_url(project), {"file": file, "data_format": "auto"})

    assert message in (messages_of(response)[0] if content else response.text)
    assert (Prompt.objects.count(), Judgment.objects.count()) == (0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["annotator", "researcher", "outsider"])
def test_only_admins_may_import(client, project, request, who):
    client.force_login(request.getfixturevalue(who))
    file = upload("seed.jsonl", [{"prompt": "Hello"}])

    for url in (prompts_url(project), preferences_url(project)):
        assert client.get(url).status_code == 302  # to the admin login
        response = client.post(url, {"file": file, "file_format": "auto", "data_format": "auto"})
        assert response.status_code == 302 and "/admin/login/" in response["Location"]

    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_an_unknown_project_is_not_found(admin_client):
    assert (
        admin_client.get(reverse("admin:annotation_project_import_prompts", args=[999999])).status_code == 404
    )

"""/exports/: the form, the list that polls while an export runs, downloads; researchers and admins only."""

from __future__ import annotations

import pytest
from django.test import Client

from training.exports import export_run
from training.models import Export
from training.snapshots import annotator_pseudonym

pytestmark = pytest.mark.django_db


@pytest.fixture
def csrf_client():
    return Client(enforce_csrf_checks=True)


def _post(client, data):
    client.get("/exports/")
    token = client.cookies["csrftoken"].value
    return client.post("/exports/", data, HTTP_X_CSRFTOKEN=token)


@pytest.mark.parametrize(
    "who, status", [("annotator", 403), ("outsider", 403), ("researcher", 200), ("admin_user", 200)]
)
def test_it_is_for_researchers_and_admins(request, client, judged, who, status):
    client.force_login(request.getfixturevalue(who))
    assert client.get("/exports/").status_code == status


def test_anonymous_users_log_in_first(client):
    assert client.get("/exports/").status_code == 302


def test_it_queues_an_export_from_the_form(csrf_client, judged, researcher, other_annotator, no_send):
    csrf_client.force_login(researcher)
    response = _post(
        csrf_client,
        {
            "project": judged.pk,
            "format": "parquet",
            "rounds": "1",
            "annotators": annotator_pseudonym(judged.pk, other_annotator.pk),
            "include_imported": "on",
            "licence": "cc-by-4.0",
        },
    )
    assert response.status_code == 302
    export = Export.objects.get()
    assert export.filters["rounds"] == [1] and export.filters["annotators"] == [other_annotator.pk]
    assert export.licence == "cc-by-4.0" and export.created_by == researcher
    page = csrf_client.get("/exports/")
    assert b"Queued" in page.content and b'hx-trigger="every 2s"' in page.content


def test_it_refuses_bad_filters(csrf_client, judged, researcher, no_send):
    csrf_client.force_login(researcher)
    response = _post(
        csrf_client, {"project": judged.pk, "format": "parquet", "rounds": "one", "annotators": "nobody"}
    )
    assert response.status_code == 400
    assert (
        b"numbers separated by commas" in response.content
        and b"nobody in Helpful assistant" in response.content
    )
    assert not Export.objects.exists()


def test_the_list_stops_polling_when_done_and_offers_the_download(client, judged, researcher):
    export = export_run(Export.objects.create(project=judged, format="trl_jsonl"))
    client.force_login(researcher)
    partial = client.get("/exports/", HTTP_HX_REQUEST="true")
    assert b"<h2>New export</h2>" not in partial.content  # the partial only
    assert b"every 2s" not in partial.content
    assert f"/exports/{export.pk}/download/".encode() in partial.content
    download = client.get(f"/exports/{export.pk}/download/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content)[:2] == b"PK"


def test_a_failed_or_missing_export_has_no_download(client, judged, researcher):
    export = Export.objects.create(project=judged, format="trl_jsonl", status=Export.Status.FAILED)
    client.force_login(researcher)
    assert client.get(f"/exports/{export.pk}/download/").status_code == 404
    assert client.get("/exports/999999/download/").status_code == 404


@pytest.fixture
def no_send(monkeypatch):
    from training import tasks

    monkeypatch.setattr(tasks.export_build, "apply_async", lambda args, **kw: None)


def test_researchers_filter_by_pseudonym_not_by_username(
    csrf_client, judged, researcher, other_annotator, no_send
):
    """A researcher who could filter by username could link a pseudonym to a person (and learn which
    accounts exist); only the pseudonyms the data show are accepted from them."""
    csrf_client.force_login(researcher)
    response = _post(csrf_client, {"project": judged.pk, "format": "parquet", "annotators": "bob"})
    html = response.content.decode()
    assert response.status_code == 400 and "No annotator id (as the exported data show it) bob" in html
    response = _post(csrf_client, {"project": judged.pk, "format": "parquet", "annotators": "nobody-at-all"})
    assert "nobody-at-all" in response.content.decode()  # the same answer whether the account exists or not
    assert not Export.objects.exists()


def test_admins_may_filter_by_username(csrf_client, judged, admin_user, other_annotator, no_send):
    csrf_client.force_login(admin_user)
    response = _post(csrf_client, {"project": judged.pk, "format": "parquet", "annotators": "bob"})
    assert response.status_code == 302
    assert Export.objects.get().filters["annotators"] == [other_annotator.pk]


def test_the_api_takes_pseudonyms_from_researchers(judged, researcher, other_annotator, no_send):
    from tests.api.conftest import token_client

    client = token_client(researcher)
    refused = client.post(
        "/api/exports/",
        {"project": judged.pk, "format": "parquet", "filters": {"annotators": ["bob"]}},
        format="json",
    )
    assert refused.status_code == 400 and "bob" in str(refused.json())
    accepted = client.post(
        "/api/exports/",
        {
            "project": judged.pk,
            "format": "parquet",
            "filters": {"annotators": [annotator_pseudonym(judged.pk, other_annotator.pk)]},
        },
        format="json",
    )
    assert accepted.status_code == 201, accepted.content
    assert Export.objects.get().filters["annotators"] == [other_annotator.pk]

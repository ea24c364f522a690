"""What scripts do with the API: filter and page lists, add prompts, launch runs, export and download."""

from __future__ import annotations

import io
import zipfile

import pytest

from annotation.models import Judgment, Prompt
from tests.api.conftest import token_client
from training.models import Export, RewardModel, TrainingRun
from training.snapshots import annotator_pseudonym

pytestmark = pytest.mark.django_db


def test_lists_are_paginated(world, researcher, monkeypatch):
    from rest_framework.pagination import PageNumberPagination

    # DRF reads PAGE_SIZE into the class when it is first imported, so patch the class.
    monkeypatch.setattr(PageNumberPagination, "page_size", 3)
    body = token_client(researcher).get("/api/judgments/").json()
    assert body["count"] == 9 and len(body["results"]) == 3 and body["next"]


def test_judgments_filter_and_show_pseudonyms(world, researcher, annotator):
    client = token_client(researcher)
    imported = client.get("/api/judgments/", {"source": "imported:tiny"}).json()
    assert imported["count"] == 2 and all(j["annotator"] is None for j in imported["results"])
    human = client.get("/api/judgments/", {"source": "human", "project": world["project"].pk}).json()
    assert human["count"] == 7
    alice = annotator_pseudonym(world["project"].pk, annotator.pk)
    assert alice in {j["annotator"] for j in human["results"]}
    assert "alice" not in str(human)
    assert client.get("/api/judgments/", {"created_after": "2000-01-01"}).json()["count"] == 9
    assert client.get("/api/judgments/", {"created_before": "2000-01-01"}).json()["count"] == 0


@pytest.mark.parametrize(
    "url, params",
    [
        ("/api/judgments/", {"project": "x"}),
        ("/api/judgments/", {"created_after": "yesterday"}),
        ("/api/rounds/", {"status": "sideways"}),
        ("/api/comparisons/", {"is_gold": "maybe"}),
        ("/api/prompts/", {"source": "a\x00b"}),
    ],
)
def test_bad_filters_are_400(world, researcher, url, params):
    assert token_client(researcher).get(url, params).status_code == 400


def test_comparisons_show_their_responses(world, researcher):
    body = token_client(researcher).get("/api/comparisons/", {"is_gold": "false"}).json()
    kwise = [c for c in body["results"] if len(c["responses"]) == 3]
    assert len(kwise) == 1 and [r["position"] for r in kwise[0]["responses"]] == [0, 1, 2]


def test_admins_add_prompts(world, admin_user):
    client = token_client(admin_user)
    ok = client.post(
        "/api/prompts/",
        {
            "project": world["project"].pk,
            "conversation": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            "tags": ["api"],
        },
        format="json",
    )
    assert ok.status_code == 201, ok.json()
    prompt = Prompt.objects.get(pk=ok.json()["id"])
    assert prompt.conversation[-1] == {"role": "user", "content": "Hi?"} and prompt.source == "api"
    bad = client.post(
        "/api/prompts/",
        {"project": world["project"].pk, "conversation": [{"role": "assistant", "content": "Hello"}]},
        format="json",
    )
    assert bad.status_code == 400


def test_admins_launch_runs(world, admin_user, no_queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = token_client(admin_user).post(
            "/api/runs/",
            {"project": world["project"].pk, "kind": "reward_model", "config": {}},
            format="json",
        )
    assert response.status_code == 201
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert run.kind == "reward_model" and run.created_by == admin_user and run.status == "queued"
    assert ("train_reward_model", run.pk) in no_queue


def test_admins_launch_a_loop_that_trains_the_policy_anyway(world, admin_user, no_queue):
    client = token_client(admin_user)
    project = world["project"].pk
    response = client.post(
        "/api/runs/",
        {"project": project, "kind": "loop", "config": {"train_policy_anyway": True}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert TrainingRun.objects.get(pk=response.json()["id"]).config["train_policy_anyway"] is True
    refused = client.post(
        "/api/runs/",
        {"project": project, "kind": "loop", "config": {"train_policy_anyway": "yes please"}},
        format="json",
    )
    assert refused.status_code == 400
    assert refused.json() == {"train_policy_anyway": ["Expected true or false."]}
    assert TrainingRun.objects.filter(kind="loop").count() == 1


def test_reward_models_show_their_interval_and_verdict(world, researcher):
    project, unlearned = world["project"], world["reward_model"]
    old = RewardModel.objects.create(project=project, uri="/old", accuracy=0.9, evaluation={"pairs": 100})
    client = token_client(researcher)
    body = client.get(f"/api/reward-models/{unlearned.pk}/").json()
    assert (body["accuracy"], body["accuracy_lower"], body["accuracy_upper"]) == (0.55, 0.42, 0.68)
    assert (body["held_out_pairs"], body["held_out_prompts"], body["learned"]) == (40, 12, False)
    assert body["verdict"] == (
        "held-out accuracy 0.55 [0.42, 0.68] on 40 pairs from 12 prompts: not better than chance"
    )
    body = client.get(f"/api/reward-models/{old.pk}/").json()  # evaluated before intervals: Wilson's
    assert 0.82 < body["accuracy_lower"] < 0.9 < body["accuracy_upper"] < 0.96 and body["learned"]
    listed = client.get("/api/reward-models/", {"project": project.pk, "learned": "false"}).json()
    assert [m["id"] for m in listed["results"]] == [unlearned.pk]
    assert client.post("/api/reward-models/", {}, format="json").status_code in (403, 405)


@pytest.mark.django_db(transaction=True)  # sent at once, as in a server: no test transaction to wait for
def test_a_launch_without_a_queue_is_503(world, admin_user, monkeypatch):
    import training.runs

    class Unreachable:
        def apply_async(self, args, **kwargs):
            raise ConnectionRefusedError("nobody listens on the broker's port")

    monkeypatch.setattr(training.runs, "task_named", lambda name: Unreachable())
    response = token_client(admin_user).post(
        "/api/runs/", {"project": world["project"].pk, "kind": "ppo", "config": {}}, format="json"
    )
    assert response.status_code == 503
    assert not TrainingRun.objects.filter(kind="ppo").exists()


def test_researchers_export_then_download(world, researcher, no_queue, django_capture_on_commit_callbacks):
    from training import tasks

    client = token_client(researcher)
    response = client.post(
        "/api/exports/",
        {
            "project": world["project"].pk,
            "format": "trl_conversational",
            "filters": {"rounds": [1], "include_imported": False},
            "licence": "cc-by-4.0",
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    export_id = response.json()["id"]
    assert response.json()["status"] == "queued" and response.json()["download_url"] is None
    assert client.get(f"/api/exports/{export_id}/download/").status_code == 404
    tasks.export_build(export_id)
    status = client.get(f"/api/exports/{export_id}/").json()
    assert status["status"] == "succeeded" and status["rows"] == 4
    assert status["progress_done"] == status["progress_total"] == 6
    download = client.get(status["download_url"])
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    assert sorted(archive.namelist()) == ["README.md", "data/train.jsonl"]
    assert Export.objects.get(pk=export_id).created_by == researcher


def test_an_export_with_bad_filters_is_400(world, researcher):
    response = token_client(researcher).post(
        "/api/exports/",
        {"project": world["project"].pk, "format": "parquet", "filters": {"min_agreement": 3}},
        format="json",
    )
    assert response.status_code == 400 and "filters" in response.json()


def test_the_schema_describes_every_resource(client):
    schema = client.get("/api/schema/?format=json").json()
    for resource in (
        "projects",
        "prompts",
        "rounds",
        "comparisons",
        "judgments",
        "checkpoints",
        "reward-models",
        "runs",
        "exports",
    ):
        assert f"/api/{resource}/" in schema["paths"]
    assert "/api/exports/{id}/download/" in schema["paths"]
    assert any("tokenAuth" in scheme for scheme in schema["components"]["securitySchemes"])


def test_judgment_list_queries_do_not_grow(world, researcher, django_assert_max_num_queries):
    client = token_client(researcher)
    with django_assert_max_num_queries(8):
        assert client.get("/api/judgments/").status_code == 200
    assert Judgment.objects.count() == 9


def test_exports_filter_by_export_format_and_leave_format_to_drf(world, researcher):
    """``?format=`` is DRF's (json, api); the exports list filters on ``?export_format=``."""
    client = token_client(researcher)
    as_json = client.get("/api/exports/?format=json")
    assert as_json.status_code == 200 and as_json["Content-Type"].startswith("application/json")
    found = client.get(f"/api/exports/?export_format={world['export'].format}").json()["results"]
    assert [e["id"] for e in found] == [world["export"].pk]
    assert client.get("/api/exports/?export_format=parquet").json()["results"] == []
    assert client.get("/api/exports/?export_format=nonsense").status_code == 400

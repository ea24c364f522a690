"""Exports in every format: the zip, its dataset card, and the data read back by ``datasets``."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.core.management import call_command

from tests.exports.conftest import unzip
from training.exports import export_create, export_run, prompt_text
from training.models import Export
from training.snapshots import annotator_pseudonym

pytestmark = pytest.mark.django_db


def build(project, fmt, **filters) -> Export:
    export = Export.objects.create(project=project, format=fmt, filters=filters, licence="cc-by-4.0")
    export = export_run(export)
    assert export.status == Export.Status.SUCCEEDED, export.error
    return export


def export_path(project, fmt):
    return Export.objects.filter(project=project, format=fmt).latest("pk").uri


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_it_exports_trl_text_jsonl(judged, tmp_path):
    from datasets import load_dataset

    export = build(judged, Export.Format.TRL_JSONL)
    assert export.rows == 9 and export.sha256 == sha256(export.uri)
    out = unzip(export.uri, tmp_path / "x")
    ds = load_dataset("json", data_files=str(out / "data/train.jsonl"), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert len(ds) == 9
    france = next(r for r in ds if "France" in r["prompt"])
    assert france["prompt"] == "\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert france["chosen"] == " Paris." and france["rejected"] == " Lyon, I think."
    assert sorted(ds["margin"]) == [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0]


def test_it_exports_trl_conversational_jsonl(judged, tmp_path):
    from datasets import load_dataset

    export = build(judged, Export.Format.TRL_CONVERSATIONAL)
    out = unzip(export.uri, tmp_path / "x")
    ds = load_dataset("json", data_files=str(out / "data/train.jsonl"), split="train")
    assert len(ds) == 9
    row = ds[0]
    assert row["prompt"][-1]["role"] == "user"
    assert row["chosen"][0]["role"] == "assistant" and len(row["chosen"]) == 1


def test_it_exports_parquet_with_the_same_columns(judged, tmp_path):
    from datasets import load_dataset

    export = build(judged, Export.Format.PARQUET)
    out = unzip(export.uri, tmp_path / "x")
    ds = load_dataset("parquet", data_files=str(out / "data/train.parquet"), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert len(ds) == 9
    conversational = build(judged, Export.Format.TRL_CONVERSATIONAL)
    jsonl = [
        json.loads(line) for line in open(unzip(conversational.uri, tmp_path / "y") / "data/train.jsonl")
    ]
    assert ds.to_list() == jsonl


def test_it_exports_a_datasets_directory(judged, tmp_path):
    from datasets import load_from_disk

    export = build(judged, Export.Format.HF_DATASET)
    out = unzip(export.uri, tmp_path / "x")
    ds = load_from_disk(str(out / "dataset"))
    assert len(ds) == 9 and ds.column_names == ["prompt", "chosen", "rejected", "margin"]


def test_it_exports_raw_judgments(judged, annotator, tmp_path):
    export = build(judged, Export.Format.JUDGMENTS)
    out = unzip(export.uri, tmp_path / "x")
    rows = [json.loads(line) for line in open(out / "data/judgments.jsonl")]
    assert len(rows) == export.rows == 9
    kwise = next(r for r in rows if r["round"] == 2)
    assert len(kwise["ranking"]) == 3 and all(len(g) == 1 for g in kwise["ranking"])
    assert [r["checkpoint"] for r in kwise["responses"]] == [1, 1, 1]
    assert kwise["annotator"] == annotator_pseudonym(judged.pk, annotator.pk)
    assert kwise["time_spent_ms"] == 4200 and kwise["rationale"] == "clearer and kinder"
    assert kwise["criteria"] == {"helpfulness": 3}
    assert kwise["order_shown"] == [r["id"] for r in kwise["responses"]]
    assert {r["strength"] for r in rows} == {None, "slight", "much"}
    assert sum(r["is_tie"] for r in rows) == 1 and sum(r["both_bad"] for r in rows) == 1
    imported = [r for r in rows if r["source"] == "imported:tiny"]
    assert len(imported) == 2 and all(r["annotator"] is None and r["round"] is None for r in imported)
    assert "alice" not in open(out / "data/judgments.jsonl").read()


def test_it_exports_prompts_for_openrlhf(judged, tmp_path):
    export = build(judged, Export.Format.PROMPTS_OPENRLHF, include_imported=False)
    out = unzip(export.uri, tmp_path / "x")
    rows = [json.loads(line) for line in open(out / "data/prompts.jsonl")]
    assert len(rows) == 5  # 4 prompts in round 1, 1 in round 2, imported left out
    assert rows[0]["messages"] == [{"role": "user", "content": "Question number 0?"}]
    assert rows[0]["input"] == prompt_text(rows[0]["messages"])


def test_it_exports_prompts_for_verl(judged, tmp_path):
    from datasets import load_dataset

    export = build(judged, Export.Format.PROMPTS_VERL, rounds=[2])
    out = unzip(export.uri, tmp_path / "x")
    ds = load_dataset("parquet", data_files=str(out / "data/train.parquet"), split="train")
    assert len(ds) == 1
    row = ds[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["prompt"][0]["role"] == "user"
    assert row["reward_model"] == {"style": "model", "ground_truth": ""}
    assert row["data_source"] == "tandem/helpful-assistant"


def test_the_card_tells_counts_filters_agreement_and_licence(judged, other_annotator, tmp_path):
    export = build(judged, Export.Format.TRL_JSONL, annotators=[other_annotator.pk])
    card = (unzip(export.uri, tmp_path / "x") / "README.md").read_text()
    assert card.startswith('---\nlicense: "cc-by-4.0"')
    assert "path: data/train.jsonl" in card
    assert "- pairs: 2" in card and "- judgments: 2" in card
    assert "mean agreement: n/a" in card  # only bob's judgments: no comparison judged twice
    assert annotator_pseudonym(judged.pk, other_annotator.pk) in card
    assert "bob" not in card
    assert "How pairs were derived" in card
    assert "sha256" in card
    full = build(judged, Export.Format.TRL_JSONL)
    full_card = (unzip(full.uri, tmp_path / "y") / "README.md").read_text()
    assert "mean agreement: 0.750" in full_card  # c0 agreed (1.0), c1 split (0.5)


def test_the_card_shows_a_hostile_project_name_and_licence_as_text(judged, tmp_path):
    """Names and licences are typed by people and the card is rendered as markdown on the Hub."""
    judged.name = "Evil <img src=x onerror=alert(1)>\n# [click](javascript:alert(2))"
    judged.save(update_fields=["name"])
    export = Export.objects.create(
        project=judged, format=Export.Format.TRL_JSONL, licence="mit\n\n<script>alert(3)</script>"
    )
    export = export_run(export)
    card = (unzip(export.uri, tmp_path / "x") / "README.md").read_text()
    body = card.split("\n---\n", 1)[1]
    assert "<img" not in body and "<script" not in body and "](javascript" not in body
    assert "\n# [" not in body and "&lt;img src=x onerror=alert\\(1\\)\\>" in body
    assert card.startswith('---\nlicense: "mit\\n\\n<script>alert(3)</script>"')  # quoted YAML, not markup


def test_the_same_data_give_the_same_file(judged):
    first = build(judged, Export.Format.TRL_CONVERSATIONAL)
    second = build(judged, Export.Format.TRL_CONVERSATIONAL)
    assert first.sha256 == second.sha256


def test_an_empty_export_still_loads(project, tmp_path, settings):
    settings.ARTIFACTS_DIR = tmp_path / "a"
    from datasets import load_from_disk

    for fmt in Export.Format.values:
        export = build(project, fmt)
        assert export.rows == 0
    assert (
        len(load_from_disk(str(unzip(export_path(project, "hf_dataset"), tmp_path / "x") / "dataset"))) == 0
    )


def test_the_task_runs_a_queued_export_once(judged, monkeypatch, django_capture_on_commit_callbacks):
    from training import tasks

    sent = []
    monkeypatch.setattr(tasks.export_build, "apply_async", lambda args, **kw: sent.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        export = export_create(project=judged, format="trl_jsonl", filters={"rounds": [1]})
    assert sent == [[export.pk]] and export.status == Export.Status.QUEUED
    tasks.export_build(export.pk)
    tasks.export_build(export.pk)  # a duplicate delivery does nothing
    export.refresh_from_db()
    assert export.status == Export.Status.SUCCEEDED and export.rows == 4
    assert export.progress_done == export.progress_total == 6


def test_an_unreachable_queue_fails_the_export(judged, monkeypatch, django_capture_on_commit_callbacks):
    from kombu.exceptions import OperationalError

    from training import tasks
    from training.runs import QueueUnavailable

    def down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks.export_build, "apply_async", down)
    with pytest.raises(QueueUnavailable), django_capture_on_commit_callbacks(execute=True):
        export_create(project=judged, format="trl_jsonl")
    export = Export.objects.get()
    assert export.status == Export.Status.FAILED and "queue" in export.error


def test_the_task_is_not_routed_to_the_gpu_queue(settings):
    import fnmatch

    assert not any(fnmatch.fnmatch("training.tasks.export_build", p) for p in settings.CELERY_TASK_ROUTES)


def test_the_command_writes_the_zip(judged, tmp_path, annotator):
    out = tmp_path / "out.zip"
    call_command(
        "export_preferences",
        "--project",
        judged.name,
        "--format",
        "trl_jsonl",
        "--out",
        str(out),
        "--annotators",
        annotator.username,
        "--no-imported",
        "--licence",
        "mit",
    )
    lines = (unzip(out, tmp_path / "x") / "data/train.jsonl").read_text().splitlines()
    assert len(lines) == 5  # alice: c0, c1, and 3 K-wise pairs
    export = Export.objects.get()
    assert export.filters["annotators"] == [annotator.pk] and export.licence == "mit"

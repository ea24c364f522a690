"""The invariants live in the database: violations are rejected by it, not just by forms."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation.models import Comparison, ComparisonItem, Judgment, Lease, Project, Prompt, Response
from training.models import Checkpoint


@pytest.fixture
def comparison(project):
    prompt = Prompt.objects.create(project=project, conversation=[{"role": "user", "content": "Hi"}])
    a = Response.objects.create(prompt=prompt, text="Hello!")
    b = Response.objects.create(prompt=prompt, text="Hi there.")
    comparison = Comparison.objects.create(prompt=prompt)
    ComparisonItem.objects.bulk_create(
        [
            ComparisonItem(comparison=comparison, response=a, position=0),
            ComparisonItem(comparison=comparison, response=b, position=1),
        ]
    )
    return comparison


def _rejected(fn):
    with pytest.raises(IntegrityError), transaction.atomic():
        fn()


def test_it_allows_one_judgment_per_comparison_and_annotator(comparison, annotator):
    Judgment.objects.create(comparison=comparison, annotator=annotator, ranking=[["1"], ["2"]])
    _rejected(
        lambda: Judgment.objects.create(comparison=comparison, annotator=annotator, ranking=[["2"], ["1"]])
    )


def test_it_requires_an_annotator_unless_the_judgment_is_imported(comparison):
    _rejected(lambda: Judgment.objects.create(comparison=comparison, source="human", ranking=[["1"], ["2"]]))
    Judgment.objects.create(comparison=comparison, source="imported:hh-rlhf", ranking=[["1"], ["2"]])


def test_it_allows_one_lease_per_comparison_and_annotator(comparison, annotator):
    expires = timezone.now() + timedelta(minutes=10)
    Lease.objects.create(comparison=comparison, annotator=annotator, expires_at=expires)
    _rejected(lambda: Lease.objects.create(comparison=comparison, annotator=annotator, expires_at=expires))


def test_it_rejects_a_response_to_another_prompt_in_a_comparison(comparison, project):
    stranger = Prompt.objects.create(project=project, conversation=[{"role": "user", "content": "Other"}])
    foreign = Response.objects.create(prompt=stranger, text="Unrelated")
    _rejected(lambda: ComparisonItem.objects.create(comparison=comparison, response=foreign, position=2))
    # Nor can an existing item be pointed elsewhere by moving its response to another prompt.
    first = comparison.items.first().response
    _rejected(lambda: Response.objects.filter(pk=first.pk).update(prompt=stranger))


def test_it_rejects_the_same_check_in_raw_sql(comparison, project):
    stranger = Prompt.objects.create(project=project, conversation=[{"role": "user", "content": "Other"}])
    foreign = Response.objects.create(prompt=stranger, text="Unrelated")

    def raw_insert():
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO annotation_comparisonitem (comparison_id, response_id, position) VALUES (%s, %s, %s)",
                [comparison.pk, foreign.pk, 5],
            )

    _rejected(raw_insert)


def test_it_keeps_checkpoint_versions_unique_per_project(project):
    Checkpoint.objects.create(project=project, version=1, uri="/a")
    _rejected(lambda: Checkpoint.objects.create(project=project, version=1, uri="/b"))
    other = Project.objects.create(name="Other project")
    Checkpoint.objects.create(project=other, version=1, uri="/c")


@pytest.mark.parametrize(
    "fields",
    [
        {"k": 7, "comparison_mode": "kwise"},
        {"k": 3, "comparison_mode": "pairwise"},
        {"overlap": 0},
        {"gold_rate": 1.5},
    ],
)
def test_it_rejects_impossible_project_settings(fields, db):
    _rejected(lambda: Project.objects.create(name="Bad", **fields))

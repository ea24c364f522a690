"""Snapshots: the pairs a run trains on, filtered, deterministic, named by their sha256."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from annotation.models import AnnotatorProfile, Judgment
from tests.exports.conftest import submit
from tests.factories import make_round
from training.ml.pairs import PairOptions, judgments_to_pairs, read_snapshot_jsonl, snapshot_sha256
from training.models import PreferenceSnapshot
from training.snapshots import (
    annotator_pseudonym,
    judgment_rows,
    judgments_filtered,
    pair_rows,
    snapshot_build,
)

pytestmark = pytest.mark.django_db


def test_it_builds_every_pair_including_imported(judged, settings):
    snapshot = snapshot_build(project=judged)
    assert snapshot.pair_count == 9
    rows = read_snapshot_jsonl(snapshot.uri)
    assert len(rows) == 9
    assert sum(r["source"] == "imported:tiny" for r in rows) == 2
    assert Path(snapshot.uri) == Path(settings.ARTIFACTS_DIR) / "snapshots" / f"{snapshot.sha256}.jsonl"
    assert snapshot_sha256(rows) == snapshot.sha256
    assert snapshot.options["loss_weighting"] == "per_pair"
    assert "C(K,2)" in snapshot.options["loss_weighting_meaning"]


def test_it_is_deterministic_and_reuses_the_row(judged):
    first = snapshot_build(project=judged)
    again = snapshot_build(project=judged)
    assert again.pk == first.pk
    assert PreferenceSnapshot.objects.count() == 1


def test_it_gets_a_new_hash_when_a_judgment_changes(judged):
    first = snapshot_build(project=judged)
    j = Judgment.objects.filter(strength="much").first()
    j.strength = "slight"
    j.save()
    second = snapshot_build(project=judged)
    assert second.sha256 != first.sha256
    assert PreferenceSnapshot.objects.count() == 2


def test_it_records_loss_weighting_and_options(judged):
    snapshot = snapshot_build(project=judged, options=PairOptions(weighting="per_ranking"))
    assert snapshot.options["loss_weighting"] == "per_ranking"
    rows = read_snapshot_jsonl(snapshot.uri)
    kwise = [r for r in rows if r["round"] == 2]
    assert [r["weight"] for r in kwise] == pytest.approx([1 / 3] * 3)


def test_it_streams_the_same_pairs_as_the_ml_function(judged):
    qs = judgments_filtered(judged)
    streamed = list(pair_rows(qs))
    assert snapshot_sha256(streamed) == snapshot_sha256(judgments_to_pairs(judgment_rows(qs)))


def test_the_pseudonym_is_stable_per_project_and_not_the_username(judged, annotator):
    rows = [r for r in judgment_rows(judgments_filtered(judged)) if r["annotator"]]
    alice = annotator_pseudonym(judged.pk, annotator.pk)
    assert alice in {r["annotator"] for r in rows}
    assert all(annotator.username not in r["annotator"] and str(annotator.pk) != r["annotator"] for r in rows)
    assert annotator_pseudonym(judged.pk, annotator.pk) == alice
    assert annotator_pseudonym(judged.pk + 1, annotator.pk) != alice
    assert annotator_pseudonym(judged.pk, None) is None


def test_it_filters_by_round_annotator_source_and_checkpoint(judged, annotator):
    def count(**filters):
        return judgments_filtered(judged, **filters).count()

    assert count() == 9
    assert count(rounds=[1]) == 6
    assert count(rounds=[2]) == 1
    assert count(annotators=[annotator.pk]) == 5
    assert count(include_imported=False) == 7
    assert count(checkpoints=[1]) == 7
    assert count(checkpoints=[99]) == 0


def test_it_filters_by_date(judged):
    today = timezone.now().date()
    assert judgments_filtered(judged, date_from=today, date_to=today).count() == 9
    assert judgments_filtered(judged, date_to=today - dt.timedelta(days=1)).count() == 0


def test_it_drops_low_agreement_comparisons(judged):
    # c1 is split 1:1 (agreement 0.5); everything else agrees with itself or fully.
    assert judgments_filtered(judged, min_agreement=0.75).count() == 7
    assert snapshot_build(project=judged, filters={"min_agreement": 0.75}).pair_count == 7


def test_it_leaves_out_annotators_an_admin_excluded(judged, other_annotator):
    AnnotatorProfile.objects.create(user=other_annotator, excluded_from_snapshots=True)
    assert judgments_filtered(judged).count() == 7
    assert judgments_filtered(judged, exclude_flagged_annotators=False).count() == 9


def test_it_drops_annotators_who_fail_gold(project, annotator, other_annotator, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    project.overlap = 2
    project.save()
    round = make_round(project, 3, gold=1)
    gold, c1, c2 = round.comparisons.order_by("id")
    submit(annotator, gold, [0, 1])  # passes: gold answer is position order
    submit(other_annotator, gold, [1, 0])  # fails
    submit(annotator, c1, [0, 1])
    submit(other_annotator, c2, [0, 1])
    qs = judgments_filtered(project)
    options = PairOptions(min_gold_accuracy=1.0)
    pairs = list(pair_rows(qs, options))
    assert {p["comparison_id"] for p in pairs} == {c1.pk}
    assert snapshot_sha256(pairs) == snapshot_sha256(judgments_to_pairs(judgment_rows(qs), options))


def test_rows_take_a_fixed_number_of_queries(judged, django_assert_max_num_queries):
    with django_assert_max_num_queries(4):
        rows = list(judgment_rows(judgments_filtered(judged)))
    assert len(rows) == 9
    assert rows[0]["prompt"][0]["role"] == "user"

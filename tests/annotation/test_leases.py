"""Handing out work: leases, overlap, never twice, gold rate, cap on open leases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.judgments import Answer, judgment_submit
from annotation.leases import (
    LeaseCapReached,
    comparison_next_for,
    comparison_skip,
    lease_extend,
    progress_for,
)
from annotation.models import Lease
from tests.factories import make_annotators, make_project, make_round

pytestmark = pytest.mark.django_db


class FixedRandom:
    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def _submit(user, lease, **kwargs):
    import uuid

    a, b = lease.order
    return judgment_submit(
        annotator=user,
        comparison=lease.comparison,
        answer=Answer(ranking=[[a], [b]], strength="much"),
        client_id=uuid.uuid4(),
        order_shown=lease.order,
        **kwargs,
    )


def test_it_hands_out_a_comparison_as_a_lease_in_a_shuffled_order(annotator, project):
    round = make_round(project, 1, k=2)
    before = timezone.now()
    lease = comparison_next_for(annotator, round)
    items = sorted(lease.comparison.items.values_list("response_id", flat=True))
    assert sorted(lease.order) == items
    assert before + timedelta(minutes=project.lease_minutes) <= lease.expires_at
    assert lease.expires_at <= timezone.now() + timedelta(minutes=project.lease_minutes)


def test_it_randomises_the_order_per_annotator(db):
    project = make_project("Order", k=6, overlap=30)
    round = make_round(project, 1)
    orders = {tuple(comparison_next_for(user, round).order) for user in make_annotators(12)}
    assert len(orders) > 1  # 12 draws of 6! orders all alike would be a 1 in ~10^34 event


def test_it_resumes_the_live_lease_and_extends_it(annotator, project):
    round = make_round(project, 3)
    first = comparison_next_for(annotator, round)
    later = timezone.now() + timedelta(minutes=5)
    again = comparison_next_for(annotator, round, now=later)
    assert again.pk == first.pk and again.order == first.order
    assert Lease.objects.get(pk=first.pk).expires_at == later + timedelta(minutes=project.lease_minutes)


def test_it_never_hands_out_more_than_the_overlap(annotator, other_annotator):
    project = make_project("Overlap two", overlap=2)
    round = make_round(project, 1)
    assert comparison_next_for(annotator, round) is not None
    assert comparison_next_for(other_annotator, round) is not None
    assert comparison_next_for(make_annotators(1, "carol")[0], round) is None


def test_it_counts_judgments_and_live_leases_against_the_overlap(annotator, other_annotator):
    project = make_project("Overlap two", overlap=2)
    round = make_round(project, 1)
    _submit(annotator, comparison_next_for(annotator, round))
    assert comparison_next_for(other_annotator, round) is not None
    assert comparison_next_for(make_annotators(1, "carol")[0], round) is None


def test_it_gives_an_expired_slot_to_someone_else(annotator, other_annotator, project):
    round = make_round(project, 1)  # overlap 1
    comparison_next_for(annotator, round)
    assert comparison_next_for(other_annotator, round) is None
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 1)
    assert comparison_next_for(other_annotator, round, now=later) is not None


def test_it_never_shows_an_annotator_a_comparison_twice(annotator):
    project = make_project("Twice", overlap=3)
    round = make_round(project, 3)
    judged = comparison_next_for(annotator, round)
    _submit(annotator, judged)
    skipped = comparison_next_for(annotator, round)
    comparison_skip(annotator=annotator, comparison=skipped.comparison, reason="not my field")
    expired = comparison_next_for(annotator, round)
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 1)
    fresh = comparison_next_for(annotator, round, now=later)
    seen = {judged.comparison_id, skipped.comparison_id, expired.comparison_id}
    assert len(seen) == 3 and fresh is None


def test_it_puts_a_skipped_comparison_back_in_the_pool_for_others(annotator, other_annotator, project):
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    comparison_skip(annotator=annotator, comparison=lease.comparison)
    assert comparison_next_for(other_annotator, round).comparison_id == lease.comparison_id


def test_it_caps_open_leases_per_project(annotator):
    project = make_project("Capped", max_open_leases=1)
    first, second = make_round(project, 2, number=1), make_round(project, 2, number=2)
    comparison_next_for(annotator, first)
    with pytest.raises(LeaseCapReached):
        comparison_next_for(annotator, second)
    project.max_open_leases = 2
    project.save()
    second.project.refresh_from_db()
    assert comparison_next_for(annotator, second) is not None
    with pytest.raises(LeaseCapReached):
        comparison_next_for(annotator, first, resume=False)


def test_it_mixes_in_gold_at_the_project_rate(annotator, other_annotator):
    project = make_project("Gold", gold_rate=0.25)
    round = make_round(project, 4, gold=1)
    assert comparison_next_for(annotator, round, rng=FixedRandom(0.2)).comparison.is_gold
    assert not comparison_next_for(other_annotator, round, rng=FixedRandom(0.3)).comparison.is_gold


def test_it_falls_back_to_ordinary_items_when_gold_runs_out(annotator):
    project = make_project("No gold", gold_rate=1.0)
    round = make_round(project, 2)
    assert comparison_next_for(annotator, round) is not None


def test_it_hands_out_nothing_from_a_closed_round(annotator, project):
    round = make_round(project, 2, status="closed")
    assert comparison_next_for(annotator, round) is None


def test_it_reports_progress(annotator, other_annotator):
    project = make_project("Progress", overlap=2)
    round = make_round(project, 4)
    _submit(annotator, comparison_next_for(annotator, round))
    _submit(annotator, comparison_next_for(annotator, round))
    comparison_skip(annotator=annotator, comparison=comparison_next_for(annotator, round).comparison)
    assert progress_for(annotator, round) == type(progress_for(annotator, round))(2, 1, 2)
    assert progress_for(other_annotator, round).remaining == 4


def test_work_in_other_rounds_neither_counts_nor_blocks_this_one(annotator):
    """An annotator's earlier rounds, and a round opened after this one (its comparisons' ids
    above this round's), stay out of this round's progress, hand-out and recent list."""
    from annotation.judgments import progress_and_recent

    earlier = make_round(make_project("Earlier", overlap=1), 2)
    round = make_round(make_project("This one", overlap=1), 3)
    later = make_round(make_project("Later", overlap=1), 2)
    for other in (earlier, later, later):
        _submit(annotator, comparison_next_for(annotator, other))
    judged = _submit(annotator, comparison_next_for(annotator, round)).judgment

    progress, recent = progress_and_recent(annotator, round)
    assert (progress.done_in_round, progress.remaining, progress.done_today) == (1, 2, 4)
    assert [j.pk for j in recent] == [judged.pk]
    handed = [
        _submit(annotator, comparison_next_for(annotator, round)).judgment.comparison_id for _ in range(2)
    ]
    assert sorted(handed) == sorted(
        round.comparisons.exclude(pk=judged.comparison_id).values_list("pk", flat=True)
    )
    assert comparison_next_for(annotator, round) is None


def test_it_counts_what_remains_up_to_a_cap_and_says_so(annotator, monkeypatch):
    from annotation import leases

    monkeypatch.setattr(leases, "REMAINING_COUNTED_UP_TO", 3)
    round = make_round(make_project("Big round", overlap=1), 5)
    capped = progress_for(annotator, round)
    assert (capped.remaining, capped.remaining_more) == (3, True)
    _submit(annotator, comparison_next_for(annotator, round))
    _submit(annotator, comparison_next_for(annotator, round))
    exact = progress_for(annotator, round)
    assert (exact.done_in_round, exact.remaining, exact.remaining_more) == (2, 3, False)


def test_it_extends_a_live_lease_and_revives_an_expired_one_with_room(annotator, other_annotator, project):
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    assert lease_extend(annotator=annotator, comparison=lease.comparison) is not None
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 1)
    assert lease_extend(annotator=annotator, comparison=lease.comparison, now=later).expires_at > later
    much_later = later + timedelta(minutes=project.lease_minutes + 1)
    assert comparison_next_for(other_annotator, round, now=much_later) is not None
    assert lease_extend(annotator=annotator, comparison=lease.comparison, now=much_later) is None

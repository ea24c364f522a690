"""Recording judgments: idempotent per client id, expired leases, refusals, edits."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.judgments import (
    EDITABLE_RECENT,
    Answer,
    EditRefused,
    SubmitRefused,
    judgment_submit,
    judgment_update,
)
from annotation.leases import comparison_next_for, comparison_skip
from annotation.models import Comparison, Judgment, Lease
from tests.conftest import PASSWORD
from tests.factories import make_project, make_round

pytestmark = pytest.mark.django_db


def _submit(user, lease, client_id=None, now=None, ranking=None):
    a, b = lease.order[:2]
    return judgment_submit(
        annotator=user,
        comparison=lease.comparison,
        answer=Answer(ranking=ranking or [[a], [b]], strength="slight", rationale="why not"),
        client_id=client_id or uuid.uuid4(),
        order_shown=lease.order,
        time_spent_ms=4200,
        now=now,
    )


def test_it_records_a_judgment_counts_it_and_releases_the_lease(annotator, project):
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    submitted = _submit(annotator, lease)
    judgment = Judgment.objects.get()
    assert submitted.created and submitted.judgment == judgment
    a, b = lease.order
    assert judgment.ranking == [[a], [b]] and judgment.strength == "slight" and judgment.time_spent_ms == 4200
    assert judgment.order_shown == lease.order and judgment.source == "human"
    assert Comparison.objects.get().judgment_count == 1
    assert not Lease.objects.exists()


def test_it_records_one_judgment_per_client_id(annotator, project):
    round = make_round(project, 2)
    lease = comparison_next_for(annotator, round)
    client_id = uuid.uuid4()
    first = _submit(annotator, lease, client_id)
    again = _submit(annotator, lease, client_id)
    assert first.created and not again.created and again.judgment.pk == first.judgment.pk
    assert (
        Judgment.objects.count() == 1 and Comparison.objects.get(pk=lease.comparison_id).judgment_count == 1
    )


def test_it_refuses_someone_elses_client_id(annotator, other_annotator):
    project = make_project("Two", overlap=2)
    round = make_round(project, 1)
    client_id = uuid.uuid4()
    _submit(annotator, comparison_next_for(annotator, round), client_id)
    with pytest.raises(SubmitRefused) as refused:
        _submit(other_annotator, comparison_next_for(other_annotator, round), client_id)
    assert refused.value.code == "foreign"


def test_it_refuses_a_second_judgment_of_the_same_comparison(annotator):
    project = make_project("Two", overlap=2)
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    _submit(annotator, lease)
    with pytest.raises(SubmitRefused) as refused:
        _submit(annotator, lease)  # another tab: a new client id
    assert refused.value.code == "duplicate"
    assert Judgment.objects.count() == 1 and Comparison.objects.get().judgment_count == 1


def test_it_accepts_an_expired_lease_while_the_comparison_has_room(annotator, project):
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 5)
    assert _submit(annotator, lease, now=later).created


def test_it_refuses_an_expired_lease_once_others_filled_the_comparison(annotator, other_annotator, project):
    round = make_round(project, 1)  # overlap 1
    lease = comparison_next_for(annotator, round)
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 5)
    _submit(other_annotator, comparison_next_for(other_annotator, round, now=later), now=later)
    with pytest.raises(SubmitRefused) as refused:
        _submit(annotator, lease, now=later)
    assert refused.value.code == "full" and "kept" in refused.value.message
    assert Comparison.objects.get().judgment_count == 1


def test_it_refuses_an_expired_lease_whose_slot_someone_else_holds(annotator, other_annotator, project):
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    later = timezone.now() + timedelta(minutes=project.lease_minutes + 5)
    comparison_next_for(other_annotator, round, now=later)
    with pytest.raises(SubmitRefused):
        _submit(annotator, lease, now=later)


def test_it_refuses_a_skipped_comparison_and_a_closed_round(annotator, project):
    round = make_round(project, 2)
    skipped = comparison_next_for(annotator, round)
    comparison_skip(annotator=annotator, comparison=skipped.comparison)
    with pytest.raises(SubmitRefused) as refused:
        _submit(annotator, skipped)
    assert refused.value.code == "skipped"
    lease = comparison_next_for(annotator, round)
    round.status = "closed"
    round.save()
    with pytest.raises(SubmitRefused) as refused:
        _submit(annotator, lease)
    assert refused.value.code == "closed"


def test_it_rejects_a_ranking_of_responses_that_were_not_shown(annotator, project):
    round = make_round(project, 1)
    lease = comparison_next_for(annotator, round)
    with pytest.raises(ValueError):
        _submit(annotator, lease, ranking=[[lease.order[0]]])
    assert not Judgment.objects.exists()


def test_it_edits_only_the_last_few_judgments_of_an_open_round(annotator, project):
    round = make_round(project, EDITABLE_RECENT + 1)
    judgments = [
        _submit(annotator, comparison_next_for(annotator, round)).judgment for _ in range(EDITABLE_RECENT + 1)
    ]
    newest, oldest = judgments[-1], judgments[0]
    tie = Answer(ranking=[sorted(newest.order_shown)], is_tie=True, rationale="equal after all")
    judgment_update(judgment=newest, answer=tie, time_spent_ms=800)
    newest.refresh_from_db()
    assert newest.is_tie and newest.strength is None and newest.time_spent_ms == 5000
    with pytest.raises(EditRefused):
        judgment_update(judgment=oldest, answer=Answer(ranking=[sorted(oldest.order_shown)], is_tie=True))
    round.status = "closed"
    round.save()
    newest.comparison.round.refresh_from_db()
    with pytest.raises(EditRefused):
        judgment_update(judgment=newest, answer=tie)
    assert Comparison.objects.get(pk=newest.comparison_id).judgment_count == 1


def test_it_keeps_what_the_annotator_typed_when_a_late_submit_is_refused(annotator, other_annotator, project):
    round = make_round(project, 1)
    client = Client(enforce_csrf_checks=True)
    client.login(username=annotator.username, password=PASSWORD)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    Lease.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    _submit(other_annotator, comparison_next_for(other_annotator, round))
    data = {
        "client_id": str(uuid.uuid4()),
        "order": ",".join(map(str, lease.order)),
        "choice": "b_much",
        "rationale": "a long careful explanation",
    }
    response = client.post(
        reverse("annotate-judge", args=[lease.comparison_id]),
        data,
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
        HTTP_HX_REQUEST="true",
    )
    html = response.content.decode()
    assert "could not be saved" in html and "a long careful explanation" in html
    assert 'value="b_much" checked' in html
    assert Judgment.objects.filter(annotator=annotator).count() == 0


def test_it_saves_criteria_and_both_bad(annotator):
    project = make_project("Criteria", criteria=["helpfulness", "harmlessness"], rationale_required=True)
    round = make_round(project, 1)
    client = Client(enforce_csrf_checks=True)
    client.login(username=annotator.username, password=PASSWORD)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    url = reverse("annotate-judge", args=[lease.comparison_id])
    data = {"client_id": str(uuid.uuid4()), "order": ",".join(map(str, lease.order)), "both_bad": "on"}
    headers = {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value, "HTTP_HX_REQUEST": "true"}
    response = client.post(url, data, **headers)
    assert "asks for a short rationale" in response.content.decode()
    data.update(rationale="both wrong", crit_0="B", crit_1="same")
    client.post(url, data, **headers)
    judgment = Judgment.objects.get()
    assert judgment.both_bad and not judgment.is_tie and judgment.ranking == [sorted(lease.order)]
    assert judgment.criteria == {"helpfulness": lease.order[1], "harmlessness": "same"}

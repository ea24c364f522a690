"""Recording what annotators decided: submit (idempotent), and edit a recent judgment.

``Comparison.judgment_count`` is denormalised; it changes only here, with an F()
update in the same transaction as the insert, while the comparison row is locked
(which is also what keeps ``judgments + live leases <= overlap``, see
``annotation.leases``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone

from annotation.models import Comparison, Judgment, Lease, Round, Skip

EDITABLE_RECENT = 5  # an annotator may reopen this many of their latest judgments in an open round
MAX_TIME_SPENT_MS = 6 * 3600 * 1000


@dataclass(frozen=True)
class Answer:
    """One annotator's verdict, already validated against the comparison (see ``annotation.forms``)."""

    ranking: list[list[int]]  # groups of response ids, best first; a group of two or more is a tie
    strength: str | None = None  # Judgment.Strength value, pairwise 4-point scale only
    is_tie: bool = False
    both_bad: bool = False
    rationale: str = ""
    criteria: dict = field(default_factory=dict)


class SubmitRefused(Exception):
    """The judgment was not saved; ``message`` tells the annotator why (their input is kept)."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Submitted:
    judgment: Judgment
    created: bool  # False when the same client id had already been recorded (a retry or double click)


def _clamp_time(ms: int | None) -> int | None:
    return None if ms is None else max(0, min(int(ms), MAX_TIME_SPENT_MS))


def _check_answer(answer: Answer, order_shown: list[int]) -> None:
    ranked = [rid for group in answer.ranking for rid in group]
    if sorted(ranked) != sorted(order_shown) or len(set(ranked)) != len(ranked):
        raise ValueError("the ranking must name every shown response exactly once")


def judgment_submit(
    *,
    annotator,
    comparison: Comparison,
    answer: Answer,
    client_id: uuid.UUID,
    order_shown: list[int],
    time_spent_ms: int | None = None,
    now: datetime | None = None,
    source: str = "human",
) -> Submitted:
    """Record ``answer`` once per ``client_id``; raise ``SubmitRefused`` when it cannot be taken.

    Accepted when the annotator's lease is live, or, if it expired, when the comparison
    still has room (judgments plus other annotators' live leases below the overlap).
    """
    _check_answer(answer, order_shown)
    now = now or timezone.now()
    existing = Judgment.objects.filter(client_id=client_id).first()
    if existing is not None:
        return _replayed(existing, annotator)

    with transaction.atomic():
        locked = (
            Comparison.objects.select_for_update(of=("self",))
            .select_related("round__project")
            .annotate(
                judged=Exists(Judgment.objects.filter(comparison=OuterRef("pk"), annotator=annotator)),
                skipped=Exists(Skip.objects.filter(comparison=OuterRef("pk"), annotator=annotator)),
            )
            .get(pk=comparison.pk)
        )
        round, project = locked.round, locked.round.project
        if round is None or round.status != Round.Status.OPEN:
            raise SubmitRefused("This round is closed, so the judgment was not saved.", code="closed")
        if locked.judged:
            # A concurrent retry of this very submit may have won the lock first.
            existing = Judgment.objects.filter(client_id=client_id).first()
            if existing is not None:
                return _replayed(existing, annotator)
            raise SubmitRefused(
                "You have already judged this comparison (perhaps in another tab); edit it from your recent list.",
                code="duplicate",
            )
        if locked.skipped:
            raise SubmitRefused(
                "You skipped this comparison, so it is no longer yours to judge.", code="skipped"
            )
        holders = list(
            Lease.objects.filter(comparison=locked, expires_at__gt=now).values_list("annotator_id", flat=True)
        )
        if annotator.pk not in holders and locked.judgment_count + len(holders) >= project.overlap:
            raise SubmitRefused(
                "Your time on this item ran out and other annotators have since completed it, so this "
                "judgment could not be saved. What you entered is kept below.",
                code="full",
            )
        judgment = Judgment.objects.create(
            comparison=locked,
            annotator=annotator,
            source=source,
            ranking=answer.ranking,
            strength=answer.strength,
            is_tie=answer.is_tie,
            both_bad=answer.both_bad,
            rationale=answer.rationale,
            criteria=answer.criteria,
            order_shown=list(order_shown),
            time_spent_ms=_clamp_time(time_spent_ms),
            client_id=client_id,
        )
        Comparison.objects.filter(pk=locked.pk).update(judgment_count=F("judgment_count") + 1)
        Lease.objects.filter(comparison=locked, annotator=annotator).delete()
    return Submitted(judgment=judgment, created=True)


def _replayed(existing: Judgment, annotator) -> Submitted:
    if existing.annotator_id != annotator.pk:
        raise SubmitRefused("This submission id belongs to someone else; reload the page.", code="foreign")
    return Submitted(judgment=existing, created=False)


# --- editing recent judgments --------------------------------------------------------------


def judgments_editable_by(annotator, round: Round) -> QuerySet[Judgment]:
    """The annotator's latest judgments in ``round`` that they may still reopen (newest first)."""
    if round.status != Round.Status.OPEN:
        return Judgment.objects.none()
    return (
        Judgment.objects.filter(annotator=annotator, comparison__round=round)
        .select_related("comparison__prompt")
        .order_by("-created_at", "-pk")[:EDITABLE_RECENT]
    )


class EditRefused(Exception):
    pass


def judgment_update(*, judgment: Judgment, answer: Answer, time_spent_ms: int | None = None) -> Judgment:
    """Replace the verdict of one of the annotator's recent judgments (its order shown stays)."""
    _check_answer(answer, judgment.order_shown)
    round = judgment.comparison.round
    recent = {j.pk for j in judgments_editable_by(judgment.annotator, round)}
    if judgment.pk not in recent:
        raise EditRefused("Only your last few judgments in an open round can be edited.")
    judgment.ranking = answer.ranking
    judgment.strength = answer.strength
    judgment.is_tie = answer.is_tie
    judgment.both_bad = answer.both_bad
    judgment.rationale = answer.rationale
    judgment.criteria = answer.criteria
    if time_spent_ms is not None:
        judgment.time_spent_ms = _clamp_time((judgment.time_spent_ms or 0) + time_spent_ms)
    judgment.save(
        update_fields=[
            "ranking",
            "strength",
            "is_tie",
            "both_bad",
            "rationale",
            "criteria",
            "time_spent_ms",
            "updated_at",
        ]
    )
    return judgment

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
from django.utils import timezone

from annotation import leases, rows
from annotation.models import Comparison, Judgment, Lease, Project, Prompt, Round, Skip, conversation_preview

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

    Only a comparison handed out to the annotator can be judged, in the order it was shown
    (the lease's order is the one recorded). Accepted when the annotator's lease is live, or,
    if it expired, when the comparison still has room (judgments plus other annotators' live
    leases below the overlap).
    """
    _check_answer(answer, order_shown)
    now = now or timezone.now()
    judgment_table, lease_table = rows.table(Judgment), rows.table(Lease)
    with transaction.atomic():
        # Lock first, then look in a fresh statement: under READ COMMITTED it sees every
        # judgment and lease committed while this one waited for the lock.
        rows.fetch(
            f"SELECT id FROM {rows.table(Comparison)} WHERE id = %s{rows.for_update()}", [comparison.pk]
        )
        now_db = rows.db_value(Lease, "expires_at", now)
        state = rows.fetch(
            f"""SELECT c.judgment_count, r.status, p.overlap,
                    (SELECT COUNT(*) FROM {judgment_table} j WHERE j.comparison_id = c.id AND j.annotator_id = %s),
                    (SELECT COUNT(*) FROM {rows.table(Skip)} s WHERE s.comparison_id = c.id AND s.annotator_id = %s),
                    (SELECT COUNT(*) FROM {lease_table} l
                      WHERE l.comparison_id = c.id AND l.expires_at > %s AND l.annotator_id <> %s),
                    (SELECT COUNT(*) FROM {lease_table} l
                      WHERE l.comparison_id = c.id AND l.expires_at > %s AND l.annotator_id = %s),
                    (SELECT id FROM {judgment_table} j WHERE j.client_id = %s),
                    (SELECT l."order" FROM {lease_table} l WHERE l.comparison_id = c.id AND l.annotator_id = %s)
                FROM {rows.table(Comparison)} c
                JOIN {rows.table(Round)} r ON r.id = c.round_id
                JOIN {rows.table(Project)} p ON p.id = r.project_id
                WHERE c.id = %s""",
            [annotator.pk, annotator.pk, now_db, annotator.pk, now_db, annotator.pk]
            + [rows.db_value(Judgment, "client_id", client_id), annotator.pk, comparison.pk],
        )
        if not state:
            raise SubmitRefused("This comparison is no longer part of an open round.", code="closed")
        judgment_count, status, overlap, judged, skipped, others_live, mine_live, replay_id, lease_order = (
            state[0]
        )
        if replay_id is not None:
            # A retry or double click of a submit that was already recorded.
            return _replayed(Judgment.objects.get(pk=replay_id), annotator)
        if status != Round.Status.OPEN:
            raise SubmitRefused("This round is closed, so the judgment was not saved.", code="closed")
        if judged:
            raise SubmitRefused(
                "You have already judged this comparison (perhaps in another tab); edit it from your recent list.",
                code="duplicate",
            )
        if skipped:
            raise SubmitRefused(
                "You skipped this comparison, so it is no longer yours to judge.", code="skipped"
            )
        if lease_order is None:
            # Never handed to this annotator (a gold item, another person's item): judging it would
            # bypass the gold rate, the open-item cap and the randomised order.
            raise SubmitRefused(
                "This comparison was not handed out to you, so the judgment was not saved. "
                "Open your next item to go on.",
                code="not_handed_out",
            )
        if rows.converted(Lease, [lease_order], ("order",))[0] != list(order_shown):
            raise SubmitRefused(
                "This page no longer shows the item as it was handed to you; reload it to judge it again.",
                code="order",
            )
        if not mine_live and judgment_count + others_live >= overlap:
            raise SubmitRefused(
                "Your time on this item ran out and other annotators have since completed it, so this "
                "judgment could not be saved. What you entered is kept below.",
                code="full",
            )
        judgment = rows.insert(
            Judgment(
                comparison=comparison,
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
            ),
            along=[
                (
                    f"UPDATE {rows.table(Comparison)} SET judgment_count = judgment_count + 1 WHERE id = %s",
                    [comparison.pk],
                ),
                (
                    f"DELETE FROM {lease_table} WHERE comparison_id = %s AND annotator_id = %s",
                    [comparison.pk, annotator.pk],
                ),
            ],
        )
    return Submitted(judgment=judgment, created=True)


def _replayed(existing: Judgment, annotator) -> Submitted:
    if existing.annotator_id != annotator.pk:
        raise SubmitRefused("This submission id belongs to someone else; reload the page.", code="foreign")
    return Submitted(judgment=existing, created=False)


# --- editing recent judgments --------------------------------------------------------------


# What the list beside every item shows of a recent judgment and of its prompt.
_RECENT_JUDGMENT = ("id", "is_tie", "both_bad", "created_at")
_RECENT_PROMPT = ("conversation",)


@dataclass(frozen=True, slots=True)
class RecentJudgment:
    """One of the annotator's latest judgments as the list beside every item shows it.

    Plain values, not model instances: the list is drawn after every submit, and building
    three model instances per row cost more CPU than reading the rows.
    """

    pk: int
    is_tie: bool
    both_bad: bool
    created_at: datetime
    preview: str  # the start of its prompt's last user turn


def judgments_editable_by(annotator, round: Round) -> list[RecentJudgment]:
    """The annotator's latest judgments in ``round`` that they may still reopen (newest first)."""
    if round.status != Round.Status.OPEN:
        return []
    return [judgment for judgment, _ in _recent_with(annotator, round)]


def progress_and_recent(annotator, round: Round) -> tuple[leases.Progress, list[RecentJudgment]]:
    """``leases.progress_for`` and ``judgments_editable_by`` for the list beside every item.

    One statement: the progress counts ride along each recent judgment. Only an annotator
    with no judgment in the round yet (nothing to ride on) costs a second one.
    """
    if round.status != Round.Status.OPEN:
        return leases.progress_for(annotator, round), []
    columns, params = leases.progress_columns(annotator, round, timezone.now())
    found = _recent_with(annotator, round, columns, params)
    if not found:
        return leases.progress_for(annotator, round), []
    return leases.progress_from(found[0][1]), [judgment for judgment, _ in found]


def _recent_with(annotator, round: Round, columns: str = "", params: list | None = None) -> list:
    """(judgment, extra values) for the annotator's ``EDITABLE_RECENT`` latest judgments in ``round``,
    the extra values being those of ``columns`` (SQL with ``params``) selected alongside."""
    found = rows.fetch(
        f"""SELECT {rows.columns(Judgment, "j", _RECENT_JUDGMENT)}, {rows.columns(Prompt, "q", _RECENT_PROMPT)}
                   {f", {columns}" if columns else ""}
            FROM {rows.table(Judgment)} j
            JOIN {rows.table(Comparison)} c ON c.id = j.comparison_id
            JOIN {rows.table(Prompt)} q ON q.id = c.prompt_id
            WHERE j.annotator_id = %s AND j.created_at >= %s AND c.round_id = %s
            ORDER BY j.created_at DESC, j.id DESC
            LIMIT {EDITABLE_RECENT}""",
        # Nothing in a round predates it: the walk back through the annotator's judgments stops
        # there, not at their first judgment ever, when they have fewer than five in this round.
        [*(params or []), annotator.pk, rows.db_value(Judgment, "created_at", round.created_at), round.pk],
    )
    width = rows.width(Judgment, _RECENT_JUDGMENT)
    recent = []
    for row in found:
        # Columns come in the model's field order, which _RECENT_JUDGMENT follows.
        pk, is_tie, both_bad, created_at = rows.converted(Judgment, row[:width], _RECENT_JUDGMENT)
        (conversation,) = rows.converted(Prompt, row[width : width + 1], _RECENT_PROMPT)
        judgment = RecentJudgment(pk, is_tie, both_bad, created_at, conversation_preview(conversation))
        recent.append((judgment, row[width + 1 :]))
    return recent


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

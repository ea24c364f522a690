"""Handing out work: which rounds an annotator may work on, the next comparison as a lease, skips.

The invariant every function here keeps: for every comparison,
``judgment_count + live leases <= project.overlap``, where a lease is live while
``expires_at > now``. Every lease insert (and every judgment insert, see
``annotation.judgments``) happens while the comparison's row is locked, so two
annotators never take the last slot of one comparison at once.

Postgres: the claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` inside
``transaction.atomic()`` (annotators racing for work pass each other by instead of
queueing), followed by a re-count of live leases in a fresh statement: under READ
COMMITTED the locking statement's subquery may have used a snapshot taken before a
competitor committed its lease.

SQLite: ``FOR UPDATE`` is a no-op there, but the settings open every transaction as
``BEGIN IMMEDIATE``, so ``atomic()`` already holds the database's single write lock
before the first read: writers are serialised and the same code is correct.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from annotation import rows
from annotation.models import (
    Comparison,
    ComparisonItem,
    Judgment,
    Lease,
    Project,
    Prompt,
    Response,
    Round,
    Skip,
)

_system_random = random.SystemRandom()


class LeaseCapReached(Exception):
    """The annotator already holds as many open items of this project as it allows."""


# --- who may work on what ----------------------------------------------------------------


def projects_open_to(annotator) -> QuerySet[Project]:
    """Active projects whose work ``annotator`` may get (assigned, or open to all annotators)."""
    assigned = Project.annotators.through.objects.filter(project_id=OuterRef("pk"), user_id=annotator.pk)
    return Project.objects.filter(is_active=True).filter(Q(open_to_all_annotators=True) | Exists(assigned))


def rounds_preparing_for(annotator) -> QuerySet[Round]:
    """Rounds of the projects open to ``annotator`` whose responses are still being generated."""
    return Round.objects.filter(
        status=Round.Status.GENERATING, project__in=projects_open_to(annotator)
    ).select_related("project", "generation_run")


def rounds_open_to(annotator) -> QuerySet[Round]:
    """Open rounds of the projects open to ``annotator``."""
    return Round.objects.filter(
        status=Round.Status.OPEN, project__in=projects_open_to(annotator)
    ).select_related("project")


# --- what the page shows -------------------------------------------------------------------


# Items still open to an annotator are counted up to this many ("1000+ remaining" above it):
# counting every open item of a big round on every submit was the database's largest
# cost per judgment, and past a thousand the exact figure tells an annotator nothing.
REMAINING_COUNTED_UP_TO = 1000


@dataclass(frozen=True)
class Progress:
    done_in_round: int
    remaining: int  # at most REMAINING_COUNTED_UP_TO
    done_today: int
    remaining_more: bool = False  # more than ``remaining`` are open to the annotator


def progress_for(annotator, round: Round, *, now: datetime | None = None) -> Progress:
    """The progress line: my judgments in this round, items still open to me, my judgments today.

    "Open to me": still wants judgments and I have neither judged nor skipped it (an item
    I hold a lease on counts: it is the one on my screen), counted up to
    ``REMAINING_COUNTED_UP_TO``. One statement (``judgments.progress_and_recent`` folds
    it into the recent list's, beside every item).
    """
    columns, params = progress_columns(annotator, round, now or timezone.now())
    ((*counts,),) = rows.fetch(f"SELECT {columns}", params)
    return progress_from(counts)


def progress_columns(annotator, round: Round, now: datetime) -> tuple[str, list]:
    """The three counts ``progress_for`` reads, as uncorrelated scalar subqueries, and their parameters."""
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    judgment, comparison, skip = rows.table(Judgment), rows.table(Comparison), rows.table(Skip)
    floor = first_comparison_id(round)
    sql = f"""(SELECT COUNT(*) FROM {judgment} j JOIN {comparison} c ON c.id = j.comparison_id
              WHERE j.annotator_id = %s AND j.comparison_id >= %s AND c.round_id = %s),
            (SELECT COUNT(*) FROM {judgment} j WHERE j.annotator_id = %s AND j.created_at >= %s),
            (SELECT COUNT(*) FROM (
              SELECT 1 FROM {comparison} c WHERE c.round_id = %s AND c.judgment_count < %s
                AND c.id NOT IN (SELECT comparison_id FROM {judgment} WHERE annotator_id = %s AND comparison_id >= %s)
                AND c.id NOT IN (SELECT comparison_id FROM {skip} WHERE annotator_id = %s)
              LIMIT %s) open_to_me)"""
    params = [
        annotator.pk,
        floor,
        round.pk,
        annotator.pk,
        rows.db_value(Judgment, "created_at", midnight),
        round.pk,
        round.project.overlap,
        annotator.pk,
        floor,
        annotator.pk,
        REMAINING_COUNTED_UP_TO + 1,
    ]
    return sql, params


# Each process remembers the rounds' floors (see first_comparison_id): round id -> smallest comparison id.
_first_comparison_ids: dict[int, int] = {}


def first_comparison_id(round: Round) -> int:
    """A lower bound on the ids of ``round``'s comparisons: the annotator's own judgments are read
    from it on (``judgment_annotator_comparison``), not from every round they ever worked in.

    Without it, an annotator with a few rounds behind them paid for all of them on every
    submit (30,000 earlier judgments: ~60 ms of database time per page). Any lower bound keeps
    the queries exact, since it only narrows what a ``NOT IN`` or a count with ``round_id``
    reads; the round's smallest comparison id is the tightest, and it never falls (comparisons
    are added with higher ids or deleted), so it is looked up once per round and process. (An
    admin moving an older comparison into the round would slip under it: that item could be
    handed to someone who judged it, and the submit refuses it as already judged.)
    """
    floor = _first_comparison_ids.get(round.pk)
    if floor is None:
        floor = Comparison.objects.filter(round_id=round.pk).aggregate(first=Min("id"))["first"]
        if floor is None:  # no comparisons yet: nothing to narrow, nothing to remember
            return 0
        _first_comparison_ids[round.pk] = floor
    return floor


def progress_from(counts) -> Progress:
    """``Progress`` from the three values ``progress_columns`` selects."""
    done_in_round, done_today, remaining = counts
    return Progress(
        done_in_round=done_in_round,
        remaining=min(remaining, REMAINING_COUNTED_UP_TO),
        done_today=done_today,
        remaining_more=remaining > REMAINING_COUNTED_UP_TO,
    )


def comparison_open_to(annotator, comparison_id: int, *, content: bool = True) -> Comparison | None:
    """A comparison of an open round open to ``annotator``, with its round, project, prompt and items.

    One statement (the page after every submit needs it): ``comparison.round.project``,
    ``comparison.prompt`` and ``comparison.items.all()`` (each item with its ``response``)
    are filled in and cost no further query. With ``content=False`` the prompt and the
    responses are left out (items carry only ``response_id``): enough to check a submit,
    which answers with the next comparison, not this one. None when it does not exist or
    is not theirs.
    """
    return _comparison_with_parts(comparison_id, open_to=annotator, content=content)


def _comparison_with_parts(
    comparison_id: int, *, open_to=None, content: bool = True, live_leases_at: datetime | None = None
) -> Comparison | None:
    """The comparison with its parts as ``comparison_open_to`` describes, in one statement.

    ``open_to``: only if it is in an open round of a project open to that annotator.
    ``live_leases_at``: also count the leases live at that time, as ``comparison.live_leases``.
    """
    models = [Comparison, Round, Project, ComparisonItem] + ([Prompt, Response] if content else [])
    aliases = {Comparison: "c", Round: "r", Project: "p", ComparisonItem: "i", Prompt: "q", Response: "s"}
    columns = ", ".join(rows.columns(model, aliases[model]) for model in models)
    params = []
    if live_leases_at is not None:
        columns += f", (SELECT COUNT(*) FROM {rows.table(Lease)} l WHERE l.comparison_id = c.id AND l.expires_at > %s)"
        params.append(rows.db_value(Lease, "expires_at", live_leases_at))
    content_joins = (
        f"""JOIN {rows.table(Prompt)} q ON q.id = c.prompt_id
            JOIN {rows.table(Response)} s ON s.id = i.response_id"""
        if content
        else ""
    )
    params.append(comparison_id)
    access = ""
    if open_to is not None:
        access = f"""AND r.status = %s AND p.is_active = %s
              AND (p.open_to_all_annotators = %s OR EXISTS (
                   SELECT 1 FROM {rows.table(Project.annotators.through)} a
                   WHERE a.project_id = p.id AND a.user_id = %s))"""
        params += [Round.Status.OPEN.value, True, True, open_to.pk]
    found = rows.fetch(
        f"""SELECT {columns}
            FROM {rows.table(Comparison)} c
            JOIN {rows.table(Round)} r ON r.id = c.round_id
            JOIN {rows.table(Project)} p ON p.id = r.project_id
            JOIN {rows.table(ComparisonItem)} i ON i.comparison_id = c.id
            {content_joins}
            WHERE c.id = %s {access}
            ORDER BY i.position""",
        params,
    )
    if not found:
        return None
    widths = [rows.width(model) for model in models]
    bounds = [sum(widths[:i]) for i in range(len(widths) + 1)]

    def part(row, model):
        index = models.index(model)
        return rows.instance(model, row[bounds[index] : bounds[index + 1]])

    comparison = part(found[0], Comparison)
    comparison.round = part(found[0], Round)
    comparison.round.project = part(found[0], Project)
    if content:
        comparison.prompt = part(found[0], Prompt)
    if live_leases_at is not None:
        comparison.live_leases = found[0][-1]
    items = []
    for row in found:
        item = part(row, ComparisonItem)
        if content:
            item.response = part(row, Response)
        item.comparison = comparison
        items.append(item)
    rows.prefetched(comparison, "items", items)
    return comparison


def comparison_content(comparison: Comparison) -> Comparison:
    """Fill in the prompt and responses that ``comparison_open_to(..., content=False)`` left out."""
    comparison.prompt = Prompt.objects.get(pk=comparison.prompt_id)
    items = ComparisonItem.objects.filter(comparison=comparison).select_related("response")
    rows.prefetched(comparison, "items", list(items.order_by("position")))
    return comparison


# --- leases --------------------------------------------------------------------------------


def _expiry(project: Project, now: datetime) -> datetime:
    return now + timedelta(minutes=project.lease_minutes)


def _held(annotator, project: Project, now: datetime) -> list[tuple[Lease, int]]:
    """The annotator's live leases in ``project``, oldest first, each with its comparison's round id."""
    # Start from the annotator's own live leases (a handful) whatever the statistics say.
    found = rows.fetch(
        f"""WITH mine AS MATERIALIZED (
                SELECT * FROM {rows.table(Lease)} WHERE annotator_id = %s AND expires_at > %s
            )
            SELECT {rows.columns(Lease, "l")}, c.round_id
            FROM mine l
            JOIN {rows.table(Comparison)} c ON c.id = l.comparison_id
            JOIN {rows.table(Round)} r ON r.id = c.round_id
            WHERE r.project_id = %s
            ORDER BY l.created_at""",
        [annotator.pk, rows.db_value(Lease, "expires_at", now), project.pk],
    )
    return [(rows.instance(Lease, row[:-1]), row[-1]) for row in found]


def _claim(annotator, round: Round, now: datetime, *, gold_first: bool, tried: list[int]) -> int | None:
    """Lock and return the id of the first comparison the annotator may take, skipping locked rows.

    Never one the annotator judged, skipped or was handed before (live or expired lease),
    nor one whose judgments plus live leases already reach the overlap. Every subquery is
    uncorrelated on purpose: the annotator's own rows (read through their annotator
    indexes) and the round's held comparisons (a set the size of the active crowd) are
    each hashed once, whatever the statistics of a freshly opened round say, instead of
    probed once per candidate row.
    """
    judgment, skip, lease, comparison = (rows.table(m) for m in (Judgment, Skip, Lease, Comparison))
    now_db = rows.db_value(Lease, "expires_at", now)
    not_tried = f"AND c.id NOT IN ({', '.join(['%s'] * len(tried))})" if tried else ""
    found = rows.fetch(
        f"""SELECT c.id FROM {comparison} c
            WHERE c.round_id = %s AND c.judgment_count < %s
              AND c.id NOT IN (SELECT comparison_id FROM {judgment} WHERE annotator_id = %s AND comparison_id >= %s)
              AND c.id NOT IN (SELECT comparison_id FROM {skip} WHERE annotator_id = %s)
              AND c.id NOT IN (SELECT comparison_id FROM {lease} WHERE annotator_id = %s)
              AND c.id NOT IN (
                  SELECT l.comparison_id FROM {lease} l JOIN {comparison} lc ON lc.id = l.comparison_id
                  WHERE lc.round_id = %s AND l.expires_at > %s
                  GROUP BY l.comparison_id, lc.judgment_count HAVING COUNT(*) >= %s - lc.judgment_count)
              {not_tried}
            ORDER BY c.is_gold {"DESC" if gold_first else "ASC"}, c.id
            LIMIT 1{rows.for_update(skip_locked=True, of="c")}""",
        [round.pk, round.project.overlap, annotator.pk, first_comparison_id(round), annotator.pk]
        + [annotator.pk, round.pk, now_db, round.project.overlap, *tried],
    )
    return found[0][0] if found else None


def comparison_next_for(
    annotator,
    round: Round,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
    resume: bool = True,
) -> Lease | None:
    """The annotator's next comparison in ``round`` as a live lease, or None when nothing is left.

    ``lease.comparison`` comes with what the page shows (as ``comparison_open_to`` fills it).

    With ``resume`` (the default), a live lease the annotator already holds in this
    round is extended and returned, so reloading the page never burns a slot.
    Raises ``LeaseCapReached`` when the annotator holds ``project.max_open_leases``
    live leases in the project. Gold items come first with probability
    ``project.gold_rate`` (``rng`` makes that reproducible in tests).
    """
    now = now or timezone.now()
    project = round.project
    if round.status != Round.Status.OPEN:
        return None
    held = _held(annotator, project, now)
    if resume:
        for lease, round_id in held:
            if round_id == round.pk:
                lease.expires_at = _expiry(project, now)
                rows.execute(
                    f"UPDATE {rows.table(Lease)} SET expires_at = %s WHERE id = %s",
                    [rows.db_value(Lease, "expires_at", lease.expires_at), lease.pk],
                )
                lease.comparison = _comparison_with_parts(lease.comparison_id)
                return lease
    if len(held) >= project.max_open_leases:
        raise LeaseCapReached(
            f"You already hold {len(held)} open item(s) in {project.name}; finish or skip one first."
        )

    want_gold = project.gold_rate > 0 and (rng or _system_random).random() < project.gold_rate
    tried: list[int] = []
    with transaction.atomic():
        # A handful of tries covers the rare race described in the module docstring.
        for _ in range(5):
            comparison_id = _claim(annotator, round, now, gold_first=want_gold, tried=tried)
            if comparison_id is None:
                return None
            # A fresh statement, so a lease committed while we waited for the lock is counted;
            # it also reads what the page will show.
            comparison = _comparison_with_parts(comparison_id, live_leases_at=now)
            if comparison.judgment_count + comparison.live_leases < project.overlap:
                break
            tried.append(comparison_id)
        else:
            return None
        order = [item.response_id for item in comparison.items.all()]
        _system_random.shuffle(order)  # position bias is measured from Judgment.order_shown
        lease = rows.insert(
            Lease(
                comparison=comparison,
                annotator=annotator,
                order=order,
                expires_at=_expiry(project, now),
            )
        )
    return lease


def lease_extend(*, annotator, comparison: Comparison, now: datetime | None = None) -> Lease | None:
    """Keep an active annotator's lease alive; None when it had expired and the slot is gone.

    A lease that expired while nobody else took its slot is revived, so a slow reader
    loses nothing.
    """
    now = now or timezone.now()
    project = comparison.round.project
    expires_at = _expiry(project, now)
    if Lease.objects.filter(comparison=comparison, annotator=annotator, expires_at__gt=now).update(
        expires_at=expires_at
    ):
        return Lease.objects.get(comparison=comparison, annotator=annotator)
    with transaction.atomic():
        locked = Comparison.objects.select_for_update().get(pk=comparison.pk)
        lease = Lease.objects.filter(comparison=locked, annotator=annotator).first()
        if lease is None:
            return None
        live = Lease.objects.filter(comparison=locked, expires_at__gt=now).count()
        if locked.judgment_count + live >= project.overlap:
            return None
        lease.expires_at = expires_at
        lease.save(update_fields=["expires_at"])
    return lease


def lease_for(annotator, comparison: Comparison) -> Lease | None:
    """The annotator's lease on ``comparison``, live or expired (its order is what they saw)."""
    return Lease.objects.filter(comparison=comparison, annotator=annotator).first()


def comparison_skip(*, annotator, comparison: Comparison, reason: str = "") -> Skip:
    """Pass on a comparison: never shown to this annotator again, its slot back in the pool."""
    with transaction.atomic():
        skip, _ = Skip.objects.get_or_create(
            comparison=comparison, annotator=annotator, defaults={"reason": reason[:500]}
        )
        Lease.objects.filter(comparison=comparison, annotator=annotator).delete()
    return skip

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
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from annotation.models import Comparison, ComparisonItem, Judgment, Lease, Project, Round, Skip

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


# --- the pool ------------------------------------------------------------------------------


def _filled_by_live_leases(round: Round, now: datetime) -> QuerySet:
    """Ids of the round's comparisons whose judgments plus live leases already reach the overlap.

    Uncorrelated on purpose: Postgres computes it once (only comparisons someone holds
    right now, a set the size of the active crowd) instead of once per candidate row.
    """
    return (
        Lease.objects.filter(comparison__round=round, expires_at__gt=now)
        .values("comparison_id", "comparison__judgment_count")
        .annotate(live=Count("pk"))
        .filter(live__gte=round.project.overlap - F("comparison__judgment_count"))
        .values("comparison_id")
    )


def _seen_by(annotator) -> Q:
    """Comparisons the annotator has judged, skipped or been handed (live or expired).

    Uncorrelated ``IN`` subqueries on the annotator's own rows (each read through an
    index on annotator): Postgres hashes each set once, whatever its estimates for a
    freshly opened round say.
    """
    return (
        Q(pk__in=Judgment.objects.filter(annotator=annotator).values("comparison_id"))
        | Q(pk__in=Skip.objects.filter(annotator=annotator).values("comparison_id"))
        | Q(pk__in=Lease.objects.filter(annotator=annotator).values("comparison_id"))
    )


def _claimable(annotator, round: Round, now: datetime) -> QuerySet[Comparison]:
    return (
        Comparison.objects.filter(round=round, judgment_count__lt=round.project.overlap)
        .exclude(_seen_by(annotator))
        .exclude(pk__in=_filled_by_live_leases(round, now))
    )


@dataclass(frozen=True)
class Progress:
    done_in_round: int
    remaining: int
    done_today: int


def progress_for(annotator, round: Round, *, now: datetime | None = None) -> Progress:
    """The progress line: my judgments in this round, items still open to me, my judgments today."""
    now = now or timezone.now()
    midnight = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    mine = Judgment.objects.filter(annotator=annotator).aggregate(
        round=Count("pk", filter=Q(comparison__round=round)),
        today=Count("pk", filter=Q(created_at__gte=midnight)),
    )
    # Open to me: still wants judgments and I have neither judged nor skipped it. An item
    # I hold a lease on counts too (it is the one on my screen).
    remaining = (
        Comparison.objects.filter(round=round, judgment_count__lt=round.project.overlap)
        .exclude(pk__in=Judgment.objects.filter(annotator=annotator).values("comparison_id"))
        .exclude(pk__in=Skip.objects.filter(annotator=annotator).values("comparison_id"))
        .count()
    )
    return Progress(done_in_round=mine["round"], remaining=remaining, done_today=mine["today"])


# --- leases --------------------------------------------------------------------------------


def _expiry(project: Project, now: datetime) -> datetime:
    return now + timedelta(minutes=project.lease_minutes)


def comparison_next_for(
    annotator,
    round: Round,
    *,
    now: datetime | None = None,
    rng: random.Random | None = None,
    resume: bool = True,
) -> Lease | None:
    """The annotator's next comparison in ``round`` as a live lease, or None when nothing is left.

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
    held = list(
        Lease.objects.filter(annotator=annotator, expires_at__gt=now, comparison__round__project=project)
        .select_related("comparison__round")
        .order_by("created_at")
    )
    if resume:
        for lease in held:
            if lease.comparison.round_id == round.pk:
                lease.expires_at = _expiry(project, now)
                Lease.objects.filter(pk=lease.pk).update(expires_at=lease.expires_at)
                return lease
    if len(held) >= project.max_open_leases:
        raise LeaseCapReached(
            f"You already hold {len(held)} open item(s) in {project.name}; finish or skip one first."
        )

    want_gold = project.gold_rate > 0 and (rng or _system_random).random() < project.gold_rate
    gold_first = F("is_gold").desc() if want_gold else F("is_gold").asc()
    tried: list[int] = []
    with transaction.atomic():
        # A handful of tries covers the rare race described in the module docstring.
        for _ in range(5):
            comparison = (
                _claimable(annotator, round, now)
                .exclude(pk__in=tried)
                .order_by(gold_first, "id")
                .select_for_update(skip_locked=True, of=("self",))
                .first()
            )
            if comparison is None:
                return None
            live = Lease.objects.filter(comparison=comparison, expires_at__gt=now).count()
            if comparison.judgment_count + live < project.overlap:
                break
            tried.append(comparison.pk)
        else:
            return None
        order = list(
            ComparisonItem.objects.filter(comparison=comparison).values_list("response_id", flat=True)
        )
        _system_random.shuffle(order)  # position bias is measured from Judgment.order_shown
        lease = Lease.objects.create(
            comparison=comparison, annotator=annotator, order=order, expires_at=_expiry(project, now)
        )
    lease.comparison = comparison
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

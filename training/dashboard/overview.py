"""Where each project stands, for the dashboard's first page, in a fixed number of queries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, OuterRef, Q, Subquery
from django.utils import timezone

from annotation.models import Project, Round
from training import quality
from training.leaderboard_data import project_votes, tally
from training.models import Checkpoint, TrainingRun

ACTIVE_ANNOTATOR_DAYS = 7


@dataclass
class ProjectSummary:
    project: Project
    current_round: Round | None
    judgments_today: int
    judgments_total: int
    active_annotators: int
    agreement: float | None  # Krippendorff's alpha of the current round
    newest_checkpoint: Checkpoint | None
    win_rate: float | None  # the newest checkpoint's share of human votes won (ties count half)
    win_votes: int
    active_runs: list[TrainingRun] = field(default_factory=list)


def project_summaries(*, now: datetime | None = None) -> list[ProjectSummary]:
    """One summary per active project: 7 queries whatever the number of projects."""
    now = now or timezone.now()
    today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    judgments = "prompts__comparisons__judgments"
    projects = list(
        Project.objects.filter(is_active=True)
        .annotate(
            judgments_total=Count(judgments),
            judgments_today=Count(judgments, filter=Q(**{f"{judgments}__created_at__gte": today})),
            active_annotators=Count(
                f"{judgments}__annotator",
                distinct=True,
                filter=Q(**{f"{judgments}__created_at__gte": now - timedelta(days=ACTIVE_ANNOTATOR_DAYS)}),
            ),
            current_round_id=Subquery(
                Round.objects.filter(project=OuterRef("pk")).order_by("-number").values("pk")[:1]
            ),
            newest_checkpoint_id=Subquery(
                Checkpoint.objects.filter(project=OuterRef("pk")).order_by("-version").values("pk")[:1]
            ),
        )
        .order_by("name")
    )
    rounds = Round.objects.in_bulk([p.current_round_id for p in projects if p.current_round_id])
    checkpoints = Checkpoint.objects.in_bulk(
        [p.newest_checkpoint_id for p in projects if p.newest_checkpoint_id]
    )
    runs: dict[int, list[TrainingRun]] = {}
    for run in TrainingRun.objects.filter(
        project__in=[p.pk for p in projects], status__in=TrainingRun.ACTIVE
    ).order_by("-created_at"):
        runs.setdefault(run.project_id, []).append(run)
    votes = project_votes([p.pk for p in projects])
    alphas = quality.round_alphas(list(rounds))

    summaries = []
    for p in projects:
        rate, n = (None, 0)
        if p.newest_checkpoint_id:
            rate, n = tally(votes[p.pk]).win_rate(p.newest_checkpoint_id)
        summaries.append(
            ProjectSummary(
                project=p,
                current_round=rounds.get(p.current_round_id),
                judgments_today=p.judgments_today,
                judgments_total=p.judgments_total,
                active_annotators=p.active_annotators,
                agreement=alphas.get(p.current_round_id),
                newest_checkpoint=checkpoints.get(p.newest_checkpoint_id),
                win_rate=rate,
                win_votes=n,
                active_runs=runs.get(p.pk, []),
            )
        )
    return summaries

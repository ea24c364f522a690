"""Annotator quality for the dashboard: judgments, time, gold accuracy, agreement, position bias.

This module reads rows and shapes them as plain judgment dicts (the shape
``training.ml.pairs`` uses); the figures come from ``training.ml.agreement``
(Krippendorff's alpha, agreement with the other annotators, left-pick rate) and
``training.ml.pairs`` (gold accuracy).
"""

from __future__ import annotations

import importlib
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from annotation.models import AnnotatorProfile, Judgment, Project, Round
from training.ml.pairs import gold_accuracy_by_annotator


def judgment_dicts(queryset) -> list[dict]:
    """Judgments as plain dicts: ids as strings, rankings as groups of string ids."""
    rows = queryset.filter(annotator__isnull=False).values_list(
        "id",
        "comparison_id",
        "annotator_id",
        "comparison__round_id",
        "ranking",
        "order_shown",
        "both_bad",
        "time_spent_ms",
        "comparison__is_gold",
        "comparison__gold_ranking",
    )
    return [
        {
            "judgment_id": jid,
            "comparison_id": cid,
            "annotator": str(annotator),
            "round": round_id,
            "ranking": [[str(r) for r in group] for group in (ranking or [])],
            "order_shown": [str(r) for r in (order or [])],
            "both_bad": both_bad,
            "time_spent_ms": ms,
            "is_gold": is_gold,
            "gold_ranking": [[str(r) for r in group] for group in gold] if gold is not None else None,
        }
        for jid, cid, annotator, round_id, ranking, order, both_bad, ms, is_gold, gold in rows.order_by("id")
    ]


def _agreement():
    """``training.ml.agreement``, or None while it is not installed."""
    try:
        return importlib.import_module("training.ml.agreement")
    except ImportError:
        return None


def alpha_of(judgments: list[dict]) -> float | None:
    """Krippendorff's alpha over the judgments' verdicts; None when it cannot be computed."""
    ml = _agreement()
    if ml is None or not judgments:
        return None
    value = ml.judgments_alpha(judgments)
    return None if value is None or value != value else float(value)


def round_alphas(round_ids: Iterable[int]) -> dict[int, float | None]:
    """{round id: alpha} in one query."""
    round_ids = list(round_ids)
    if not round_ids:
        return {}
    by_round: dict[int, list[dict]] = defaultdict(list)
    for j in judgment_dicts(Judgment.objects.filter(comparison__round_id__in=round_ids)):
        by_round[j["round"]].append(j)
    return {rid: alpha_of(by_round.get(rid, [])) for rid in round_ids}


@dataclass
class RoundQuality:
    round: Round
    judgments: int
    shared_comparisons: int  # comparisons judged by two or more annotators
    alpha: float | None


def project_round_alphas(project: Project) -> list[RoundQuality]:
    rounds = list(
        project.rounds.annotate(
            judgment_total=Count("comparisons__judgments"),
        ).order_by("-number")
    )
    shared = dict(
        Round.objects.filter(project=project, comparisons__judgment_count__gte=2)
        .annotate(n=Count("comparisons", distinct=True))
        .values_list("pk", "n")
    )
    alphas = round_alphas([r.pk for r in rounds])
    return [RoundQuality(r, r.judgment_total, shared.get(r.pk, 0), alphas.get(r.pk)) for r in rounds]


@dataclass
class AnnotatorQuality:
    user: object
    judgments: int
    median_seconds: float | None
    gold_passed: int
    gold_seen: int
    agreement: float | None  # with the other annotators of the same comparisons
    agreement_items: int
    left_pick_rate: float | None  # share of decisive pairwise choices that went to the left response
    left_pick_n: int
    excluded: bool

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_passed / self.gold_seen if self.gold_seen else None


def annotator_quality(project: Project) -> list[AnnotatorQuality]:
    """One row per annotator who judged in ``project``, most judgments first."""
    judgments = judgment_dicts(Judgment.objects.filter(comparison__prompt__project=project))
    by_annotator: dict[str, list[dict]] = defaultdict(list)
    for j in judgments:
        by_annotator[j["annotator"]].append(j)
    users = get_user_model().objects.in_bulk([int(a) for a in by_annotator])
    excluded = set(
        AnnotatorProfile.objects.filter(
            Q(user_id__in=users.keys()) & Q(excluded_from_snapshots=True)
        ).values_list("user_id", flat=True)
    )
    gold = gold_accuracy_by_annotator(judgments)
    ml = _agreement()
    agreement = ml.annotator_agreement(judgments) if ml else {}
    left = ml.left_pick_rates(judgments) if ml else {}

    rows = []
    for annotator, mine in by_annotator.items():
        times = [j["time_spent_ms"] for j in mine if j["time_spent_ms"] is not None]
        agree, agree_n = agreement.get(annotator, (None, 0))
        rate, rate_n = left.get(annotator, (None, 0))
        passed, seen = gold.get(annotator, (0, 0))
        rows.append(
            AnnotatorQuality(
                user=users[int(annotator)],
                judgments=len(mine),
                median_seconds=statistics.median(times) / 1000 if times else None,
                gold_passed=passed,
                gold_seen=seen,
                agreement=agree,
                agreement_items=agree_n,
                left_pick_rate=rate,
                left_pick_n=rate_n,
                excluded=int(annotator) in excluded,
            )
        )
    rows.sort(key=lambda r: (-r.judgments, r.user.get_username()))
    return rows

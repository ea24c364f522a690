"""Annotator quality for the dashboard: judgments, time, gold accuracy, agreement, position bias.

This module reads rows and shapes them as plain judgment dicts (the shape
``training.ml.pairs`` uses); the figures come from ``training.ml.agreement``
(Krippendorff's alpha, agreement with the other annotators, left-pick rate) and
``training.ml.pairs`` (gold accuracy). Agreement is measured per item = one pair of
responses of a comparison, the verdict being which of the two is better, a tie, or
both bad; a K-wise ranking of K responses gives C(K, 2) items.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from annotation.models import AnnotatorProfile, Judgment, Project, Round
from training.ml import agreement
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


def verdict_triples(judgments: Iterable[dict]) -> list[tuple[tuple, str, str]]:
    """``(item, annotator, verdict)`` for agreement maths: an item is one pair of responses of a comparison.

    The verdict on responses x < y (by id) is "first" (x is better), "second", "tie" or
    "both_bad": labels that mean the same on every item, as nominal alpha needs.
    """
    triples = []
    for j in judgments:
        rank = {rid: i for i, group in enumerate(j["ranking"]) for rid in group}
        ids = sorted(rank, key=lambda r: (len(r), r))
        for i, x in enumerate(ids):
            for y in ids[i + 1 :]:
                if j["both_bad"]:
                    verdict = "both_bad"
                elif rank[x] == rank[y]:
                    verdict = "tie"
                else:
                    verdict = "first" if rank[x] < rank[y] else "second"
                triples.append(((j["comparison_id"], x, y), j["annotator"], verdict))
    return triples


def alpha_of(judgments: list[dict]) -> float | None:
    """Krippendorff's alpha (nominal) over the verdicts; None without overlap or variation."""
    triples = verdict_triples(judgments)
    if not triples:
        return None
    matrix, _annotators, _items = agreement.reliability_matrix(triples)
    return agreement.krippendorff_alpha(matrix, level="nominal")


def left_picks(judgments: Iterable[dict]) -> list[tuple[int, int]]:
    """``(position chosen, positions shown)`` of decisive judgments (one clear best, not both bad)."""
    picks = []
    for j in judgments:
        shown = j["order_shown"]
        if j["both_bad"] or len(shown) < 2 or not j["ranking"] or len(j["ranking"][0]) != 1:
            continue
        best = j["ranking"][0][0]
        if best in shown:
            picks.append((shown.index(best), len(shown)))
    return picks


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
    left_pick_rate: float | None  # share of decisive choices that went to the response shown first (left)
    left_pick_expected: float | None  # what an annotator without position bias would give
    left_pick_interval: tuple[float | None, float | None]  # 95% Wilson interval of the rate
    left_pick_n: int
    excluded: bool

    @property
    def position_biased(self) -> bool:
        """The chance rate lies outside the 95% interval of the observed left-pick rate."""
        low, high = self.left_pick_interval
        if self.left_pick_expected is None or low is None or high is None:
            return False
        return not low <= self.left_pick_expected <= high

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
    agreed = agreement.annotator_agreement(verdict_triples(judgments))

    rows = []
    for annotator, mine in by_annotator.items():
        times = [j["time_spent_ms"] for j in mine if j["time_spent_ms"] is not None]
        agree = agreed.get(annotator, {"agreement": None, "items": 0})
        left = agreement.left_pick_rate(left_picks(mine))
        passed, seen = gold.get(annotator, (0, 0))
        rows.append(
            AnnotatorQuality(
                user=users[int(annotator)],
                judgments=len(mine),
                median_seconds=statistics.median(times) / 1000 if times else None,
                gold_passed=passed,
                gold_seen=seen,
                agreement=agree["agreement"],
                agreement_items=agree["items"],
                left_pick_rate=left["rate"],
                left_pick_expected=left["expected"],
                left_pick_interval=(left["lower"], left["upper"]),
                left_pick_n=left["n"],
                excluded=int(annotator) in excluded,
            )
        )
    rows.sort(key=lambda r: (-r.judgments, r.user.get_username()))
    return rows

"""Human votes between checkpoints, gathered from judgments for the leaderboard.

A vote is one judgment's verdict on two responses that come from different
checkpoints of the same comparison: ``a`` won, ``b`` won, a tie, or both bad. A
pairwise judgment yields one vote; a K-wise ranking yields one per pair of
responses from different checkpoints. Gold items (quality probes), imported
judgments and annotators excluded from snapshots are left out.

Every vote keeps the comparison it came from. Votes of one comparison (three
annotators on the same two responses, or the pairs of one K-wise ranking) share
what made one response better, so they are not independent: the intervals resample
whole comparisons, and a head-to-head win rate (``head_to_head``, the matrix cells)
is clustered by comparison. Treating votes as independent gave 95% intervals that
covered the truth 86% of the time with three annotators per comparison.

The maths (Bradley-Terry fit, bootstrap intervals, rank rule, clustered win rates)
lives in ``training.ml.leaderboard``; this module only reads rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from annotation.models import ComparisonItem, Judgment, Project
from training.ml.intervals import DEFAULT_RESAMPLES
from training.ml.leaderboard import clustered_win_rate, leaderboard
from training.models import Checkpoint

OUTCOMES = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class Vote:
    a: int  # checkpoint id, the smaller of the two
    b: int
    outcome: str  # one of OUTCOMES
    judgment_id: int
    comparison_id: int | None = None  # the cluster the intervals resample; None: a cluster of its own

    def as_dict(self) -> dict:
        """The vote as ``training.ml.leaderboard`` reads it."""
        return {
            "model_a": str(self.a),
            "model_b": str(self.b),
            "winner": self.outcome,
            "comparison": self.comparison_id,
        }


@dataclass
class PairCount:
    """Votes between two checkpoints, from ``a``'s side."""

    a: int
    b: int
    a_wins: int = 0
    b_wins: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def total(self) -> int:
        return self.a_wins + self.b_wins + self.ties + self.both_bad


@dataclass
class Tally:
    """Vote counts per checkpoint pair and per checkpoint."""

    pairs: dict[tuple[int, int], PairCount] = field(default_factory=dict)

    def add(self, vote: Vote) -> None:
        count = self.pairs.setdefault((vote.a, vote.b), PairCount(vote.a, vote.b))
        if vote.outcome == "a":
            count.a_wins += 1
        elif vote.outcome == "b":
            count.b_wins += 1
        elif vote.outcome == "tie":
            count.ties += 1
        else:
            count.both_bad += 1

    def between(self, x: int, y: int) -> PairCount:
        """Counts seen from ``x``'s side (x's wins first)."""
        a, b = min(x, y), max(x, y)
        count = self.pairs.get((a, b), PairCount(a, b))
        if x == a:
            return PairCount(x, y, count.a_wins, count.b_wins, count.ties, count.both_bad)
        return PairCount(x, y, count.b_wins, count.a_wins, count.ties, count.both_bad)

    def win_rate(self, checkpoint_id: int) -> tuple[float | None, int]:
        """Share of the checkpoint's votes it won, ties and both-bad as half; and the vote count."""
        won = total = 0.0
        for (a, b), count in self.pairs.items():
            if checkpoint_id not in (a, b):
                continue
            mine = count.a_wins if checkpoint_id == a else count.b_wins
            won += mine + 0.5 * (count.ties + count.both_bad)
            total += count.total
        return (won / total if total else None), int(total)


def _votes_of(
    judgment_id: int, comparison_id: int, ranking, both_bad: bool, checkpoint_of: dict[int, int | None]
) -> list[Vote]:
    rank = {int(rid): i for i, group in enumerate(ranking or []) for rid in group}
    ids = sorted(rid for rid in rank if checkpoint_of.get(rid) is not None)
    votes = []
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            cx, cy = checkpoint_of[x], checkpoint_of[y]
            if cx == cy:
                continue
            if both_bad:
                outcome = "both_bad"
            elif rank[x] == rank[y]:
                outcome = "tie"
            else:
                x_won = rank[x] < rank[y]
                outcome = "a" if x_won == (cx < cy) else "b"
            votes.append(Vote(min(cx, cy), max(cx, cy), outcome, judgment_id, comparison_id))
    return votes


def project_votes(project_ids: Iterable[int]) -> dict[int, list[Vote]]:
    """{project id: votes} for the given projects, in two queries whatever their number."""
    project_ids = list(project_ids)
    judgments = list(
        Judgment.objects.filter(
            comparison__prompt__project_id__in=project_ids,
            annotator__isnull=False,
            comparison__is_gold=False,
        )
        .exclude(annotator__annotator_profile__excluded_from_snapshots=True)
        .values_list("id", "comparison_id", "ranking", "both_bad", "comparison__prompt__project_id")
        .order_by("id")
    )
    checkpoint_of: dict[int, int | None] = {}
    if judgments:
        items = ComparisonItem.objects.filter(
            comparison__prompt__project_id__in=project_ids,
            comparison__is_gold=False,
            comparison__judgments__isnull=False,
        ).values_list("response_id", "response__checkpoint_id")
        checkpoint_of = dict(items)
    votes: dict[int, list[Vote]] = defaultdict(list)
    for judgment_id, comparison_id, ranking, both_bad, project_id in judgments:
        votes[project_id].extend(_votes_of(judgment_id, comparison_id, ranking, both_bad, checkpoint_of))
    return {pid: votes.get(pid, []) for pid in project_ids}


def head_to_head(
    project_id: int,
    checkpoint_a_id: int,
    checkpoint_b_id: int,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """How often checkpoint a beat checkpoint b in the project's votes, with an interval
    clustered by comparison (the new-vs-parent figure).

    Returns ``{"win_rate", "lower", "upper", "n", "comparisons", "wins", "losses", "ties"}``
    from a's side: n votes in ``comparisons`` comparisons, ties and both-bad as half a win
    (``ties`` counts both); the three rates are None when the two never met.
    """
    votes = [
        v.as_dict()
        for v in project_votes([project_id])[project_id]
        if {v.a, v.b} == {checkpoint_a_id, checkpoint_b_id}
    ]
    return clustered_win_rate(
        votes,
        str(checkpoint_a_id),
        str(checkpoint_b_id),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def tally(votes: Iterable[Vote]) -> Tally:
    result = Tally()
    for vote in votes:
        result.add(vote)
    return result


@dataclass
class LeaderboardRow:
    checkpoint: Checkpoint
    rank: int | None
    score: float | None
    lower: float | None
    upper: float | None
    votes: int
    win_rate: float | None
    ties: int
    both_bad: int

    # Where the interval and the score sit on the page's shared scale, in percent.
    bar_left: float = 0.0
    bar_width: float = 0.0
    dot: float = 0.0


@dataclass
class Cell:
    """Row checkpoint against column checkpoint."""

    count: PairCount
    rate: float | None  # the row's share of their votes, ties and both-bad as half
    lower: float | None = None  # interval of ``rate``, clustered by comparison
    upper: float | None = None
    comparisons: int = 0  # comparisons the votes came from

    @property
    def tone(self) -> str:
        if self.rate is None:
            return "none"
        return "win" if self.rate > 0.5 else ("lose" if self.rate < 0.5 else "even")

    @property
    def strength(self) -> int:
        """0-100: how far from an even split, for the cell's shading."""
        return 0 if self.rate is None else round(abs(self.rate - 0.5) * 200)


@dataclass
class Leaderboard:
    rows: list[LeaderboardRow]
    matrix: list[tuple[Checkpoint, list[Cell | None]]]
    votes: int
    n_bootstrap: int


def leaderboard_for(project: Project, *, n_bootstrap: int = 1000, seed: int = 0) -> Leaderboard:
    """Checkpoints ranked by human votes (Bradley-Terry, bootstrap 95% intervals) and the win-rate matrix.

    Both the scores' intervals and each cell's win-rate interval come from ``n_bootstrap``
    resamples of whole comparisons.
    """
    votes = project_votes([project.pk])[project.pk]
    counts = tally(votes)
    ids = sorted({v.a for v in votes} | {v.b for v in votes})
    checkpoints = Checkpoint.objects.in_bulk(ids)

    fit = _fit(votes, ids, n_bootstrap=n_bootstrap, seed=seed)  # {} without votes
    rows = []
    for cid in ids:
        rate, n = counts.win_rate(cid)
        mine = [c for c in counts.pairs.values() if cid in (c.a, c.b)]
        f = fit.get(cid, {})
        rows.append(
            LeaderboardRow(
                checkpoint=checkpoints[cid],
                rank=f.get("rank"),
                score=f.get("score"),
                lower=f.get("lower"),
                upper=f.get("upper"),
                votes=n,
                win_rate=rate,
                ties=sum(c.ties for c in mine),
                both_bad=sum(c.both_bad for c in mine),
            )
        )
    rows.sort(key=lambda r: (r.rank, -r.score, r.checkpoint.version))
    _place_intervals(rows)
    ordered = [r.checkpoint for r in rows]
    intervals = _pair_intervals(votes, n_bootstrap=n_bootstrap, seed=seed) if n_bootstrap > 0 else {}
    matrix = []
    for x in ordered:
        cells: list[Cell | None] = []
        for y in ordered:
            if x.pk == y.pk:
                cells.append(None)
                continue
            count = counts.between(x.pk, y.pk)
            rate = (count.a_wins + 0.5 * (count.ties + count.both_bad)) / count.total if count.total else None
            lower, upper, comparisons = intervals.get((x.pk, y.pk), (None, None, 0))
            cells.append(Cell(count, rate, lower, upper, comparisons))
        matrix.append((x, cells))
    return Leaderboard(rows=rows, matrix=matrix, votes=len(votes), n_bootstrap=n_bootstrap)


def _place_intervals(rows: list[LeaderboardRow]) -> None:
    fitted = [r for r in rows if r.lower is not None and r.upper is not None and r.score is not None]
    if not fitted:
        return
    low = min(r.lower for r in fitted)
    high = max(r.upper for r in fitted)
    span = (high - low) or 1.0
    for r in fitted:
        r.bar_left = 100 * (r.lower - low) / span
        r.bar_width = max(0.8, 100 * (r.upper - r.lower) / span)
        r.dot = 100 * (r.score - low) / span


def _pair_intervals(
    votes: list[Vote], *, n_bootstrap: int, seed: int
) -> dict[tuple[int, int], tuple[float | None, float | None, int]]:
    """{(x, y): (lower, upper, comparisons)} of x's win rate against y, both orders, clustered by comparison.

    One bootstrap per pair that met; y's interval against x is the mirror of x's (1 - upper,
    1 - lower), as the resampled shares are.
    """
    by_pair: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for vote in votes:
        by_pair[(vote.a, vote.b)].append(vote.as_dict())
    out: dict[tuple[int, int], tuple[float | None, float | None, int]] = {}
    for (a, b), pair_votes in by_pair.items():
        result = clustered_win_rate(pair_votes, str(a), str(b), resamples=n_bootstrap, seed=seed)
        out[(a, b)] = (result["lower"], result["upper"], result["comparisons"])
        out[(b, a)] = (1.0 - result["upper"], 1.0 - result["lower"], result["comparisons"])
    return out


def _fit(votes: list[Vote], ids: list[int], *, n_bootstrap: int, seed: int) -> dict[int, dict]:
    """{checkpoint id: {score, lower, upper, rank}} from ``training.ml.leaderboard``."""
    if not votes:
        return {}
    result = leaderboard([v.as_dict() for v in votes], n_bootstrap=n_bootstrap, seed=seed)
    return {int(row["model"]): row for row in result["rows"]}

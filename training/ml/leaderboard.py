"""Leaderboard maths: Bradley–Terry ratings from human votes, bootstrap intervals, win rates.

Pure numpy, no Django. Input is a list of votes ``{"model_a", "model_b", "winner"}``
with ``winner`` one of ``"a"``, ``"b"``, ``"tie"``, ``"both_bad"``, and optionally
``"comparison"``: any hashable key of the comparison (or prompt) the vote came from.
Output is plain dicts and lists, ready for a template or JSON.

Votes are not independent. Three annotators judging one comparison share its two
responses, so their votes agree more often than three fresh comparisons would; resampling
single votes treated them as three pieces of evidence and a nominal 95% interval covered
the truth 86% of the time in simulation (60 comparisons, three voters each, per-comparison
preferences drawn from a Beta around the true rate). Both intervals here therefore resample
whole comparisons: the Bradley–Terry bootstrap draws comparisons with replacement, all
their votes coming along, and a head-to-head win rate uses
``training.ml.intervals.clustered_share_interval`` clustered by comparison. With the same
simulation both cover at about the nominal 95% (``tests/ml/test_leaderboard.py``). A vote
without a ``"comparison"`` key is a comparison of its own, which is the old vote-level
bootstrap, draw for draw.

The fit is the Chatbot Arena one: logistic regression on pairwise outcomes, with
P(a beats b) = σ(θ_a − θ_b). A tie and a "both bad" each count as half a win for
either side in the fit (both are reported separately too). A weak ridge penalty
(``l2``) keeps strengths finite when a model won, or lost, every vote it was in;
with hundreds of votes it moves ratings by well under a point.

Scores are on an Elo-like scale: ``score = 1000 + 400 · θ / ln 10``, with the θ of the
models in one fit summing to zero (the ridge fixes that), so the mean score is
1000 and a gap of 400 points means 10:1 odds of winning, 200 points about 76 %.
Scores from different fits are comparable only through models they share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from training.ml.intervals import DEFAULT_RESAMPLES, clustered_share_interval

OUTCOMES = ("a", "b", "tie", "both_bad")
ELO_SCALE = 400.0
ELO_BASE = 1000.0
DEFAULT_L2 = 1e-2


def _validate(votes: Sequence[Mapping[str, Any]]) -> None:
    for i, vote in enumerate(votes):
        if vote["winner"] not in OUTCOMES:
            raise ValueError(f"Vote {i}: winner must be one of {OUTCOMES}, got {vote['winner']!r}.")
        if vote["model_a"] == vote["model_b"]:
            raise ValueError(f"Vote {i}: a model cannot be compared with itself ({vote['model_a']!r}).")


def _outcome_table(
    votes: Sequence[Mapping[str, Any]], models: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Votes grouped by outcome, and comparisons grouped by the outcomes of their votes.

    Returns ``pairs`` (K, 2) model indices with the lower index first, ``score_a`` (K,) the
    first model's score in {0, 0.5, 1}, ``patterns`` (U, K) how many votes of each outcome
    one kind of comparison holds, and ``multiplicity`` (U,) how many comparisons are of that
    kind. Votes per outcome are ``multiplicity @ patterns``.

    A bootstrap resample of the C comparisons is a multinomial draw of C over the U kinds
    (comparisons of one kind are interchangeable), so a fit costs O(K) = O(models²) whatever
    the number of votes, and U stays small: three pairwise votes fall into one of ten
    patterns per pair. Votes without a ``"comparison"`` key are comparisons of one vote, so
    the patterns are then the K unit rows in outcome order and the draw is the old one.
    """
    index = {m: i for i, m in enumerate(models)}
    outcomes: dict[tuple[int, int, float], int] = {}
    keyed = []  # (cluster, outcome key) per vote
    for n, vote in enumerate(votes):
        i, j = index[vote["model_a"]], index[vote["model_b"]]
        score = {"a": 1.0, "b": 0.0}.get(vote["winner"], 0.5)
        key = (i, j, score) if i < j else (j, i, 1.0 - score)
        outcomes[key] = 0
        comparison = vote.get("comparison")
        keyed.append((("vote", n) if comparison is None else ("comparison", comparison), key))
    keys = sorted(outcomes)
    column = {k: c for c, k in enumerate(keys)}
    per_cluster: dict[tuple, dict[int, int]] = {}
    for cluster, key in keyed:
        counts = per_cluster.setdefault(cluster, {})
        counts[column[key]] = counts.get(column[key], 0) + 1
    kinds: dict[tuple[tuple[int, int], ...], int] = {}
    for counts in per_cluster.values():
        kind = tuple(sorted(counts.items()))
        kinds[kind] = kinds.get(kind, 0) + 1
    order = sorted(kinds)  # a lone vote of outcome k sorts as ((k, 1),): unit rows in outcome order
    patterns = np.zeros((len(order), len(keys)))
    for u, kind in enumerate(order):
        for c, count in kind:
            patterns[u, c] = count
    pairs = np.array([k[:2] for k in keys], dtype=np.int64).reshape(-1, 2)
    score_a = np.array([k[2] for k in keys], dtype=np.float64)
    return pairs, score_a, patterns, np.array([kinds[k] for k in order], dtype=np.float64)


def _fit(pairs: np.ndarray, score_a: np.ndarray, weights: np.ndarray, n_models: int, l2: float) -> np.ndarray:
    """Penalised Bradley–Terry MLE for many weightings of the same votes at once (damped Newton).

    ``pairs`` (K, 2) model indices, ``score_a`` (K,) in {0, 0.5, 1}, ``weights`` (R, K)
    how many votes of each outcome count in each of R fits. Returns θ (R, n_models), each
    row summing to zero. The objective is strictly concave (l2 > 0), so Newton with
    step halving converges from θ = 0.
    """
    n_fits = weights.shape[0]
    design = np.zeros((pairs.shape[0], n_models))  # (K, M): +1 for model_a, -1 for model_b
    rows = np.arange(pairs.shape[0])
    design[rows, pairs[:, 0]] = 1.0
    design[rows, pairs[:, 1]] = -1.0
    wins = weights * score_a  # (R, K) weighted half-wins of model_a
    totals = weights  # (R, K)

    def objective(theta: np.ndarray, fits: np.ndarray) -> np.ndarray:  # (F, M) -> (F,) for the given fits
        d = theta @ design.T  # (F, K)
        # w·log σ(d) + (n − w)·log σ(−d), with log σ(−d) = log σ(d) − d: one softplus, not two.
        loglik = -(totals[fits] * np.logaddexp(0.0, -d) + (totals[fits] - wins[fits]) * d).sum(axis=1)
        return loglik - 0.5 * l2 * (theta**2).sum(axis=1)

    theta = np.zeros((n_fits, n_models))
    eye = np.eye(n_models)
    for _ in range(100):
        d = theta @ design.T
        p = 0.5 * (1.0 + np.tanh(d / 2))  # (R, K) P(model_a wins), overflow-free sigmoid
        grad = (wins - totals * p) @ design - l2 * theta  # (R, M)
        curvature = totals * p * (1.0 - p)  # (R, K)
        hessian = _pair_sum(curvature, pairs, n_models) + l2 * eye  # (R, M, M), minus the Hessian
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]  # (R, M)
        # Near the optimum a Newton step is safe; a long one (early, or when a model won every
        # vote) is halved until it improves the objective. Only those fits pay for the check.
        long = np.flatnonzero(np.abs(step).max(axis=1) > 0.25)
        if len(long):
            before = objective(theta[long], long)
            t = np.ones(len(long))
            for _ in range(30):
                worse = objective(theta[long] + t[:, None] * step[long], long) < before
                if not worse.any():
                    break
                t = np.where(worse, t / 2, t)
            step[long] *= t[:, None]
        theta = theta + step
        if np.abs(step).max() < 1e-9:
            break
    return theta - theta.mean(axis=1, keepdims=True)


def _pair_sum(curvature: np.ndarray, pairs: np.ndarray, n_models: int) -> np.ndarray:
    """Σ_k c_rk (e_i − e_j)(e_i − e_j)ᵀ for pairs (K, 2) sorted by pair, c (R, K) -> (R, M, M)."""
    first = np.flatnonzero(np.r_[True, np.any(pairs[1:] != pairs[:-1], axis=1)])  # start of each pair's run
    per_pair = np.add.reduceat(curvature, first, axis=1)  # (R, P)
    i, j = pairs[first, 0], pairs[first, 1]
    out = np.zeros((curvature.shape[0], n_models, n_models))
    out[:, i, j] = -per_pair  # each unordered pair appears once, so plain assignment is exact
    out[:, j, i] = -per_pair
    diagonal = np.zeros((per_pair.shape[1], n_models))  # (P, M) |incidence|
    diagonal[np.arange(len(first)), i] = 1.0
    diagonal[np.arange(len(first)), j] = 1.0
    out[:, np.arange(n_models), np.arange(n_models)] = per_pair @ diagonal
    return out


def _to_elo(theta: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE * theta / math.log(10)


def fit_bradley_terry(votes: Sequence[Mapping[str, Any]], *, l2: float = DEFAULT_L2) -> dict[str, float]:
    """Elo-like Bradley–Terry score per model (mean 1000; 400 points = 10:1 odds), no intervals."""
    _validate(votes)
    models = sorted({v["model_a"] for v in votes} | {v["model_b"] for v in votes})
    if not models:
        return {}
    pairs, score_a, patterns, multiplicity = _outcome_table(votes, models)
    theta = _fit(pairs, score_a, (multiplicity @ patterns)[None, :], len(models), l2)[0]
    return dict(zip(models, _to_elo(theta).tolist(), strict=True))


def leaderboard(
    votes: Sequence[Mapping[str, Any]],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    l2: float = DEFAULT_L2,
) -> dict[str, Any]:
    """Rank models from pairwise votes: Bradley–Terry scores, bootstrap intervals, win rates.

    Intervals come from ``n_bootstrap`` resamples of the comparisons with replacement
    (all votes of a drawn comparison come along; votes without a ``"comparison"`` key
    are comparisons of their own), each refitted; the interval is the central
    ``confidence`` percentile range of the resampled scores. The same
    ``seed`` gives the same intervals. A model's rank is 1 + the number of models whose
    lower bound lies above its upper bound, so models whose intervals overlap share a
    rank.

    Returns a dict:

    - ``rows``: one dict per model, best score first, with ``model``, ``rank``, ``score``,
      ``lower``, ``upper``, ``votes``, ``wins``, ``losses``, ``ties``, ``both_bad``;
    - ``models``: model names in the order of ``rows``;
    - ``win_rate``: ``{a: {b: rate or None}}`` — share of a-vs-b votes a won, ties and
      both-bad counted as half (None where the pair never met, and on the diagonal);
    - ``vote_counts``: ``{a: {b: n}}`` votes between each pair (symmetric);
    - ``totals``: ``{"votes", "ties", "both_bad"}`` over all votes;
    - ``comparisons``: how many comparisons the bootstrap resampled;
    - ``n_bootstrap``, ``confidence``, ``seed``, ``scale``: how it was computed.
    """
    _validate(votes)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    models = sorted({v["model_a"] for v in votes} | {v["model_b"] for v in votes})
    n_models, n_votes = len(models), len(votes)
    result: dict[str, Any] = {
        "rows": [],
        "models": [],
        "win_rate": {},
        "vote_counts": {},
        "totals": {
            "votes": n_votes,
            "ties": sum(v["winner"] == "tie" for v in votes),
            "both_bad": sum(v["winner"] == "both_bad" for v in votes),
        },
        "comparisons": 0,
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
        "scale": f"Elo-like: mean {ELO_BASE:g}, {ELO_SCALE:g} points = 10:1 odds",
    }
    if not models:
        return result

    pairs, score_a, patterns, multiplicity = _outcome_table(votes, models)  # (K, 2), (K,), (U, K), (U,)
    n_comparisons = int(multiplicity.sum())
    result["comparisons"] = n_comparisons
    point = _to_elo(_fit(pairs, score_a, (multiplicity @ patterns)[None, :], n_models, l2)[0])  # (M,)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        drawn = rng.multinomial(n_comparisons, multiplicity / n_comparisons, size=n_bootstrap)  # (R, U)
        resampled = drawn.astype(np.float64) @ patterns  # (R, K) votes per outcome in each resample
        boot = _to_elo(_fit(pairs, score_a, resampled, n_models, l2))  # (R, M)
        alpha = (1 - confidence) / 2
        lower, upper = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    else:
        lower = upper = point

    stats = {m: {"votes": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0} for m in models}
    met = {a: dict.fromkeys(models, 0) for a in models}
    points = {a: dict.fromkeys(models, 0.0) for a in models}
    for vote in votes:
        a, b, winner = vote["model_a"], vote["model_b"], vote["winner"]
        met[a][b] += 1
        met[b][a] += 1
        for model in (a, b):
            stats[model]["votes"] += 1
        if winner in ("tie", "both_bad"):
            for model in (a, b):
                stats[model]["ties" if winner == "tie" else "both_bad"] += 1
            points[a][b] += 0.5
            points[b][a] += 0.5
        else:
            won, lost = (a, b) if winner == "a" else (b, a)
            stats[won]["wins"] += 1
            stats[lost]["losses"] += 1
            points[won][lost] += 1.0

    order = sorted(range(n_models), key=lambda i: (-point[i], models[i]))
    rows = []
    ranks = ranks_from_intervals(lower, upper)
    for i in order:
        rows.append(
            {
                "model": models[i],
                "rank": ranks[i],
                "score": float(point[i]),
                "lower": float(lower[i]),
                "upper": float(upper[i]),
                **stats[models[i]],
            }
        )
    names = [models[i] for i in order]
    result["rows"] = rows
    result["models"] = names
    result["vote_counts"] = {a: {b: met[a][b] for b in names} for a in names}
    result["win_rate"] = {
        a: {b: (points[a][b] / met[a][b] if met[a][b] else None) for b in names} for a in names
    }
    return result


def ranks_from_intervals(lower: Sequence[float], upper: Sequence[float]) -> list[int]:
    """Rank per model: 1 + the number of models whose lower bound is above its upper bound.

    Models whose intervals overlap share a rank; ranks can skip (1, 1, 3).
    """
    lower_arr = np.asarray(lower, dtype=np.float64)
    return [1 + int(np.sum(lower_arr > u)) for u in upper]


def win_rate_interval(wins: int, losses: int, ties: int = 0, *, confidence: float = 0.95) -> dict[str, Any]:
    """Share of independent trials won, ties as half, with a plain Wilson interval over counts.

    Only for trials that really are independent (e.g. one pick per judgment). Votes of a
    leaderboard are not: several annotators judge one comparison, and a Wilson interval over
    their votes is too narrow (86% coverage at nominal 95% with three voters per comparison).
    For a checkpoint against another use ``clustered_win_rate``, which resamples comparisons.

    Count "both bad" verdicts in ``ties``. The Wilson score interval is computed on
    ``(wins + ties / 2) / n`` with n = wins + losses + ties; ties make the true
    variance smaller than a binomial's, so the interval errs on the wide side.
    Returns ``{"win_rate", "lower", "upper", "n"}``; the three rates are None when n == 0.
    """
    if min(wins, losses, ties) < 0:
        raise ValueError("Counts cannot be negative.")
    n = wins + losses + ties
    if n == 0:
        return {"win_rate": None, "lower": None, "upper": None, "n": 0}
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = (wins + 0.5 * ties) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {"win_rate": p, "lower": max(0.0, centre - half), "upper": min(1.0, centre + half), "n": n}


def clustered_win_rate(
    votes: Sequence[Mapping[str, Any]],
    model: str,
    opponent: str,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Win rate of ``model`` against ``opponent`` (ties and both-bad as half) with an interval
    that resamples whole comparisons.

    ``votes``: N vote dicts as for ``leaderboard``; only those between the two models count,
    from either side. Each counts 1 (model won), 0.5 (tie or both bad) or 0 (lost), clustered
    by its ``"comparison"`` key (a vote without one is its own cluster), and the interval is
    ``clustered_share_interval``'s: a cluster bootstrap widened to at least a Wilson interval
    on the effective sample size.

    Returns ``{"win_rate", "lower", "upper", "n", "comparisons", "wins", "losses", "ties"}``:
    n votes in ``comparisons`` comparisons, ``ties`` counting both-bad too; the three rates are
    None when n == 0.
    """
    _validate(votes)
    values: list[float] = []
    clusters: list[Any] = []
    wins = losses = ties = 0
    for i, vote in enumerate(votes):
        a, b, winner = vote["model_a"], vote["model_b"], vote["winner"]
        if {a, b} != {model, opponent}:
            continue
        if winner in ("tie", "both_bad"):
            ties += 1
            values.append(0.5)
        elif (winner == "a") == (a == model):
            wins += 1
            values.append(1.0)
        else:
            losses += 1
            values.append(0.0)
        comparison = vote.get("comparison")
        clusters.append(("vote", i) if comparison is None else ("comparison", comparison))
    interval = clustered_share_interval(
        values, clusters, confidence=confidence, resamples=resamples, seed=seed
    )
    return {
        "win_rate": interval["share"],
        "lower": interval["lower"],
        "upper": interval["upper"],
        "n": interval["n"],
        "comparisons": interval["clusters"],
        "wins": wins,
        "losses": losses,
        "ties": ties,
    }

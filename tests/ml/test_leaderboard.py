"""Leaderboard maths: Bradley–Terry scores, bootstrap intervals, rank rule, win rates.

The coverage tests simulate the case that made the old intervals dishonest: three voters per
comparison, each comparison with its own latent preference, so its votes agree more than
independent votes would.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.ml.leaderboard import (
    clustered_win_rate,
    fit_bradley_terry,
    leaderboard,
    ranks_from_intervals,
    win_rate_interval,
)

# (model_a, model_b): (a wins, b wins, ties, both bad). Known order: gold > silver > bronze > tin.
TABLE = {
    ("gold", "silver"): (14, 6, 2, 1),
    ("gold", "bronze"): (16, 4, 0, 0),
    ("silver", "bronze"): (13, 7, 2, 0),
    ("silver", "tin"): (18, 2, 0, 0),
    ("bronze", "tin"): (15, 5, 0, 2),
    ("gold", "tin"): (19, 1, 0, 0),
}


def _votes(table=TABLE, repeat=1):
    votes = []
    for (a, b), counts in table.items():
        for winner, count in zip(("a", "b", "tie", "both_bad"), counts, strict=True):
            votes += [{"model_a": a, "model_b": b, "winner": winner}] * (count * repeat)
    return votes


def _pair(a_wins, b_wins, ties=0, both_bad=0):
    return _votes({("a", "b"): (a_wins, b_wins, ties, both_bad)})


@pytest.fixture(scope="module")
def board():
    return leaderboard(_votes(), n_bootstrap=500, seed=0)


def test_it_orders_models_by_strength(board):
    assert board["models"] == ["gold", "silver", "bronze", "tin"]
    scores = [row["score"] for row in board["rows"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) / len(scores) == pytest.approx(1000.0)


def test_it_puts_scores_on_an_elo_scale():
    three_to_one = fit_bradley_terry(_pair(30, 10))  # enough votes for the ridge not to matter
    assert three_to_one["a"] - three_to_one["b"] == pytest.approx(400 * math.log10(3), abs=1.0)
    ten_to_one = fit_bradley_terry(_pair(20, 2))
    assert ten_to_one["a"] - ten_to_one["b"] == pytest.approx(400.0, abs=2.0)


def test_it_counts_ties_and_both_bad_as_half_a_win():
    even = fit_bradley_terry(_pair(0, 0, ties=3, both_bad=2))
    assert even["a"] == pytest.approx(even["b"])
    # 1 win + 2 ties = 2 points to 1, exactly like 2 wins to 1 loss.
    with_ties = fit_bradley_terry(_pair(1, 0, ties=2))
    with_both_bad = fit_bradley_terry(_pair(1, 0, both_bad=2))
    two_to_one = fit_bradley_terry(_pair(2, 1))
    assert with_ties["a"] == pytest.approx(two_to_one["a"], abs=0.01)
    assert with_both_bad == pytest.approx(with_ties)


def test_it_keeps_an_unbeaten_model_finite_and_on_top():
    votes = _votes() + [{"model_a": "platinum", "model_b": m, "winner": "a"} for m in ("gold", "tin")] * 3
    board = leaderboard(votes, n_bootstrap=200)
    top = board["rows"][0]
    assert top["model"] == "platinum"
    assert all(math.isfinite(top[k]) for k in ("score", "lower", "upper"))
    assert top["upper"] - top["lower"] > board["rows"][1]["upper"] - board["rows"][1]["lower"]


def test_it_gives_intervals_that_contain_the_estimate(board):
    for row in board["rows"]:
        assert row["lower"] < row["score"] < row["upper"]


def test_it_narrows_intervals_with_more_votes(board):
    more = leaderboard(_votes(repeat=4), n_bootstrap=500, seed=0)
    for few, many in zip(board["rows"], more["rows"], strict=True):
        assert many["model"] == few["model"]
        assert many["upper"] - many["lower"] < 0.7 * (few["upper"] - few["lower"])


def test_it_reproduces_the_bootstrap_from_its_seed(board):
    assert leaderboard(_votes(), n_bootstrap=500, seed=0) == board
    other = leaderboard(_votes(), n_bootstrap=500, seed=1)
    assert [r["score"] for r in other["rows"]] == [r["score"] for r in board["rows"]]
    assert [r["lower"] for r in other["rows"]] != [r["lower"] for r in board["rows"]]


def test_it_ranks_by_non_overlapping_intervals(board):
    assert ranks_from_intervals([10, 5, 0, -20], [12, 11, 6, -15]) == [1, 1, 2, 4]
    assert ranks_from_intervals([0, 0], [1, 1]) == [1, 1]
    rows = board["rows"]
    for row in rows:
        assert row["rank"] == 1 + sum(other["lower"] > row["upper"] for other in rows)
    ranks = {row["model"]: row["rank"] for row in rows}
    assert ranks["gold"] == 1 and ranks["tin"] == 4  # tin sits clearly below all three
    assert ranks["gold"] <= ranks["silver"] <= ranks["bronze"] < ranks["tin"]


def test_it_reports_win_rates_vote_counts_and_ties(board):
    rate, counts = board["win_rate"], board["vote_counts"]
    assert rate["gold"]["silver"] == pytest.approx((14 + 0.5 * 3) / 23)
    assert rate["tin"]["gold"] == pytest.approx(1 / 20)
    assert rate["gold"]["gold"] is None
    for a in board["models"]:
        for b in board["models"]:
            assert counts[a][b] == counts[b][a]
            if a != b:
                assert rate[a][b] + rate[b][a] == pytest.approx(1.0)
    assert counts["silver"]["bronze"] == 22
    assert board["totals"] == {"votes": 127, "ties": 4, "both_bad": 3}
    gold = board["rows"][0]
    assert (gold["votes"], gold["wins"], gold["losses"], gold["ties"], gold["both_bad"]) == (63, 49, 11, 2, 1)


def test_it_marks_pairs_that_never_met():
    votes = _votes({("a", "b"): (3, 1, 0, 0), ("b", "c"): (2, 2, 0, 0)})
    board = leaderboard(votes, n_bootstrap=50)
    assert board["win_rate"]["a"]["c"] is None and board["vote_counts"]["a"]["c"] == 0


def test_it_handles_no_votes():
    board = leaderboard([])
    assert board["rows"] == [] and board["totals"]["votes"] == 0
    assert fit_bradley_terry([]) == {}


def test_it_rejects_malformed_votes():
    with pytest.raises(ValueError, match="winner"):
        leaderboard([{"model_a": "x", "model_b": "y", "winner": "left"}])
    with pytest.raises(ValueError, match="itself"):
        leaderboard([{"model_a": "x", "model_b": "x", "winner": "a"}])


def test_it_gives_a_wilson_interval_for_a_checkpoint_against_its_parent():
    eight_of_ten = win_rate_interval(8, 2)
    assert eight_of_ten["win_rate"] == pytest.approx(0.8)
    assert eight_of_ten["lower"] == pytest.approx(0.4902, abs=1e-4)
    assert eight_of_ten["upper"] == pytest.approx(0.9433, abs=1e-4)
    assert eight_of_ten["n"] == 10

    with_ties = win_rate_interval(6, 2, 2)
    assert with_ties["win_rate"] == pytest.approx(0.7)
    assert with_ties["lower"] < 0.7 < with_ties["upper"]

    narrow = win_rate_interval(600, 400, 0)
    assert narrow["upper"] - narrow["lower"] < 0.07
    assert win_rate_interval(0, 0, 0)["win_rate"] is None
    assert win_rate_interval(5, 0)["upper"] == 1.0
    with pytest.raises(ValueError):
        win_rate_interval(-1, 2)


# --- votes clustered by comparison -------------------------------------------------------------

TRUE_RATE = 0.6  # how often "new" beats "parent" over all comparisons
CONCENTRATION = 1.5  # p_c ~ Beta(0.6 · 1.5, 0.4 · 1.5): votes of one comparison correlate by 1 / 2.5
VOTERS = 3


def _simulated_votes(rng, n_comparisons, *, true_rate=TRUE_RATE, voters=VOTERS):
    """``n_comparisons`` × ``voters`` votes "new" vs "parent"; comparison c's voters each prefer
    "new" with its own p_c, drawn from a Beta whose mean is ``true_rate``."""
    p = rng.beta(true_rate * CONCENTRATION, (1 - true_rate) * CONCENTRATION, size=n_comparisons)
    new_won = rng.random((n_comparisons, voters)) < p[:, None]  # (C, V)
    return [
        {"model_a": "new", "model_b": "parent", "winner": "a" if won else "b", "comparison": c}
        for c in range(n_comparisons)
        for won in new_won[c]
    ]


def test_it_covers_the_true_win_rate_when_voters_share_a_comparison():
    rng = np.random.default_rng(7)
    repetitions, clustered, independent = 400, 0, 0
    for seed in range(repetitions):
        votes = _simulated_votes(rng, 60)
        result = clustered_win_rate(votes, "new", "parent", resamples=1000, seed=seed)
        clustered += result["lower"] <= TRUE_RATE <= result["upper"]
        old = win_rate_interval(result["wins"], result["losses"], result["ties"])  # one vote, one trial
        independent += old["lower"] <= TRUE_RATE <= old["upper"]
    # Measured: 0.945 clustered, 0.865 for the Wilson interval over votes.
    assert clustered / repetitions >= 0.93
    assert independent / repetitions < 0.90


def test_it_covers_the_true_score_gap_when_voters_share_a_comparison():
    # Two models: the Bradley–Terry gap is the log-odds of the share, so "new" sits at
    # 1000 + 200 · log10(odds) on the Elo-like scale.
    truth = 1000 + 200 * math.log10(TRUE_RATE / (1 - TRUE_RATE))
    rng = np.random.default_rng(5)
    repetitions, clustered, independent = 300, 0, 0
    for seed in range(repetitions):
        votes = _simulated_votes(rng, 100)
        new = leaderboard(votes, n_bootstrap=500, seed=seed)["rows"]
        new = next(row for row in new if row["model"] == "new")
        clustered += new["lower"] <= truth <= new["upper"]
        old = leaderboard(
            [{k: v[k] for k in ("model_a", "model_b", "winner")} for v in votes], n_bootstrap=500, seed=seed
        )
        old = next(row for row in old["rows"] if row["model"] == "new")
        independent += old["lower"] <= truth <= old["upper"]
    # Measured: 0.947 resampling comparisons, 0.867 resampling votes (the old bootstrap).
    assert clustered / repetitions >= 0.93
    assert independent / repetitions < 0.90


def _agreeing_voters(verdicts, voters):
    """Each verdict judged by ``voters`` annotators of one comparison who all agree."""
    return [
        {"model_a": "new", "model_b": "parent", "winner": winner, "comparison": c}
        for c, winner in enumerate(verdicts)
        for _ in range(voters)
    ]


def test_it_widens_intervals_when_votes_repeat_within_a_comparison():
    verdicts = ["a"] * 36 + ["b"] * 24
    repeated = _agreeing_voters(verdicts, 3)  # 180 votes from 60 comparisons
    spread = [dict(vote, comparison=i) for i, vote in enumerate(repeated)]  # 180 votes from 180
    width = {}
    for name, votes in (("repeated", repeated), ("spread", spread)):
        new = next(row for row in leaderboard(votes, n_bootstrap=1000)["rows"] if row["model"] == "new")
        rate = clustered_win_rate(votes, "new", "parent", resamples=1000)
        width[name] = (new["upper"] - new["lower"], rate["upper"] - rate["lower"])
        assert rate["win_rate"] == pytest.approx(0.6) and rate["n"] == 180
    # Three agreeing votes are one piece of evidence: about √3 wider.
    for repeated_width, spread_width in zip(width["repeated"], width["spread"], strict=True):
        assert 1.4 < repeated_width / spread_width < 2.1


def test_it_treats_votes_without_a_comparison_as_comparisons_of_their_own():
    keyed = [dict(vote, comparison=i) for i, vote in enumerate(_votes())]
    unkeyed = leaderboard(_votes(), n_bootstrap=300, seed=3)
    assert leaderboard(keyed, n_bootstrap=300, seed=3) == unkeyed  # draw for draw
    assert leaderboard([dict(v, comparison=None) for v in _votes()], n_bootstrap=300, seed=3) == unkeyed
    assert unkeyed["comparisons"] == len(_votes())
    assert leaderboard(_agreeing_voters(["a", "b"], 3), n_bootstrap=10)["comparisons"] == 2


def test_it_counts_a_head_to_head_from_either_side():
    votes = [
        {"model_a": "new", "model_b": "parent", "winner": "a", "comparison": 1},
        {"model_a": "new", "model_b": "parent", "winner": "a", "comparison": 1},
        {"model_a": "parent", "model_b": "new", "winner": "a", "comparison": 2},  # parent won
        {"model_a": "parent", "model_b": "new", "winner": "b", "comparison": 3},  # new won
        {"model_a": "new", "model_b": "parent", "winner": "tie", "comparison": 3},
        {"model_a": "parent", "model_b": "new", "winner": "both_bad"},
        {"model_a": "new", "model_b": "other", "winner": "a", "comparison": 4},  # another pair
    ]
    new = clustered_win_rate(votes, "new", "parent", resamples=500)
    assert (new["wins"], new["losses"], new["ties"], new["n"], new["comparisons"]) == (3, 1, 2, 6, 4)
    assert new["win_rate"] == pytest.approx(4 / 6)
    assert 0.0 <= new["lower"] < new["win_rate"] < new["upper"] <= 1.0
    parent = clustered_win_rate(votes, "parent", "new", resamples=500)
    assert (parent["wins"], parent["losses"]) == (1, 3) and parent["win_rate"] == pytest.approx(2 / 6)
    never = clustered_win_rate(votes, "parent", "other")
    assert never["n"] == 0 and never["win_rate"] is None and never["lower"] is None

"""Leaderboard maths: Bradley–Terry scores, bootstrap intervals, rank rule, win rates."""

from __future__ import annotations

import math

import pytest

from training.ml.leaderboard import fit_bradley_terry, leaderboard, ranks_from_intervals, win_rate_interval

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

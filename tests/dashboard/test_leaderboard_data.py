"""Gathering the leaderboard's votes from judgments, and the leaderboard page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.models import AnnotatorProfile, Comparison, ComparisonItem, Judgment, Prompt, Response, Round
from tests.dashboard.conftest import make_vote_round
from training.leaderboard_data import Vote, head_to_head, leaderboard_for, project_votes, tally
from training.ml.leaderboard import win_rate_interval
from training.models import Checkpoint


def three_checkpoints(project):
    return [
        Checkpoint.objects.create(project=project, version=v, uri=f"/v{v}", status="published")
        for v in (0, 1, 2)
    ]


def test_it_maps_each_judgment_to_a_vote_between_checkpoints(project, annotator, other_annotator):
    v0, v1, _ = three_checkpoints(project)
    _rnd, comparisons = make_vote_round(
        project, [v0, v1], ["left", "right", "tie", "both_bad"], annotators=[annotator]
    )
    votes = project_votes([project.pk])[project.pk]
    judgments = [c.judgments.get().pk for c in comparisons]
    ids = [c.pk for c in comparisons]
    assert votes == [
        Vote(v0.pk, v1.pk, "a", judgments[0], ids[0]),
        Vote(v0.pk, v1.pk, "b", judgments[1], ids[1]),
        Vote(v0.pk, v1.pk, "tie", judgments[2], ids[2]),
        Vote(v0.pk, v1.pk, "both_bad", judgments[3], ids[3]),
    ]
    counts = tally(votes).between(v1.pk, v0.pk)
    assert (counts.a_wins, counts.b_wins, counts.ties, counts.both_bad) == (1, 1, 1, 1)


def test_it_orders_the_pair_by_checkpoint_whatever_the_position(project, annotator):
    v0, v1, _ = three_checkpoints(project)
    make_vote_round(project, [v1, v0], ["left"], annotators=[annotator])  # v1 shown left and preferred
    assert project_votes([project.pk])[project.pk][0].outcome == "b"  # a = v0 lost


def test_it_splits_a_kwise_ranking_into_votes_and_skips_same_checkpoint_pairs(project, annotator):
    v0, v1, v2 = three_checkpoints(project)
    rnd = Round.objects.create(project=project, number=1, status="open")
    prompt = Prompt.objects.create(project=project, conversation=[{"role": "user", "content": "Q"}])
    r = {
        name: Response.objects.create(prompt=prompt, round=rnd, checkpoint=c, sample_index=i, text=name)
        for i, (name, c) in enumerate([("a0", v0), ("b0", v0), ("c1", v1), ("d2", v2)])
    }
    comparison = Comparison.objects.create(round=rnd, prompt=prompt)
    for position, response in enumerate(r.values()):
        ComparisonItem.objects.create(comparison=comparison, response=response, position=position)
    # d2 best, then c1 tied with a0, then b0
    Judgment.objects.create(
        comparison=comparison,
        annotator=annotator,
        ranking=[[r["d2"].pk], [r["c1"].pk, r["a0"].pk], [r["b0"].pk]],
    )
    outcomes = sorted((v.a, v.b, v.outcome) for v in project_votes([project.pk])[project.pk])
    assert outcomes == sorted(
        [
            (v0.pk, v1.pk, "tie"),  # a0 ~ c1
            (v0.pk, v2.pk, "b"),  # d2 > a0
            (v0.pk, v1.pk, "b"),  # c1 > b0
            (v0.pk, v2.pk, "b"),  # d2 > b0
            (v1.pk, v2.pk, "b"),  # d2 > c1
        ]
    )  # a0 vs b0 (both v0) gives no vote


def test_it_leaves_out_gold_imported_and_excluded_annotators(project, annotator, other_annotator):
    v0, v1, _ = three_checkpoints(project)
    _rnd, comparisons = make_vote_round(
        project, [v0, v1], ["left", "left"], annotators=[annotator, other_annotator]
    )
    Comparison.objects.filter(pk=comparisons[0].pk).update(is_gold=True, gold_ranking=[[1], [2]])
    AnnotatorProfile.objects.create(user=other_annotator, excluded_from_snapshots=True)
    Judgment.objects.create(
        comparison=comparisons[1], annotator=None, source="imported:hh", ranking=[[1], [2]]
    )
    votes = project_votes([project.pk])[project.pk]
    assert [(v.outcome, v.judgment_id) for v in votes] == [
        ("a", comparisons[1].judgments.get(annotator=annotator).pk)
    ]


def test_it_ranks_checkpoints_with_intervals_and_a_win_rate_matrix(project, annotator, other_annotator):
    v0, v1, v2 = three_checkpoints(project)
    # v2 beats v1 beats v0, mostly; plus one tie and one both-bad
    make_vote_round(
        project, [v2, v1], ["left"] * 8 + ["right"] * 2 + ["tie"], annotators=[annotator], number=1
    )
    make_vote_round(
        project, [v1, v0], ["left"] * 8 + ["right"] * 2 + ["both_bad"], annotators=[annotator], number=2
    )
    make_vote_round(project, [v2, v0], ["left"] * 9 + ["right"], annotators=[annotator], number=3)
    board = leaderboard_for(project, n_bootstrap=200, seed=1)
    assert [r.checkpoint.version for r in board.rows] == [2, 1, 0]
    top, middle, bottom = board.rows
    assert top.lower <= top.score <= top.upper
    assert top.rank == 1 and bottom.rank > top.rank
    assert (middle.ties, middle.both_bad) == (1, 1)
    assert board.votes == 32
    row_v2 = board.matrix[0][1]
    assert row_v2[0] is None  # the diagonal
    assert row_v2[1].rate == (8 + 0.5) / 11 and row_v2[1].tone == "win"
    assert row_v2[1].lower < row_v2[1].rate < row_v2[1].upper and row_v2[1].comparisons == 11
    v1_vs_v2 = board.matrix[1][1][0]  # the mirror cell
    assert v1_vs_v2.lower == pytest.approx(1 - row_v2[1].upper)
    assert v1_vs_v2.upper == pytest.approx(1 - row_v2[1].lower)
    # Same seed, same intervals.
    again = leaderboard_for(project, n_bootstrap=200, seed=1)
    assert [(r.lower, r.upper) for r in again.rows] == [(r.lower, r.upper) for r in board.rows]


def test_it_gives_a_head_to_head_win_rate_clustered_by_comparison(
    project, annotator, other_annotator, django_assert_num_queries
):
    v0, v1, v2 = three_checkpoints(project)
    # Ten comparisons of v1 (left) against its parent v0, each judged alike by two annotators.
    _rnd, comparisons = make_vote_round(
        project,
        [v1, v0],
        ["left"] * 6 + ["right"] * 2 + ["tie", "both_bad"],
        annotators=[annotator, other_annotator],
        number=1,
    )
    make_vote_round(project, [v2, v1], ["left"] * 5, annotators=[annotator], number=2)  # another pair
    Comparison.objects.filter(pk=comparisons[0].pk).update(is_gold=True, gold_ranking=[[1], [2]])

    with django_assert_num_queries(2):
        new = head_to_head(project.pk, v1.pk, v0.pk)
    assert (new["wins"], new["losses"], new["ties"]) == (10, 4, 4)  # the gold comparison left out
    assert (new["n"], new["comparisons"]) == (18, 9)
    assert new["win_rate"] == pytest.approx((10 + 0.5 * 4) / 18)
    assert 0.0 <= new["lower"] < new["win_rate"] < new["upper"] <= 1.0
    # Two agreeing annotators are not two trials: wider than a Wilson interval over the 18 votes.
    over_votes = win_rate_interval(10, 4, 4)
    assert new["upper"] - new["lower"] > 1.2 * (over_votes["upper"] - over_votes["lower"])

    parent = head_to_head(project.pk, v0.pk, v1.pk)
    assert (parent["wins"], parent["losses"], parent["ties"]) == (4, 10, 4)
    assert parent["win_rate"] == pytest.approx(1 - new["win_rate"])
    never = head_to_head(project.pk, v0.pk, v2.pk)
    assert never["n"] == never["comparisons"] == 0 and never["win_rate"] is None


def test_it_renders_the_leaderboard_page(admin_client, project, annotator):
    v0, v1, _ = three_checkpoints(project)
    make_vote_round(project, [v1, v0], ["left", "left", "right", "tie"], annotators=[annotator])
    html = admin_client.get(reverse("dashboard-leaderboard", args=[project.pk])).content.decode()
    assert "Head to head" in html and "95% intervals" in html
    assert "62%" in html  # v1 over v0: (2 + 0.5) / 4, rounded half to even
    assert "2–1 · 1 tie" in html


def test_it_says_so_when_there_are_no_votes(admin_client, project):
    html = admin_client.get(reverse("dashboard-leaderboard", args=[project.pk])).content.decode()
    assert "No votes between different checkpoints yet" in html

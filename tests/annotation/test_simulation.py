"""Simulated annotators judge through the real services and follow their rule."""

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Judgment, Response
from annotation.simulation import simulate_round
from tests.factories import make_project, make_round


@pytest.fixture
def round_with_lengths(db):
    project = make_project("Simulated", overlap=2)
    return make_round(
        project, 6, texts=["A short answer.", "A much, much longer answer that rambles on and on."]
    )


def test_it_prefers_the_shorter_response_and_fills_every_comparison(round_with_lengths):
    result = simulate_round(round=round_with_lengths, annotators=3, rule="shorter")
    assert result.judgments == 6 * 2  # overlap 2 on 6 comparisons
    judgments = Judgment.objects.filter(comparison__round=round_with_lengths)
    assert judgments.count() == 12 and set(judgments.values_list("source", flat=True)) == {"simulated"}
    for judgment in judgments:
        winner = Response.objects.get(pk=judgment.ranking[0][0])
        assert winner.text == "A short answer."
        assert judgment.strength == "much"  # the length gap is large
    assert {c.judgment_count for c in round_with_lengths.comparisons.all()} == {2}


def test_it_answers_at_random_with_full_noise(round_with_lengths):
    simulate_round(round=round_with_lengths, annotators=4, rule="shorter", noise=1.0, seed=3)
    winners = {
        Response.objects.get(pk=j.ranking[0][0]).text
        for j in Judgment.objects.filter(comparison__round=round_with_lengths)
    }
    assert len(winners) == 2, "pure noise should sometimes pick the longer answer"


def test_it_follows_a_phrase_rule(db):
    project = make_project("Phrases")
    round = make_round(project, 3, texts=["Sure, here you go.", "Thank you for asking! Here you go."])
    simulate_round(round=round, annotators=1, rule="phrase:thank you")
    for judgment in Judgment.objects.filter(comparison__round=round):
        assert "Thank you" in Response.objects.get(pk=judgment.ranking[0][0]).text


def test_a_phrase_rule_ties_answers_that_agree_on_it_whatever_their_length(db):
    project = make_project("Phrases, K-wise", k=4)
    texts = ["Thanks.", "Thanks, and here is a much longer answer.", "No.", "A long answer without it."]
    round = make_round(project, 2, texts=texts)

    simulate_round(round=round, annotators=1, rule="phrase:thanks")

    for judgment in Judgment.objects.filter(comparison__round=round):
        groups = [sorted(Response.objects.get(pk=pk).text for pk in group) for group in judgment.ranking]
        assert groups == [sorted(texts[:2]), sorted(texts[2:])]  # two tied groups: length says nothing


def test_the_command_reports_bad_rules_and_missing_rounds(round_with_lengths):
    name = round_with_lengths.project.name
    with pytest.raises(CommandError, match="Unknown rule"):
        call_command("simulate_annotators", project=name, rule="loudest")
    with pytest.raises(CommandError, match="no open round 9"):
        call_command("simulate_annotators", project=name, round=9)
    call_command("simulate_annotators", project=name, annotators=2, limit=3)
    assert Judgment.objects.count() == 3

"""Simulated annotators: rule-following players who judge through the same services people use.

They are how the loop is tested without people, and how the demo moves on its own.
A rule scores each response; the annotator ranks by score, and with probability
``noise`` answers at random instead (a tired or careless person).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth import get_user_model

from annotation.judgments import Answer, SubmitRefused, judgment_submit
from annotation.leases import LeaseCapReached, comparison_next_for
from annotation.models import Judgment, Project, Response, Round
from webapp.roles import ANNOTATOR

SIMULATED_PREFIX = "simulated-"


@dataclass(frozen=True)
class SimulationResult:
    judgments: int
    refused: int
    annotators: int


def rule_scorer(rule: str, round: Round) -> Callable[[Response], float]:
    """A score per response (higher is preferred) for a rule given as text.

    ``shorter``: fewer characters wins. ``longer``: the opposite.
    ``phrase:<text>``: containing the phrase wins (case-insensitive); two answers that both
    contain it, or both do not, score the same (a tie where the project allows ties), so the
    rule says nothing about length: a rule about content alone.
    ``reward-model:<path>``: the reward model's score (loads torch; scores the round once).
    """
    if rule == "shorter":
        return lambda response: -len(response.text)
    if rule == "longer":
        return lambda response: len(response.text)
    if rule.startswith("phrase:"):
        phrase = rule.removeprefix("phrase:").lower()
        if not phrase:
            raise ValueError("phrase: needs the phrase, e.g. phrase:thank you")
        return lambda response: float(phrase in response.text.lower())
    if rule.startswith("reward-model:"):
        return _reward_model_scorer(rule.removeprefix("reward-model:"), round)
    raise ValueError(f"Unknown rule {rule!r}: use shorter, longer, phrase:<text> or reward-model:<path>.")


def _reward_model_scorer(path: str, round: Round) -> Callable[[Response], float]:
    from training.ml.reward import score_responses

    responses = list(Response.objects.filter(round=round).select_related("prompt"))
    scores = score_responses(path, [r.prompt.conversation for r in responses], [r.text for r in responses])
    by_id = dict(zip([r.pk for r in responses], scores, strict=True))
    return lambda response: by_id[response.pk]


def simulated_annotators(project: Project, count: int) -> list:
    """``count`` annotator accounts for simulation (created once, unusable passwords)."""
    from django.contrib.auth.models import Group

    users = []
    group = Group.objects.get_or_create(name=ANNOTATOR)[0]
    for index in range(1, count + 1):
        user, created = get_user_model().objects.get_or_create(username=f"{SIMULATED_PREFIX}{index}")
        if created:
            user.set_unusable_password()
            user.save()
            user.groups.add(group)
        if not project.open_to_all_annotators:
            project.annotators.add(user)
        users.append(user)
    return users


def _answer(project: Project, responses: list[Response], score, noise: float, rng: random.Random) -> Answer:
    """Rank by score (best first); equal scores tie where allowed; with probability ``noise``, at random."""
    scores = {r.pk: score(r) for r in responses}
    order = list(scores)
    if rng.random() < noise:
        rng.shuffle(order)
        ranking = [[pk] for pk in order]
    else:
        order.sort(key=lambda pk: -scores[pk])
        ranking = []
        for pk in order:
            if ranking and project.allow_tie and scores[pk] == scores[ranking[-1][0]]:
                ranking[-1].append(pk)
            else:
                ranking.append([pk])
    is_tie = len(ranking) == 1 and len(order) > 1
    strength = None
    if project.scale == Project.Scale.LIKERT4 and len(order) == 2 and not is_tie:
        best, worst = scores[ranking[0][0]], scores[ranking[1][0]]
        clear_win = abs(best - worst) > 0.5 * (abs(worst) + 1)
        strength = Judgment.Strength.MUCH if clear_win else Judgment.Strength.SLIGHT
    return Answer(ranking=ranking, strength=strength, is_tie=is_tie, rationale="simulated")


def simulate_round(
    *, round: Round, annotators: int, rule: str, noise: float = 0.0, seed: int = 0, limit: int | None = None
) -> SimulationResult:
    """Let ``annotators`` simulated people judge ``round`` until nothing is left (or ``limit`` judgments)."""
    project = round.project
    rng = random.Random(seed)
    score = rule_scorer(rule, round)
    players = simulated_annotators(project, annotators)
    active = list(players)
    done = refused = 0
    while active and (limit is None or done < limit):
        for player in list(active):
            try:
                lease = comparison_next_for(player, round, rng=rng)
            except LeaseCapReached:
                lease = None
            if lease is None:
                active.remove(player)
                continue
            responses = list(Response.objects.filter(pk__in=lease.order))
            answer = _answer(project, responses, score, noise, rng)
            try:
                judgment_submit(
                    annotator=player,
                    comparison=lease.comparison,
                    answer=answer,
                    client_id=uuid.uuid4(),
                    order_shown=lease.order,
                    time_spent_ms=0,
                    source="simulated",
                )
                done += 1
            except SubmitRefused:
                refused += 1
            if limit is not None and done >= limit:
                break
    return SimulationResult(judgments=done, refused=refused, annotators=len(players))

"""Fixtures for rounds and generation: projects with prompts, tiny checkpoints, eager Celery."""

from __future__ import annotations

import random

import pytest

from annotation.models import Comparison, ComparisonItem, Project, Prompt, Response, Round
from annotation.simulation import simulate_round
from training.models import Checkpoint

QUESTIONS = [
    "Why is the sky blue?",
    "Give me a tip for keeping a houseplant alive.",
    "What is a tuple in Python?",
    "Name three rivers in Europe.",
    "How do I boil an egg?",
    "Write a haiku about rain.",
]


def make_prompts(project: Project, n: int = 3, *, split: str = "train", tags=()) -> list[Prompt]:
    return [
        Prompt.objects.create(
            project=project,
            conversation=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            split=split,
            tags=list(tags),
        )
        for i in range(n)
    ]


def make_checkpoint(project: Project, uri, version: int = 0) -> Checkpoint:
    return Checkpoint.objects.create(project=project, version=version, uri=str(uri), origin="base")


WORDS = "the a river stone cloud green quick slow paper window table music light orange seven".split()


def make_judged_round(project: Project, base: Checkpoint, n: int, *, eval_every: int = 0) -> Round:
    """Round 1 with ``n`` pairwise comparisons of ``base``'s answers, judged by a simulated annotator
    who prefers the response saying 'thanks'; every ``eval_every``-th prompt is in the eval split."""
    round = Round.objects.create(project=project, number=1, status=Round.Status.OPEN)
    rng = random.Random(0)
    for i in range(n):
        prompt = Prompt.objects.create(
            project=project,
            conversation=[{"role": "user", "content": f"Tell me about {rng.choice(WORDS)} {i}."}],
            split=Prompt.Split.EVAL if eval_every and i % eval_every == 0 else Prompt.Split.TRAIN,
        )
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(4, 8))) for _ in range(2)]
        texts[rng.randint(0, 1)] += " thanks"
        comparison = Comparison.objects.create(round=round, prompt=prompt)
        for position, text in enumerate(texts):
            response = Response.objects.create(
                prompt=prompt, round=round, checkpoint=base, sample_index=position, text=text
            )
            ComparisonItem.objects.create(comparison=comparison, response=response, position=position)
    simulate_round(round=round, annotators=1, rule="phrase:thanks")
    return round


@pytest.fixture(scope="session")
def other_tiny_checkpoints(smollm2_tokenizer, tmp_path_factory):
    """Two more tiny random Llamas (different weights), for rounds that compare checkpoints."""
    from training.ml.checkpoints import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-models")
    return [build_tiny_checkpoint(smollm2_tokenizer, root / f"seed-{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture
def eager(settings):
    """Tasks run inline where they are sent (the Celery app reads Django settings lazily)."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True
    return settings


@pytest.fixture
def kwise_project(db):
    return Project.objects.create(name="Ranking", comparison_mode=Project.Mode.KWISE, k=3)

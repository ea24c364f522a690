"""Fixtures for rounds and generation: projects with prompts, tiny checkpoints, eager Celery."""

from __future__ import annotations

import pytest

from annotation.models import Project, Prompt
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

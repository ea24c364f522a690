"""Small builders for test data. Functions, not classes: ``make_round(project, 5, k=3)``."""

from __future__ import annotations

from annotation.models import Comparison, ComparisonItem, Project, Prompt, Response, Round


def make_project(name: str = "Project", **fields) -> Project:
    """A project; ``k`` > 2 switches it to K-wise mode."""
    if fields.get("k", 2) > 2:
        fields.setdefault("comparison_mode", Project.Mode.KWISE)
    return Project.objects.create(name=name, **fields)


def make_annotators(n: int, prefix: str = "annotator"):
    """``n`` users in the annotator group, without the cost of hashing a password each."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    group, _ = Group.objects.get_or_create(name="annotator")
    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        user_model(username=f"{prefix}-{i}", password="!") for i in range(n)
    )
    group.user_set.add(*users)
    return users


def make_checkpoint(project: Project, version: int = 1):
    from training.models import Checkpoint

    checkpoint, _ = Checkpoint.objects.get_or_create(
        project=project, version=version, defaults={"uri": "/nonexistent", "origin": "base"}
    )
    return checkpoint


def make_round(
    project: Project,
    n_prompts: int,
    k: int | None = None,
    *,
    number: int | None = None,
    status: str = Round.Status.OPEN,
    gold: int = 0,
    texts: list[str] | None = None,
    conversation: list[dict] | None = None,
) -> Round:
    """A round with ``n_prompts`` comparisons of ``k`` responses each (project.k by default).

    The first ``gold`` comparisons are gold items (their answer: responses in position order).
    ``texts`` gives the responses of every comparison (default: "Answer <i> to prompt <n>").
    """
    k = k or project.k
    number = number or (project.rounds.count() + 1)
    round = Round.objects.create(project=project, number=number, status=status)
    checkpoint = make_checkpoint(project)
    for n in range(n_prompts):
        prompt = Prompt.objects.create(
            project=project,
            conversation=conversation or [{"role": "user", "content": f"Question number {n}?"}],
        )
        responses = [
            Response.objects.create(
                prompt=prompt,
                round=round,
                checkpoint=checkpoint,
                sample_index=i,
                text=texts[i] if texts else f"Answer {i} to prompt {n}.",
            )
            for i in range(k)
        ]
        is_gold = n < gold
        comparison = Comparison.objects.create(
            round=round,
            prompt=prompt,
            is_gold=is_gold,
            gold_ranking=[[r.pk] for r in responses] if is_gold else None,
        )
        ComparisonItem.objects.bulk_create(
            ComparisonItem(comparison=comparison, response=r, position=i) for i, r in enumerate(responses)
        )
    return round

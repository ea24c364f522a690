"""Opening a round: prompt choice, validation, generation with a tiny model, the comparisons built."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from annotation.models import Comparison, ComparisonItem, Project, Response, Round
from annotation.rendering import markdown_to_safe_html
from tests.training.conftest import make_checkpoint, make_prompts
from training.ml import generation
from training.models import TrainingRun
from training.rounds import comparisons_build, demo_round_open, prompts_select, round_open

FAST = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "seed": 3}


def open_now(capture, **kwargs) -> Round:
    """Open a round and run what it queues (eagerly) once the transaction commits."""
    with capture(execute=True):
        round = round_open(**kwargs)
    round.refresh_from_db()
    return round


def groups(round: Round) -> list[list[Response]]:
    return [
        [item.response for item in comparison.items.select_related("response").order_by("position")]
        for comparison in round.comparisons.order_by("pk")
    ]


def test_it_opens_a_pairwise_round_of_one_checkpoint_sampled_twice(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    prompts = make_prompts(project, 3)
    base = make_checkpoint(project, tiny_checkpoint)

    round = open_now(django_capture_on_commit_callbacks, project=project, checkpoints=[base], config=FAST)

    assert round.status == Round.Status.OPEN and round.number == 1 and round.opened_at
    keys = set(Response.objects.filter(round=round).values_list("prompt_id", "checkpoint_id", "sample_index"))
    assert keys == {(p.pk, base.pk, s) for p in prompts for s in (0, 1)}
    assert Response.objects.filter(round=round).count() == 6
    pairs = groups(round)
    assert len(pairs) == 3
    for pair in pairs:
        assert len(pair) == 2 and pair[0].prompt_id == pair[1].prompt_id
        assert sorted(r.sample_index for r in pair) == [0, 1]
    run = round.generation_run
    assert run.kind == TrainingRun.Kind.GENERATE and run.status == TrainingRun.Status.SUCCEEDED
    assert (run.progress_done, run.progress_total) == (3, 3)
    response = Response.objects.filter(round=round).first()
    assert response.finish_reason in ("eos", "length") and response.token_count <= 6
    assert response.generation_params["max_new_tokens"] == 6
    assert response.generation_params["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    # Rendered for the annotators' page as it was written, not on every view.
    assert all(r.html == markdown_to_safe_html(r.text) for r in Response.objects.filter(round=round))


def test_the_device_can_be_chosen_in_the_config(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    make_prompts(project, 1)
    base = make_checkpoint(project, tiny_checkpoint)

    round = open_now(
        django_capture_on_commit_callbacks,
        project=project,
        checkpoints=[base],
        config={**FAST, "device": "cpu"},
    )

    assert round.status == Round.Status.OPEN
    assert {r.generation_params["device"] for r in Response.objects.filter(round=round)} == {"cpu"}


def test_it_pairs_every_two_checkpoints_once_per_prompt(
    project, tiny_checkpoint, other_tiny_checkpoints, eager, django_capture_on_commit_callbacks
):
    prompts = make_prompts(project, 2)
    checkpoints = [make_checkpoint(project, tiny_checkpoint, 0)] + [
        make_checkpoint(project, path, version)
        for version, path in enumerate(other_tiny_checkpoints, start=1)
    ]

    round = open_now(
        django_capture_on_commit_callbacks, project=project, checkpoints=checkpoints, config=FAST
    )

    assert round.status == Round.Status.OPEN
    assert round.config["samples_per_checkpoint"] == 1
    assert Response.objects.filter(round=round).count() == 2 * 3
    by_prompt = Counter()
    for pair in groups(round):
        by_prompt[pair[0].prompt_id] += 1
        assert pair[0].checkpoint.version > pair[1].checkpoint.version  # newest on the left
    assert by_prompt == {p.pk: 3 for p in prompts}  # C(3, 2) pairs of checkpoints
    versions = Counter(tuple(r.checkpoint.version for r in pair) for pair in groups(round))
    assert versions == {(2, 1): 2, (2, 0): 2, (1, 0): 2}


def test_it_builds_k_response_comparisons_in_kwise_projects(
    kwise_project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    make_prompts(kwise_project, 2)
    base = make_checkpoint(kwise_project, tiny_checkpoint)

    round = open_now(
        django_capture_on_commit_callbacks,
        project=kwise_project,
        checkpoints=[base],
        config={**FAST, "samples_per_checkpoint": 7},
    )

    assert Response.objects.filter(round=round).count() == 14
    rankings = groups(round)
    assert [len(g) for g in rankings] == [3, 3, 3, 3]  # 7 samples: two groups of 3, one left over
    for group in rankings:
        assert len({r.prompt_id for r in group}) == 1 and len({r.pk for r in group}) == 3


def test_it_spreads_a_kwise_comparison_across_checkpoints(
    kwise_project, tiny_checkpoint, other_tiny_checkpoints, eager, django_capture_on_commit_callbacks
):
    make_prompts(kwise_project, 2)
    checkpoints = [make_checkpoint(kwise_project, tiny_checkpoint, 0)] + [
        make_checkpoint(kwise_project, path, v) for v, path in enumerate(other_tiny_checkpoints, start=1)
    ]

    round = open_now(
        django_capture_on_commit_callbacks, project=kwise_project, checkpoints=checkpoints, config=FAST
    )

    assert round.config["samples_per_checkpoint"] == 1
    for group in groups(round):
        assert sorted(r.checkpoint.version for r in group) == [0, 1, 2]
    assert round.comparisons.count() == 2


def fake_batch(texts_by_sample):
    def generate_batch(loaded, requests, params):
        return [
            {
                "key": r["key"],
                "text": texts_by_sample[r["key"][1]],
                "token_count": 3,
                "finish_reason": "eos",
            }
            for r in requests
        ]

    return generate_batch


def test_it_never_compares_identical_responses(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks, monkeypatch
):
    make_prompts(project, 2)
    base = make_checkpoint(project, tiny_checkpoint)
    monkeypatch.setattr(
        generation,
        "generate_batch",
        fake_batch(["Same answer.", "  Same\nanswer. ", "Another one.", "Same answer."]),
    )

    round = open_now(
        django_capture_on_commit_callbacks,
        project=project,
        checkpoints=[base],
        config={**FAST, "samples_per_checkpoint": 4},
    )

    assert Response.objects.filter(round=round).count() == 8
    pairs = groups(round)
    assert len(pairs) == 2  # one per prompt: sample 0 against sample 2, duplicates 1 and 3 left out
    for pair in pairs:
        assert [r.sample_index for r in pair] == [0, 2]
    assert round.generation_run.outputs["comparisons"] == 2


def test_it_opens_with_no_comparison_when_every_sample_is_the_same(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    make_prompts(project, 2)
    base = make_checkpoint(project, tiny_checkpoint)

    round = open_now(
        django_capture_on_commit_callbacks,
        project=project,
        checkpoints=[base],
        config={**FAST, "temperature": 0},  # greedy: both samples are the same text
    )

    assert Response.objects.filter(round=round).count() == 4
    assert round.status == Round.Status.OPEN and round.comparisons.count() == 0


def test_it_marks_a_share_of_comparisons_gold_from_the_admins_answers(
    project, tiny_checkpoint, other_tiny_checkpoints, eager, django_capture_on_commit_callbacks
):
    prompts = make_prompts(project, 4)
    old = make_checkpoint(project, tiny_checkpoint, 0)
    new = make_checkpoint(project, other_tiny_checkpoints[0], 1)
    answers = {str(p.pk): {"checkpoint": 1} for p in prompts[:3]}

    round = open_now(
        django_capture_on_commit_callbacks,
        project=project,
        checkpoints=[old, new],
        config={**FAST, "gold_share": 0.5, "gold_answers": answers},
    )

    assert round.comparisons.count() == 4
    gold = list(round.comparisons.filter(is_gold=True))
    assert len(gold) == 2
    for comparison in gold:
        assert str(comparison.prompt_id) in answers
        winner, loser = comparison.gold_ranking
        assert Response.objects.get(pk=winner[0]).checkpoint == new
        assert Response.objects.get(pk=loser[0]).checkpoint == old

    again = comparisons_build(round)
    assert (again.created, again.gold) == (0, 2)
    assert round.comparisons.count() == 4 and round.comparisons.filter(is_gold=True).count() == 2


def test_building_comparisons_again_creates_none_and_adds_gold_answered_later(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    prompts = make_prompts(project, 2)
    base = make_checkpoint(project, tiny_checkpoint)
    round = open_now(django_capture_on_commit_callbacks, project=project, checkpoints=[base], config=FAST)
    items = ComparisonItem.objects.filter(comparison__round=round).count()

    round.config = {
        **round.config,
        "gold_share": 1.0,
        "gold_answers": {str(prompts[0].pk): {"sample_index": 1}},
    }
    round.save()
    result = comparisons_build(round)

    assert result.created == 0 and result.gold == 1
    assert (
        round.comparisons.count() == 2
        and ComparisonItem.objects.filter(comparison__round=round).count() == items
    )
    gold = round.comparisons.get(is_gold=True)
    assert gold.prompt == prompts[0]
    assert Response.objects.get(pk=gold.gold_ranking[0][0]).sample_index == 1


def test_it_chooses_prompts_by_split_tag_and_seeded_sample(project):
    train = make_prompts(project, 6, tags=["science"])
    evals = make_prompts(project, 2, split="eval", tags=["code"])
    other = make_prompts(project, 2, tags=["code"])

    assert prompts_select(project=project, split="eval") == [p.pk for p in evals]
    assert prompts_select(project=project, tag="code") == [p.pk for p in evals + other]
    assert prompts_select(project=project, split="train", tag="code") == [p.pk for p in other]
    sample = prompts_select(project=project, split="train", count=3, seed=5)
    assert len(sample) == 3 and set(sample) <= {p.pk for p in train + other}
    assert sample == prompts_select(project=project, split="train", count=3, seed=5)
    assert sample != prompts_select(project=project, split="train", count=3, seed=6)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"samples_per_checkpoint": 1}, "samples_per_checkpoint"),
        ({"split": "eval"}, "prompts"),
        ({"tag": "nothing-has-this"}, "prompts"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"gold_share": 2}, "gold_share"),
        ({"gold_answers": {"999999": {"checkpoint": 0}}}, "gold_answers"),
        ({"device": "tpu"}, "device"),
        ({"colour": "blue"}, "config"),
    ],
)
def test_it_refuses_inconsistent_settings_and_keeps_nothing(project, config, field):
    make_prompts(project, 2)
    base = make_checkpoint(project, "/models/base")

    with pytest.raises(ValidationError) as caught:
        round_open(project=project, checkpoints=[base], config=config)

    assert field in caught.value.message_dict
    assert not Round.objects.exists() and not TrainingRun.objects.exists()


def test_it_refuses_a_checkpoint_of_another_project(project):
    make_prompts(project, 2)
    elsewhere = Project.objects.create(name="Elsewhere")
    foreign = make_checkpoint(elsewhere, "/models/other")

    with pytest.raises(ValidationError) as caught:
        round_open(project=project, checkpoints=[foreign])

    assert "another project" in " ".join(caught.value.message_dict["checkpoints"])
    assert not Round.objects.exists()


def test_it_refuses_too_few_responses_for_a_k_wise_ranking(kwise_project):
    make_prompts(kwise_project, 2)
    base = make_checkpoint(kwise_project, "/models/base")

    with pytest.raises(ValidationError) as caught:
        round_open(project=kwise_project, checkpoints=[base], config={"samples_per_checkpoint": 2})

    assert "ranks 3 responses" in " ".join(caught.value.message_dict["samples_per_checkpoint"])


def test_it_numbers_rounds_and_queues_generation_after_commit(project, django_capture_on_commit_callbacks):
    make_prompts(project, 2)
    base = make_checkpoint(project, "/models/base")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = round_open(project=project, checkpoints=[base])
        second = round_open(project=project, checkpoints=[base], config={"chunks": 2})

    assert (first.number, second.number) == (1, 2)
    assert (
        first.status == Round.Status.GENERATING and first.generation_run.status == TrainingRun.Status.QUEUED
    )
    # One task for the first round, one per chunk for the second; its own run follows the chunks.
    assert len(callbacks) == 3
    chunks = list(second.generation_run.children.order_by("pk"))
    assert [len(c.config["prompt_ids"]) for c in chunks] == [1, 1]
    assert second.generation_run.status == TrainingRun.Status.RUNNING


def test_chunks_fill_one_round_and_the_last_one_opens_it(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    make_prompts(project, 5)
    base = make_checkpoint(project, tiny_checkpoint)

    round = open_now(
        django_capture_on_commit_callbacks, project=project, checkpoints=[base], config={**FAST, "chunks": 3}
    )

    assert round.status == Round.Status.OPEN
    assert Response.objects.filter(round=round).count() == 10 and round.comparisons.count() == 5
    parent = round.generation_run
    assert sorted(len(c.config["prompt_ids"]) for c in parent.children.all()) == [1, 2, 2]
    assert {c.status for c in parent.children.all()} == {TrainingRun.Status.SUCCEEDED}
    parent.refresh_from_db()
    assert parent.status == TrainingRun.Status.SUCCEEDED and (
        parent.progress_done,
        parent.progress_total,
    ) == (5, 5)


def test_the_demo_round_is_small_enough_to_fill_in_minutes(project, django_capture_on_commit_callbacks):
    make_prompts(project, 20)
    make_prompts(project, 3, split="eval")
    base = make_checkpoint(project, "/models/base")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        round = demo_round_open(project=project, checkpoint=base)

    assert round.number == 1 and round.status == Round.Status.GENERATING and len(callbacks) == 1
    assert len(round.config["prompt_ids"]) == 12 and round.config["samples_per_checkpoint"] == 2
    assert round.config["max_new_tokens"] <= 128 and round.config["split"] == "train"
    assert demo_round_open(project=project, checkpoint=base) is None  # only on the first start


def test_the_command_generates_in_process_with_wait(project, tiny_checkpoint, capsys):
    make_prompts(project, 3)
    make_checkpoint(project, tiny_checkpoint)

    call_command(
        "open_round", project=project.name, sample=2, max_new_tokens=4, responses_per_prompt=3, wait=True
    )

    round = Round.objects.get(project=project)
    assert round.status == Round.Status.OPEN
    assert Response.objects.filter(round=round).count() == 6
    assert round.comparisons.count() == 2  # 3 distinct samples per prompt: one pair, one left over
    assert "is open with 2 comparisons" in capsys.readouterr().out


def test_the_command_says_what_is_wrong(project):
    make_prompts(project, 1)
    make_checkpoint(project, "/models/base")

    with pytest.raises(CommandError, match="No project named"):
        call_command("open_round", project="Nope")
    with pytest.raises(CommandError, match="no checkpoint version 7"):
        call_command("open_round", project=project.name, versions=[7])
    with pytest.raises(CommandError, match="samples_per_checkpoint"):
        call_command("open_round", project=project.name, responses_per_prompt=1)
    assert not Round.objects.exists()


def test_pairs_cover_distinct_samples_only_once(
    project, tiny_checkpoint, eager, django_capture_on_commit_callbacks
):
    make_prompts(project, 1)
    base = make_checkpoint(project, tiny_checkpoint)

    round = open_now(
        django_capture_on_commit_callbacks,
        project=project,
        checkpoints=[base],
        config={**FAST, "samples_per_checkpoint": 4},
    )

    pairs = groups(round)
    assert [[r.sample_index for r in pair] for pair in pairs] == [[0, 1], [2, 3]]
    used = list(itertools.chain.from_iterable(pairs))
    assert len(used) == len({r.pk for r in used}) == 4
    assert Comparison.objects.filter(round=round, source="generated").count() == 2

"""Checkpoints: lineage, publish and retire, samples side by side."""

from __future__ import annotations

from django.urls import reverse

from annotation.models import Prompt, Response
from tests.dashboard.conftest import csrf_post
from training.dashboard.views import lineage
from training.models import Checkpoint, RewardModel, TrainingRun


def test_it_orders_the_lineage_parent_before_child(project, base_checkpoint, child_checkpoint):
    sibling = Checkpoint.objects.create(project=project, version=2, uri="/v2", parent=base_checkpoint)
    grandchild = Checkpoint.objects.create(project=project, version=3, uri="/v3", parent=child_checkpoint)
    tree = lineage(list(project.checkpoints.all()))
    assert [(c.version, depth) for c, depth in tree] == [(0, 0), (1, 1), (3, 2), (2, 1)]
    assert grandchild in dict(tree) and sibling in dict(tree)


def test_it_shows_the_run_and_reward_model_behind_each_checkpoint(admin_client, project, base_checkpoint):
    rm_run = TrainingRun.objects.create(project=project, kind="reward_model", status="succeeded")
    rm = RewardModel.objects.create(project=project, run=rm_run, uri="/rm", accuracy=0.71)
    ppo = TrainingRun.objects.create(project=project, kind="ppo", status="succeeded")
    Checkpoint.objects.create(
        project=project, version=1, uri="/v1", parent=base_checkpoint, produced_by=ppo, reward_model=rm
    )
    html = admin_client.get(reverse("dashboard-checkpoints", args=[project.pk])).content.decode()
    assert f'made by <a href="/dashboard/runs/{ppo.pk}/">PPO #{ppo.pk}</a>' in html
    assert f"reward model #{rm.pk} (71% held-out)" in html
    assert "from v0" in html


def test_it_marks_a_checkpoint_trained_on_a_reward_model_that_did_not_learn(
    admin_client, project, base_checkpoint, unlearned_reward_model
):
    Checkpoint.objects.create(
        project=project, version=1, uri="/v1", parent=base_checkpoint, reward_model=unlearned_reward_model
    )
    html = admin_client.get(reverse("dashboard-checkpoints", args=[project.pk])).content.decode()
    assert f"reward model #{unlearned_reward_model.pk} (55% held-out, 95% interval 42–68%)" in html
    assert "not better than chance" in html and "did not learn" in html


def test_it_publishes_and_retires_by_post(admin_client, project, child_checkpoint):
    assert child_checkpoint.status == "draft"
    csrf_post(admin_client, reverse("dashboard-publish", args=[child_checkpoint.pk]))
    child_checkpoint.refresh_from_db()
    assert child_checkpoint.status == "published" and child_checkpoint.published_at
    csrf_post(admin_client, reverse("dashboard-retire", args=[child_checkpoint.pk]))
    child_checkpoint.refresh_from_db()
    assert child_checkpoint.status == "retired"
    assert admin_client.get(reverse("dashboard-retire", args=[child_checkpoint.pk])).status_code == 405


def test_publishing_a_draft_opens_the_round_against_its_parent(
    admin_client, project, child_checkpoint, point_broker_at, django_capture_on_commit_callbacks
):
    point_broker_at("memory://")  # queued, not run: the round stays generating
    Prompt.objects.create(project=project, conversation=[{"role": "user", "content": "Hi?"}], split="eval")
    with django_capture_on_commit_callbacks(execute=True):
        response = csrf_post(
            admin_client, reverse("dashboard-publish", args=[child_checkpoint.pk]), follow=True
        )
    round = project.rounds.get()
    assert set(round.checkpoints.all()) == {child_checkpoint, child_checkpoint.parent}
    assert round.config["split"] == "eval"
    assert f"round {round.number} compares it with its parent" in str(list(response.context["messages"]))


def test_it_shows_two_checkpoints_answers_to_the_same_prompts(
    admin_client, project, base_checkpoint, child_checkpoint
):
    shared = Prompt.objects.create(
        project=project, conversation=[{"role": "user", "content": "Name a colour."}]
    )
    only_one = Prompt.objects.create(
        project=project, conversation=[{"role": "user", "content": "Lonely prompt"}]
    )
    Response.objects.create(prompt=shared, checkpoint=base_checkpoint, text="Blue, I think.")
    Response.objects.create(prompt=shared, checkpoint=child_checkpoint, text="Red.")
    Response.objects.create(prompt=only_one, checkpoint=child_checkpoint, text="Alone")
    url = reverse("dashboard-samples", args=[project.pk])
    html = admin_client.get(url, {"a": base_checkpoint.pk, "b": child_checkpoint.pk}).content.decode()
    assert "Name a colour." in html and "Blue, I think." in html and "Red." in html
    assert "Lonely prompt" not in html

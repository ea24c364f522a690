"""Launch forms: valid input queues one run; invalid input is refused next to the field, nothing enqueued."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.models import Project, Prompt, Round
from tests.dashboard.conftest import csrf_post
from training.models import Checkpoint, RewardModel, TrainingRun


def launch_url(project, kind):
    return reverse("dashboard-launch", args=[project.pk, kind])


def reward_model_data(checkpoint, **override):
    data = {
        "base_checkpoint": checkpoint.pk,
        "learning_rate": "2e-5",
        "batch_size": "4",
        "num_epochs": "1",
        "max_steps": "60",
        "max_length": "384",
        "eval_fraction": "0.1",
        "weighting": "per_pair",
        "seed": "0",
    }
    return data | override


def test_it_prefills_defaults_that_run_on_a_cpu(admin_client, project, base_checkpoint):
    response = admin_client.get(launch_url(project, "reward-model"))
    form = response.context["form"]
    assert form.initial["base_checkpoint"] == base_checkpoint
    assert form["batch_size"].value() == 4
    assert form["learning_rate"].value() == 2e-5


def test_it_queues_a_reward_model_run(
    admin_client, admin_user, project, base_checkpoint, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(
            admin_client, launch_url(project, "reward-model"), reward_model_data(base_checkpoint)
        )
    run = TrainingRun.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("dashboard-run", args=[run.pk])
    assert len(sends) == 1  # the task is sent once the transaction commits
    assert run.kind == "reward_model" and run.status == "queued" and run.created_by == admin_user
    assert run.config["base_checkpoint_id"] == base_checkpoint.pk
    assert run.config["training"]["learning_rate"] == 2e-5
    assert run.config["training"]["batch_size"] == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", "abc", "Enter a number."),
        ("learning_rate", "0", "The learning rate must be greater than 0."),
        ("batch_size", "-8", "Ensure this value is greater than or equal to 1."),
        ("eval_fraction", "0.9", "Ensure this value is less than or equal to 0.5."),
    ],
)
def test_it_refuses_bad_values_next_to_the_field(
    admin_client, project, base_checkpoint, field, value, message, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(
            admin_client,
            launch_url(project, "reward-model"),
            reward_model_data(base_checkpoint, **{field: value}),
        )
    assert response.status_code == 400
    assert response.context["form"].errors[field] == [message]
    html = response.content.decode()
    assert f'id="id_{field}_errors"' in html and message in html
    assert not sends
    assert not TrainingRun.objects.exists()


def test_it_refuses_a_checkpoint_of_another_project(
    admin_client, project, base_checkpoint, django_capture_on_commit_callbacks
):
    other = Project.objects.create(name="Other")
    foreign = Checkpoint.objects.create(project=other, version=0, uri="/elsewhere", status="published")
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(admin_client, launch_url(project, "reward-model"), reward_model_data(foreign))
    assert response.status_code == 400
    assert "belongs to another project" in response.context["form"].errors["base_checkpoint"][0]
    assert not sends and not TrainingRun.objects.exists()


def ppo_data(checkpoint, reward_model, **override):
    data = {
        "policy_checkpoint": checkpoint.pk,
        "reward_model": reward_model.pk if reward_model else "",
        "learning_rate": "3e-6",
        "total_episodes": "64",
        "batch_size": "8",
        "mini_batch_size": "4",
        "num_ppo_epochs": "2",
        "response_length": "48",
        "kl_coef": "0.05",
        "cliprange": "0.2",
        "temperature": "0.7",
        "seed": "0",
    }
    return data | override


def test_it_queues_ppo_against_a_reward_model_of_the_project(
    admin_client, project, base_checkpoint, django_capture_on_commit_callbacks
):
    rm = RewardModel.objects.create(project=project, uri="/rm", accuracy=0.7)
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(admin_client, launch_url(project, "ppo"), ppo_data(base_checkpoint, rm))
    assert response.status_code == 302
    run = TrainingRun.objects.get()
    assert run.kind == "ppo" and len(sends) == 1
    assert run.config["reward_model_id"] == rm.pk
    assert run.config["training"]["mini_batch_size"] == 4


def test_it_refuses_ppo_with_a_foreign_reward_model_or_bad_batches(
    admin_client, project, base_checkpoint, django_capture_on_commit_callbacks
):
    foreign_rm = RewardModel.objects.create(project=Project.objects.create(name="Other"), uri="/rm")
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(
            admin_client,
            launch_url(project, "ppo"),
            ppo_data(base_checkpoint, foreign_rm, mini_batch_size="3", kl_coef="lots"),
        )
    errors = response.context["form"].errors
    assert response.status_code == 400
    assert "belongs to another project" in errors["reward_model"][0]
    assert errors["kl_coef"] == ["Enter a number."]
    assert not sends and not TrainingRun.objects.exists()

    response = csrf_post(admin_client, launch_url(project, "ppo"), ppo_data(base_checkpoint, None))
    assert response.context["form"].errors["reward_model"] == [
        "Train a reward model first, then choose it here."
    ]


def test_it_warns_before_ppo_on_a_reward_model_that_did_not_learn(
    admin_client, project, base_checkpoint, unlearned_reward_model, django_capture_on_commit_callbacks
):
    rm = unlearned_reward_model
    # The newest reward model is chosen for the admin: the form says at once that it did not learn.
    html = admin_client.get(launch_url(project, "ppo")).content.decode()
    verdict = "held-out accuracy 0.55 [0.42, 0.68] on 40 pairs from 12 prompts"
    assert f"Reward model #{rm.pk} · {verdict}: not better than chance" in html  # the choice's label
    assert 'id="id_reward_model_warning"' in html
    assert f"Reward model #{rm.pk} did not learn: {verdict} includes chance (0.5)" in html
    assert "Train the policy anyway" in html

    # Launching on it asks for the tick, next to the field; nothing is queued.
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(admin_client, launch_url(project, "ppo"), ppo_data(base_checkpoint, rm))
    assert response.status_code == 400
    [message] = response.context["form"].errors["reward_model"]
    assert "so PPO would follow noise" in message and "tick 'Train the policy anyway'" in message
    assert not sends and not TrainingRun.objects.filter(kind="ppo").exists()

    # Ticked, it launches, and the run records that the admin insisted.
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(
            admin_client, launch_url(project, "ppo"), ppo_data(base_checkpoint, rm, train_policy_anyway="on")
        )
    assert response.status_code == 302
    run = TrainingRun.objects.get(kind="ppo")
    assert run.config["reward_model_id"] == rm.pk and run.config["train_policy_anyway"] is True
    assert len(sends) == 1


def test_it_refuses_a_mini_batch_that_does_not_divide_the_batch(admin_client, project, base_checkpoint):
    rm = RewardModel.objects.create(project=project, uri="/rm")
    response = csrf_post(
        admin_client, launch_url(project, "ppo"), ppo_data(base_checkpoint, rm, mini_batch_size="3")
    )
    assert response.context["form"].errors["mini_batch_size"] == [
        "The mini-batch size must divide the batch size (8)."
    ]
    assert not TrainingRun.objects.exists()


def test_it_queues_the_full_loop(admin_client, project, base_checkpoint, django_capture_on_commit_callbacks):
    form = admin_client.get(launch_url(project, "loop")).context["form"]
    data = {name: form[name].value() for name in form.fields}
    data["base_checkpoint"] = base_checkpoint.pk
    data["open_next_round"] = "on"
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(admin_client, launch_url(project, "loop"), data)
    assert response.status_code == 302, response.context["form"].errors
    run = TrainingRun.objects.get()
    assert run.kind == "loop" and len(sends) == 1
    assert run.config["open_next_round"] is True
    assert run.config["ppo"]["batch_size"] % run.config["ppo"]["mini_batch_size"] == 0
    # Unticked: the loop stops before PPO when its reward model did not learn.
    assert run.config["train_policy_anyway"] is False


def test_the_loop_can_be_told_to_train_the_policy_anyway(admin_client, project, base_checkpoint):
    response = admin_client.get(launch_url(project, "loop"))
    form = response.context["form"]
    assert form["train_policy_anyway"].label == "Train the policy anyway"
    assert form["train_policy_anyway"].value() is False
    assert "the loop stops before PPO" in response.content.decode()
    data = {name: form[name].value() for name in form.fields if name != "train_policy_anyway"}
    data |= {"base_checkpoint": base_checkpoint.pk, "train_policy_anyway": "on"}
    response = csrf_post(admin_client, launch_url(project, "loop"), data)
    assert response.status_code == 302, response.context["form"].errors
    assert TrainingRun.objects.get(kind="loop").config["train_policy_anyway"] is True


def round_data(*checkpoints, **override):
    data = {
        "checkpoints": [c.pk for c in checkpoints],
        "prompt_count": "5",
        "split": "train",
        "samples_per_checkpoint": "1",
        "max_new_tokens": "64",
        "temperature": "0.8",
        "top_p": "0.95",
        "seed": "0",
    }
    return data | override


def test_it_opens_a_round_between_two_checkpoints(
    admin_client, project, base_checkpoint, child_checkpoint, django_capture_on_commit_callbacks
):
    for i in range(3):
        Prompt.objects.create(project=project, conversation=[{"role": "user", "content": f"Q{i}"}])
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(
            admin_client, launch_url(project, "round"), round_data(base_checkpoint, child_checkpoint)
        )
    assert response.status_code == 302
    rnd = Round.objects.get()
    assert set(rnd.checkpoints.all()) == {base_checkpoint, child_checkpoint}
    assert rnd.config["max_new_tokens"] == 64
    assert len(sends) == 1
    assert response.url == reverse("dashboard-project", args=[project.pk])


def test_it_shows_the_round_services_refusal_on_the_form(
    admin_client, project, base_checkpoint, child_checkpoint, django_capture_on_commit_callbacks
):
    # No prompts imported: round_open refuses, and the form says why.
    with django_capture_on_commit_callbacks() as sends:
        response = csrf_post(
            admin_client, launch_url(project, "round"), round_data(base_checkpoint, child_checkpoint)
        )
    assert response.status_code == 400
    assert "import prompts first" in response.content.decode()
    assert not sends and not Round.objects.exists()
    assert not TrainingRun.objects.filter(kind="generate").exists()


def test_it_refuses_a_round_with_a_single_response_per_prompt(admin_client, project, base_checkpoint):
    response = csrf_post(admin_client, launch_url(project, "round"), round_data(base_checkpoint))
    assert response.status_code == 400
    assert "at least two responses" in response.content.decode()
    assert not Round.objects.exists()


def test_it_answers_404_for_an_unknown_launch(admin_client, project):
    assert admin_client.get(launch_url(project, "dpo-magic")).status_code == 404


# --- the queue cannot be reached ------------------------------------------------------------


@pytest.fixture
def broker_down(point_broker_at):
    """A broker nobody listens on."""
    point_broker_at("redis://127.0.0.1:1/0", max_retries=1, interval_start=0, interval_max=1)


@pytest.mark.django_db(transaction=True)
def test_it_says_the_queue_cannot_be_reached_and_keeps_nothing(broker_down, admin_user, project):
    from django.test import Client

    from tests.conftest import PASSWORD

    base = Checkpoint.objects.create(project=project, version=0, uri="/models/base", status="published")
    client = Client()
    client.login(username=admin_user.username, password=PASSWORD)
    response = client.post(launch_url(project, "reward-model"), reward_model_data(base))
    assert response.status_code == 503
    assert "The queue cannot be reached" in response.content.decode()
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_it_keeps_no_round_when_the_queue_cannot_be_reached(broker_down, admin_user, project):
    from django.test import Client

    from tests.conftest import PASSWORD

    base = Checkpoint.objects.create(project=project, version=0, uri="/models/base", status="published")
    Prompt.objects.create(project=project, conversation=[{"role": "user", "content": "Q"}])
    client = Client()
    client.login(username=admin_user.username, password=PASSWORD)
    response = client.post(launch_url(project, "round"), round_data(base, samples_per_checkpoint="2"))
    assert response.status_code == 503
    assert "The queue cannot be reached" in response.content.decode()
    assert not Round.objects.exists() and not TrainingRun.objects.exists()

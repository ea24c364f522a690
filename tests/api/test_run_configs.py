"""Run configs from the API obey the same bounds as the dashboard's forms (issue #18, item 2).

Every config found to take a worker down, reproduced through ``POST /api/runs/``: refused with
a 400 keyed by field, and no run created.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from django.core.exceptions import ValidationError

from tests.api.conftest import token_client
from training.models import TrainingRun
from training.run_configs import BOUNDS, _config_classes, run_config_checked

pytestmark = pytest.mark.django_db

HOSTILE = [
    ("reward_model", {"training": {"batch_size": 10**9, "max_length": 10**7}}, "training.batch_size"),
    ("reward_model", {"training": {"max_length": 10**7}}, "training.max_length"),
    ("ppo", {"training": {"batch_size": 10**9, "mini_batch_size": 1}}, "training.batch_size"),
    ("reward_model", {"num_processes": 100_000}, "num_processes"),
    ("reward_model", {"training": {"batch_size": -4}}, "training.batch_size"),
    ("loop", {"round": {"max_new_tokens": 10**7}}, "round.max_new_tokens"),
    ("loop", {"round": {"chunks": 10**6}}, "round.chunks"),
    ("reward_model", {"accelerate_config": "../../../../etc/passwd"}, "accelerate_config"),
    ("reward_model", {"accelerate_config": "/etc/passwd"}, "accelerate_config"),
    ("reward_model", {"trainig": {"batch_size": 4}}, "trainig"),
    ("reward_model", {"training": {"batch_sise": 4}}, "training.batch_sise"),
    ("reward_model", {"training": {"batch_size": "8"}}, "training.batch_size"),
    ("reward_model", {"training": {"learning_rate": "fast"}}, "training.learning_rate"),
    ("ppo", {"training": {"value_model_path": "/etc"}}, "training.value_model_path"),
    ("ppo", {"training": {"batch_size": 8, "mini_batch_size": 3}}, "training"),
    ("loop", {"train_policy_anyway": "yes"}, "train_policy_anyway"),
    ("loop", {"ppo": {"kl_estimator": "k9"}}, "ppo.kl_estimator"),
]


@pytest.mark.parametrize("kind, config, field", HOSTILE, ids=[field for _, _, field in HOSTILE])
def test_the_api_refuses_a_config_the_dashboard_would_refuse(
    world, admin_user, no_queue, kind, config, field
):
    response = token_client(admin_user).post(
        "/api/runs/", {"project": world["project"].pk, "kind": kind, "config": config}, format="json"
    )
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not TrainingRun.objects.filter(kind=kind).exclude(pk=world["run"].pk).exists()
    assert no_queue == []


def test_a_ten_megabyte_config_is_refused_before_it_is_stored(world, admin_user, no_queue):
    config = {"training": {f"key{i}": "x" * 90 for i in range(100_000)}}
    response = token_client(admin_user).post(
        "/api/runs/",
        {"project": world["project"].pk, "kind": "reward_model", "config": config},
        format="json",
    )
    assert response.status_code == 400 and "bytes" in str(response.json()["config"])
    assert TrainingRun.objects.count() == 1  # the world's own run only


def test_a_config_inside_the_bounds_is_launched(world, admin_user, no_queue):
    config = {
        "training": {"batch_size": 8, "max_length": 384, "learning_rate": 2e-5},
        "pairs": {"weighting": "per_ranking"},
        "num_processes": 1,
    }
    response = token_client(admin_user).post(
        "/api/runs/",
        {"project": world["project"].pk, "kind": "reward_model", "config": config},
        format="json",
    )
    assert response.status_code == 201, response.content


def test_an_accelerate_config_is_accepted_by_name_from_its_folder(settings, tmp_path):
    settings.ACCELERATE_CONFIGS_DIR = tmp_path
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    assert run_config_checked("reward_model", {"accelerate_config": "fsdp", "num_processes": 2})


def test_every_number_a_config_holds_has_bounds():
    """A new numeric setting without bounds would be refused at every launch: this names it first."""
    for name, cls in _config_classes().items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            text = str(hints[field.name])
            if ("int" in text or "float" in text) and "dict" not in text:
                assert field.name in BOUNDS.get(name, {}), f"{name}.{field.name} has no bounds"


def test_the_dashboards_defaults_are_inside_the_bounds():
    from training.ml.pairs import PairOptions
    from training.ml.ppo_config import PPOConfig
    from training.ml.reward import RewardModelConfig
    from training.rounds import RoundConfig

    run_config_checked(
        "loop",
        {
            "reward_model": dataclasses.asdict(RewardModelConfig()),
            "ppo": dataclasses.asdict(PPOConfig()),
            "pairs": dataclasses.asdict(PairOptions()),
            "round": {k: v for k, v in dataclasses.asdict(RoundConfig()).items()},
        },
    )


def test_a_dpo_launch_is_checked_against_its_registry_entry():
    from training.run_kinds import LAUNCHABLE, RUN_KINDS

    assert "dpo" in LAUNCHABLE and RUN_KINDS["dpo"].task == "training.tasks.train_dpo"
    from training.ml.dpo import DPOConfig

    run_config_checked("dpo", {"training": dataclasses.asdict(DPOConfig())})  # the defaults pass
    run_config_checked("dpo", {"policy_checkpoint_id": 1, "training": {"beta": 0.2, "loss_type": "ipo"}})
    with pytest.raises(ValidationError) as refused:
        run_config_checked(
            "dpo",
            {
                "reward_model_id": 3,
                "training": {"beta": 0, "loss_type": "ppo", "learning_rat": 1e-5},
            },
        )
    errors = refused.value.message_dict
    assert set(errors) == {"reward_model_id", "training.beta", "training.loss_type", "training.learning_rat"}
    with pytest.raises(ValidationError) as refused:
        run_config_checked("loop", {"algorithm": "grpo", "dpo": {"beta": -1}})
    assert set(refused.value.message_dict) == {"algorithm", "dpo.beta"}


def test_every_registered_task_exists_and_every_kind_is_registered():
    from celery import current_app

    from training.models import TrainingRun
    from training.run_kinds import RUN_KINDS

    assert set(RUN_KINDS) == set(TrainingRun.Kind.values)
    for entry in RUN_KINDS.values():
        assert entry.task in current_app.tasks, entry.task

"""Starting the steps of the loop from the dashboard: open a round, train a reward model, run PPO, run it all.

Each launch is a TrainingRun created by :func:`training.runs.run_launch` and a Celery
task that receives only the run's id. Tasks are looked up by name, so a launch works
whether or not the worker code is importable in the web process: a registered task is
used as it is, an unknown one is sent by name and routed like any other
(``CELERY_TASK_ROUTES`` puts ``train_*`` and ``run_*`` on the ``gpu`` queue).

What each run's ``config`` holds (the task reads it back):

- reward model: ``{"base_checkpoint_id", "training": RewardModelConfig fields,
  "pairs": PairOptions fields}``
- PPO: ``{"policy_checkpoint_id", "reward_model_id", "training": PPOConfig fields}``
- full loop: ``{"base_checkpoint_id", "reward_model": {...}, "ppo": {...}, "pairs": {...},
  "open_next_round": bool, "train_policy_anyway": bool}`` (the loop publishes its checkpoint
  when ``open_next_round`` is set; it stops before PPO when the reward model did not learn,
  unless ``train_policy_anyway`` is true: see ``training.loop``)

A launch either leaves a queued run behind or raises: ``QueueUnavailable`` when the
broker cannot be reached (the run is deleted again), ``LaunchUnavailable`` when the
step is not installed.
"""

from __future__ import annotations

import importlib

from annotation.models import Project
from training.models import TrainingRun
from training.run_configs import run_config_checked
from training.runs import QueueUnavailable, run_launch, run_retry

__all__ = [
    "LAUNCHERS",
    "TASK_NAMES",
    "LaunchUnavailable",
    "QueueUnavailable",
    "loop_launch",
    "ppo_launch",
    "reward_model_launch",
    "round_launch",
    "run_retry_launch",
    "task_for",
]

# The task that carries out each kind of run (training/tasks.py, or wherever it lands).
TASK_NAMES = {
    TrainingRun.Kind.GENERATE: "training.tasks.generate_round",
    TrainingRun.Kind.REWARD_MODEL: "training.tasks.train_reward_model",
    TrainingRun.Kind.PPO: "training.tasks.train_ppo",
    TrainingRun.Kind.LOOP: "training.tasks.run_loop",
    TrainingRun.Kind.DPO: "training.tasks.train_dpo",
}


class LaunchUnavailable(Exception):
    """This step cannot be started from this installation (its service is missing)."""


def task_for(name: str):
    """The registered task called ``name``, or a signature that sends it by name.

    Either has ``apply_async(args=[run_id], retry=False)``, which is all
    :func:`training.runs.enqueue` needs.
    """
    from celery import current_app

    importlib.import_module("training.tasks")  # registers whatever tasks exist
    task = current_app.tasks.get(name)
    return task if task is not None else current_app.signature(name)


def _launch(*, project: Project, kind: str, config: dict, created_by) -> TrainingRun:
    run_config_checked(kind, config)  # ValidationError keyed by field, whichever path launched it
    return run_launch(
        project=project, kind=kind, config=config, task=task_for(TASK_NAMES[kind]), created_by=created_by
    )


def reward_model_launch(*, project: Project, config: dict, created_by=None) -> TrainingRun:
    """Queue a Bradley-Terry reward model on the project's current judgments."""
    return _launch(project=project, kind=TrainingRun.Kind.REWARD_MODEL, config=config, created_by=created_by)


def ppo_launch(*, project: Project, config: dict, created_by=None) -> TrainingRun:
    """Queue PPO on a policy checkpoint against a trained reward model."""
    return _launch(project=project, kind=TrainingRun.Kind.PPO, config=config, created_by=created_by)


def loop_launch(*, project: Project, config: dict, created_by=None) -> TrainingRun:
    """Queue the whole loop: snapshot, reward model, PPO, then (optionally) the next round.

    Raises ValidationError keyed by field for a config outside ``training.run_configs``' bounds.
    """
    return _launch(project=project, kind=TrainingRun.Kind.LOOP, config=config, created_by=created_by)


# Kinds of run a launcher starts, by kind; what the API and the dashboard offer.
LAUNCHERS = {
    TrainingRun.Kind.REWARD_MODEL: reward_model_launch,
    TrainingRun.Kind.PPO: ppo_launch,
    TrainingRun.Kind.LOOP: loop_launch,
}


def round_launch(*, project: Project, checkpoints, config: dict, created_by=None):
    """Open the project's next round through ``training.rounds.round_open``.

    Returns the new Round. Raises ValidationError keyed by field (round_open checks the
    project's prompts and mode), QueueUnavailable when the generation task cannot be
    queued (nothing is kept), LaunchUnavailable while rounds are not installed.
    """
    try:
        rounds = importlib.import_module("training.rounds")
        round_open = rounds.round_open
    except (ImportError, AttributeError) as exc:
        raise LaunchUnavailable(
            "Opening rounds is not installed in this version of Tandem (training.rounds.round_open)."
        ) from exc
    return round_open(project=project, checkpoints=list(checkpoints), config=config, created_by=created_by)


def run_retry_launch(run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again; raises QueueUnavailable (the run stays failed).

    A round's generation run is retried through its round, which also reopens the round.
    """
    if run.kind == TrainingRun.Kind.GENERATE:
        from annotation.models import Round

        round = Round.objects.filter(generation_run=run, status=Round.Status.FAILED).first()
        if round is not None:
            importlib.import_module("training.rounds").round_retry(round=round)
            run.refresh_from_db()
            return run
    return run_retry(run, task_for(TASK_NAMES[run.kind]))

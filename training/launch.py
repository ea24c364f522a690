"""Starting the steps of the loop: open a round, or queue a run of any launchable kind.

Each launch is a TrainingRun created by :func:`training.runs.run_launch` and the Celery
task of its kind (``training.run_kinds``), which receives only the run's id. The config
is checked against the kind's typed sections first (``training.run_configs``), the same
way from the dashboard, the API and the command line; each section is the fields of one
dataclass with its help text (``RewardModelConfig``, ``PPOConfig``, ``PairOptions``,
``RoundConfig``). The full loop publishes its checkpoint when ``open_next_round`` is set
and stops before PPO when the reward model did not learn, unless ``train_policy_anyway``
is true (``training.loop``).

A launch either leaves a queued run behind or raises: ``ValidationError`` keyed by field,
``QueueUnavailable`` when the broker cannot be reached (the run is deleted again).
"""

from __future__ import annotations

from annotation.models import Project, Round
from training.models import TrainingRun
from training.rounds import round_open, round_retry
from training.run_configs import run_config_checked
from training.run_kinds import LAUNCHABLE, run_kind
from training.runs import QueueUnavailable, run_launch, run_retry

__all__ = ["LaunchUnavailable", "QueueUnavailable", "round_launch", "run_retry_launch", "run_start"]


class LaunchUnavailable(Exception):
    """This step cannot be started from this installation (its service is missing)."""


def run_start(*, kind: str, project: Project, config: dict, created_by=None) -> TrainingRun:
    """Queue a run of ``kind`` (one of ``training.run_kinds.LAUNCHABLE``) with ``config``.

    Raises ValidationError keyed by field for a config outside ``training.run_configs``'
    bounds, whichever path launched it (dashboard, API, command line).
    """
    if kind not in LAUNCHABLE:
        raise LaunchUnavailable(f"{run_kind(kind).title} is not launched on its own.")
    run_config_checked(kind, config)
    return run_launch(project=project, kind=kind, config=config, created_by=created_by)


def round_launch(*, project: Project, checkpoints, config: dict, created_by=None):
    """Open the project's next round through ``training.rounds.round_open``.

    Returns the new Round. Raises ValidationError keyed by field (round_open checks the
    project's prompts and mode) and QueueUnavailable when the generation task cannot be
    queued (nothing is kept).
    """
    return round_open(project=project, checkpoints=list(checkpoints), config=config, created_by=created_by)


def run_retry_launch(run: TrainingRun) -> TrainingRun:
    """Queue a failed or cancelled run again; raises QueueUnavailable (the run stays failed).

    A round's generation run is retried through its round, which also reopens the round.
    """
    if run.kind == TrainingRun.Kind.GENERATE:
        round = Round.objects.filter(generation_run=run, status=Round.Status.FAILED).first()
        if round is not None:
            round_retry(round=round)
            run.refresh_from_db()
            return run
    return run_retry(run)

"""Celery tasks: thin. Each loads rows, calls a service or ``training.ml``, writes rows.

Heavy imports (torch, transformers, trl) happen inside the task bodies or the
services they call, never at module level: the web process imports this module
to enqueue tasks and must start without torch.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

log = logging.getLogger(__name__)


@worker_ready.connect
def reap_lost_runs_on_start(**kwargs) -> None:
    """A worker that starts fails the runs whose workers died (often its own previous life)."""
    from django.db import DatabaseError

    from training.runs import runs_reap_lost

    try:
        reaped = runs_reap_lost()
    except DatabaseError:  # the worker still serves tasks; the dashboard reaps later
        log.warning("Could not check for lost runs at start-up", exc_info=True)
        return
    for run in reaped:
        log.warning("%s was running on a worker that stopped responding; it is now failed.", run)


@shared_task(name="training.tasks.ping")
def ping() -> str:
    """Round-trip check used by the embedded-mode test: the worker is consuming."""
    return "pong"


@shared_task(name="training.tasks.generate_round")
def generate_round(run_id: int) -> None:
    """Fill a round's missing responses (or one chunk of them); routed to the ``gpu`` queue.

    The last chunk to finish builds the comparisons and opens the round. A failure or a
    cancel marks the round failed with the reason (``training.runs.generation_settle``).
    """
    from training.rounds import round_generate
    from training.runs import generation_settle, running

    with running(run_id) as reporter:
        if reporter is not None:
            round_generate(reporter=reporter)
    generation_settle(run_id)


@shared_task(name="training.tasks.train_reward_model")
def train_reward_model(run_id: int) -> None:
    """Bradley–Terry reward model from the project's judgments (queue gpu)."""
    from training.reward_models import reward_model_train
    from training.runs import running

    with running(run_id) as reporter:
        if reporter is not None:
            reward_model_train(run=reporter.run, reporter=reporter)


@shared_task(name="training.tasks.train_ppo")
def train_ppo(run_id: int) -> None:
    """PPO on the policy against a reward model; writes a draft checkpoint (queue gpu)."""
    from training.policies import ppo_train
    from training.runs import running

    with running(run_id) as reporter:
        if reporter is not None:
            ppo_train(run=reporter.run, reporter=reporter)


@shared_task(name="training.tasks.train_dpo")
def train_dpo(run_id: int) -> None:
    """DPO on the policy straight from the judgments; writes a draft checkpoint (queue gpu)."""
    from training.policies import dpo_train
    from training.runs import running

    with running(run_id) as reporter:
        if reporter is not None:
            dpo_train(run=reporter.run, reporter=reporter)


@shared_task(name="training.tasks.run_loop")
def run_loop(run_id: int) -> None:
    """Snapshot → reward model → PPO → checkpoint, each step its own run (queue gpu)."""
    from training.loop import loop_run
    from training.runs import running

    with running(run_id) as reporter:
        if reporter is not None:
            loop_run(run=reporter.run, reporter=reporter)


@shared_task(name="training.tasks.export_build")
def export_build(export_id: int) -> None:
    """Build a queued preference-data export (``training.exports``); runs on the ``default`` queue."""
    from training.exports import export_build_by_id

    export_build_by_id(export_id)

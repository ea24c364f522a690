"""The full loop as one action: snapshot → reward model → PPO → draft (or published) checkpoint.

Each step is a child run with its own progress and metrics. The loop's worker runs
the steps one after another in-process; a step that failed is retried from its own
inputs, and retrying the loop skips the steps that already succeeded.

The loop's config (see ``training.launch``): ``{"base_checkpoint_id", "filters",
"pairs", "reward_model": RewardModelConfig fields, "ppo": PPOConfig fields,
"open_next_round": bool, "round": RoundConfig fields for that next round}``.
"""

from __future__ import annotations

from django.utils import timezone

from training.models import TrainingRun
from training.policies import ppo_train
from training.reward_models import reward_model_train, run_base_checkpoint
from training.runs import RunCancelled, RunReporter, running


class StepFailed(Exception):
    """A step of the loop failed; its own run holds the details."""


def _child(loop: TrainingRun, kind: str, config: dict) -> TrainingRun:
    """The loop's run for ``kind``, created once; a failed or cancelled one is queued again."""
    child = loop.children.filter(kind=kind).order_by("-created_at").first()
    if child is None:
        return TrainingRun.objects.create(
            project=loop.project, kind=kind, config=config, parent=loop, created_by=loop.created_by
        )
    if child.status in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
        TrainingRun.objects.filter(pk=child.pk).update(
            status=TrainingRun.Status.QUEUED, cancel_requested=False, error="", finished_at=None
        )
        child.refresh_from_db()
    return child


def _run_step(child: TrainingRun, step) -> TrainingRun:
    if child.status != TrainingRun.Status.SUCCEEDED:
        with running(child.pk) as reporter:
            if reporter is not None:
                step(run=reporter.run, reporter=reporter)
        child.refresh_from_db()
    if child.status == TrainingRun.Status.CANCELLED:
        raise RunCancelled
    if child.status != TrainingRun.Status.SUCCEEDED:
        raise StepFailed(
            f"{child.get_kind_display()} step (run #{child.pk}) failed: {child.error or child.status}"
        )
    return child


# Settings of the whole loop that each training step inherits (see training.distributed).
INHERITED_KEYS = ("num_processes", "accelerate_config")


def loop_run(*, run: TrainingRun, reporter: RunReporter) -> None:
    config = run.config
    inherited = {key: config[key] for key in INHERITED_KEYS if key in config}
    base = run_base_checkpoint(run)
    reporter.progress(0, 2, "Step 1 of 2: reward model", force=True)
    reward_run = _run_step(
        _child(
            run,
            TrainingRun.Kind.REWARD_MODEL,
            {
                "base_checkpoint_id": base.pk,
                "filters": config.get("filters", {}),
                "pairs": config.get("pairs", {}),
                "training": config.get("reward_model", {}),
                **inherited,
            },
        ),
        reward_model_train,
    )
    reporter.raise_if_cancelled()
    reporter.progress(1, 2, "Step 2 of 2: PPO", force=True)
    ppo_run = _run_step(
        _child(
            run,
            TrainingRun.Kind.PPO,
            {
                "policy_checkpoint_id": base.pk,
                "reward_model_id": reward_run.outputs["reward_model_id"],
                "training": config.get("ppo", {}),
                "auto_publish": bool(config.get("open_next_round")),
                "round": config.get("round", {}),
                **inherited,
            },
        ),
        ppo_train,
    )
    run.outputs = {
        **run.outputs,
        "reward_model_id": reward_run.outputs.get("reward_model_id"),
        "checkpoint_id": ppo_run.outputs.get("checkpoint_id"),
        "finished": timezone.now().isoformat(),
    }
    reporter.progress(2, 2, "Done", force=True)

"""PPO on the policy as a run, and publishing the checkpoint it makes.

The run's config (see ``training.launch``): ``{"policy_checkpoint_id",
"reward_model_id", "training": PPOConfig fields, "auto_publish": bool}``.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotation.models import Prompt
from training.checkpoints import checkpoint_publish, checkpoint_register
from training.models import Checkpoint, RewardModel, TrainingRun
from training.reward_models import run_base_checkpoint
from training.runs import RunCancelled, RunReporter


def run_dir(run: TrainingRun) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "runs" / f"run-{run.pk}"


def policy_dir(run: TrainingRun) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "checkpoints" / f"project-{run.project_id}" / f"run-{run.pk}"


def _reward_model_of(run: TrainingRun) -> RewardModel:
    reward_model_id = run.config.get("reward_model_id")
    models = RewardModel.objects.filter(project=run.project)
    reward_model = models.filter(pk=reward_model_id).first() if reward_model_id else models.first()
    if reward_model is None:
        raise ValueError(f"{run.project} has no reward model yet: train one before PPO.")
    return reward_model


def ppo_train(*, run: TrainingRun, reporter: RunReporter) -> Checkpoint:
    """Train the policy with PPO against a reward model; resume from the last saved state if any.

    The final policy is written atomically and recorded as a draft checkpoint whose
    parent is the policy the run started from.
    """
    from training.ml.checkpoints import is_complete_checkpoint
    from training.ml.ppo import PPOConfig, PPOHooks, latest_state, resume_ppo, train_ppo

    existing = Checkpoint.objects.filter(produced_by=run).first()
    if existing is not None:  # a duplicate delivery after the row was written
        return existing
    parent = run_base_checkpoint(run, "policy_checkpoint_id")
    reward_model = _reward_model_of(run)
    prompts = list(
        Prompt.objects.filter(project=run.project, split=Prompt.Split.TRAIN)
        .order_by("id")
        .values_list("conversation", flat=True)
    )
    if not prompts:
        raise ValueError(f"{run.project} has no training prompts for PPO to sample from.")
    config = PPOConfig.from_dict(run.config.get("training", {}))
    output_dir, state_dir = policy_dir(run), run_dir(run) / "ppo-state"
    hooks = PPOHooks(
        on_update=lambda update, total, metrics: (
            reporter.metrics(update, metrics),
            reporter.progress(update, total, "PPO updates"),
        ),
        should_stop=reporter.should_stop,
        on_log=reporter.log,
    )
    if not is_complete_checkpoint(output_dir):
        state = latest_state(state_dir) if state_dir.exists() else None
        if state is not None:
            reporter.stage(f"Resuming PPO from {state.name}")
            result = resume_ppo(state, prompts=prompts, output_dir=output_dir, hooks=hooks)
        else:
            reporter.stage(f"PPO on {parent} against reward model #{reward_model.pk}")
            result = train_ppo(
                policy_path=parent.uri,
                reward=reward_model.uri,
                prompts=prompts,
                output_dir=output_dir,
                config=config,
                hooks=hooks,
                state_dir=state_dir,
            )
        if result.cancelled:
            raise RunCancelled
    checkpoint = checkpoint_register(
        project=run.project,
        uri=str(output_dir),
        origin=Checkpoint.Origin.RUN,
        parent=parent,
        produced_by=run,
        reward_model=reward_model,
        config=run.config.get("training", {}),
    )
    run.outputs = {**run.outputs, "checkpoint_id": checkpoint.pk, "version": checkpoint.version}
    reporter.log(f"Wrote {checkpoint} (draft) from {parent}.")
    if run.config.get("auto_publish"):
        publication = checkpoint_publish(checkpoint=checkpoint)
        if publication.round is not None:
            reporter.log(f"Published {checkpoint}; round {publication.round.number} compares it with {parent}.")
    return checkpoint

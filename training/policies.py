"""Training the policy as a run (PPO against a reward model, or DPO on the judgments), and the checkpoint it makes.

A PPO run's config (``training.run_kinds``): ``{"policy_checkpoint_id",
"reward_model_id", "training": PPOConfig fields, "auto_publish": bool, "round": RoundConfig
fields of the round that publishing opens}``. A DPO run's: ``{"policy_checkpoint_id",
"filters", "pairs": PairOptions fields, "training": DPOConfig fields, "auto_publish",
"round"}``; the policy it starts from is also its reference.
Optional ``"num_processes"`` (an integer or ``"auto"``) and ``"accelerate_config"`` (an
accelerate YAML, for FSDP or DeepSpeed) train in several processes via ``training.distributed``.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotation.models import Prompt
from training.checkpoints import checkpoint_publish, checkpoint_register
from training.models import Checkpoint, RewardModel, TrainingRun
from training.reward_models import run_base_checkpoint, run_snapshot
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
    from training.distributed import process_count
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

    def on_update(update: int, total: int, metrics: dict[str, float]) -> None:
        reporter.metrics(update, metrics)
        reporter.progress(update, total, "PPO updates")
        if config.save_every and update % config.save_every == 0:
            # Written before the state this update saves: a resume after a crash starts after
            # that state, so metrics still buffered then would be missing from the charts.
            reporter.flush()

    hooks = PPOHooks(on_update=on_update, should_stop=reporter.should_stop, on_log=reporter.log)
    if not is_complete_checkpoint(output_dir):
        state = latest_state(state_dir) if state_dir.exists() else None
        if (num_processes := process_count(run.config)) > 1:
            _train_in_processes(run, reporter, parent, reward_model, prompts, config, state, num_processes)
        elif state is not None:
            reporter.stage(f"Resuming PPO from {state.name}")
            result = resume_ppo(state, prompts=prompts, output_dir=output_dir, hooks=hooks)
            if result.cancelled:
                raise RunCancelled
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
    return _checkpoint_record(run, reporter, parent=parent, reward_model=reward_model, output_dir=output_dir)


def _train_in_processes(run, reporter, parent, reward_model, prompts, config, state, num_processes) -> None:
    """PPO in ``num_processes`` processes via ``accelerate launch``: same inputs, same state directory."""
    import json
    from dataclasses import asdict

    from training.distributed import launch_dir, launch_processes
    from training.ml.checkpoints import is_complete_checkpoint

    output_dir, state_dir, work_dir = policy_dir(run), run_dir(run) / "ppo-state", launch_dir(run)
    work_dir.mkdir(parents=True, exist_ok=True)
    prompts_path = work_dir / "prompts.jsonl"
    # {"conversation": ...} per line: a bare conversation line starts with "[", which
    # training.ml.ppo._load_prompts would take for one JSON list.
    prompts_path.write_text("".join(json.dumps({"conversation": p}) + "\n" for p in prompts))
    if state is not None:
        reporter.stage(f"Resuming PPO from {state.name} in {num_processes} processes")
    else:
        reporter.stage(
            f"PPO on {parent} against reward model #{reward_model.pk} in {num_processes} processes"
        )
    launch_processes(
        module="training.ml.ppo",
        config={
            "policy_path": parent.uri,
            "reward_model_path": reward_model.uri,
            "prompts_path": str(prompts_path),
            "output_dir": str(output_dir),
            "state_dir": str(state_dir),
            "resume": True,
            "config": asdict(config),
        },
        work_dir=work_dir,
        reporter=reporter,
        num_processes=num_processes,
        accelerate_config=run.config.get("accelerate_config"),
        stage="PPO updates",
    )
    if not is_complete_checkpoint(output_dir):
        raise RuntimeError(f"The PPO processes exited without writing the policy to {output_dir}.")
    run.outputs = {**run.outputs, "num_processes": num_processes}


def dpo_train(*, run: TrainingRun, reporter: RunReporter) -> Checkpoint:
    """DPO on the run's snapshot of the judgments, from (and against) a policy checkpoint.

    A retry continues from the newest state the trainer saved (``save_every`` steps);
    the final policy is written atomically and recorded as a draft checkpoint whose
    parent is the policy the run started from, with the held-out evaluation in the run's outputs.
    """
    from training.ml.checkpoints import is_complete_checkpoint
    from training.ml.dpo import RESULTS_FILE, DPOConfig, latest_state, train_dpo
    from training.ml.hooks import TrainingHooks
    from training.ml.pairs import split_by_prompt

    existing = Checkpoint.objects.filter(produced_by=run).first()
    if existing is not None:  # a duplicate delivery after the row was written
        return existing
    parent = run_base_checkpoint(run, "policy_checkpoint_id")
    config = DPOConfig.from_dict(run.config.get("training", {}))
    snapshot, rows = run_snapshot(run, reporter, "a policy with DPO")
    train_rows, eval_rows = split_by_prompt(rows, config.eval_fraction, config.seed)
    output_dir, state_dir = policy_dir(run), run_dir(run) / "dpo-state"
    if not is_complete_checkpoint(output_dir):
        state = latest_state(state_dir)
        reporter.stage(
            f"Resuming DPO from {Path(state).name}"
            if state
            else f"DPO on {parent}: {len(train_rows)} training and {len(eval_rows)} held-out pairs"
        )
        hooks = TrainingHooks(
            on_metrics=reporter.metrics,
            on_progress=lambda step, total: reporter.progress(step, total, "DPO steps"),
            should_stop=reporter.should_stop,
        )
        results = train_dpo(
            train_rows,
            eval_rows,
            parent.uri,
            output_dir,
            config,
            hooks,
            state_dir=state_dir,
            metadata={"snapshot": snapshot.sha256, "run": run.pk},
        )
        if results["status"] == "cancelled":
            raise RunCancelled
    else:
        import json

        results = json.loads((output_dir / RESULTS_FILE).read_text())
    run.outputs = {**run.outputs, "eval": results.get("eval"), "steps": results.get("steps")}
    return _checkpoint_record(run, reporter, parent=parent, reward_model=None, output_dir=output_dir)


def _checkpoint_record(
    run: TrainingRun,
    reporter: RunReporter,
    *,
    parent: Checkpoint,
    reward_model: RewardModel | None,
    output_dir: Path,
) -> Checkpoint:
    """The draft Checkpoint row for the policy a run wrote (and its publication when asked), however it ran."""
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
        publication = checkpoint_publish(checkpoint=checkpoint, round_config=run.config.get("round"))
        if publication.round is not None:
            reporter.log(
                f"Published {checkpoint}; round {publication.round.number} compares it with {parent}."
            )
    return checkpoint

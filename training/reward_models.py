"""Training a reward model as a run: snapshot the judgments, train with TRL, record the evaluation.

The run's config (see ``training.launch``): ``{"base_checkpoint_id", "filters",
"pairs": PairOptions fields, "training": RewardModelConfig fields}``.
Optional ``"num_processes"`` (an integer or ``"auto"``) and ``"accelerate_config"`` (an
accelerate YAML, for FSDP or DeepSpeed) train in several processes via ``training.distributed``.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from training.models import Checkpoint, RewardModel, TrainingRun
from training.runs import RunCancelled, RunReporter

CHANCE = 0.5  # the held-out accuracy of a reward model that scores at random


def run_base_checkpoint(run: TrainingRun, key: str = "base_checkpoint_id") -> Checkpoint:
    """The checkpoint a run starts from: the one in its config, else the project's newest published."""
    checkpoint_id = run.config.get(key)
    checkpoints = Checkpoint.objects.filter(project=run.project)
    if checkpoint_id:
        return checkpoints.get(pk=checkpoint_id)
    newest = checkpoints.filter(status=Checkpoint.Status.PUBLISHED).order_by("-version").first()
    if newest is None:
        raise ValueError(
            f"{run.project} has no published checkpoint to start from; install the base model first."
        )
    return newest


def run_snapshot(run: TrainingRun, reporter: RunReporter, what: str):
    """(the run's snapshot of the judgments, its pair rows): the one it has, else a new one it keeps.

    ``what`` names the model for the message when the pairs cover fewer than two prompts
    (nothing could be held out).
    """
    from training.ml.pairs import read_snapshot_jsonl
    from training.snapshots import snapshot_build

    reporter.stage("Building the preference snapshot")
    snapshot = run.snapshot or snapshot_build(
        project=run.project, filters=run.config.get("filters", {}), options=run.config.get("pairs", {})
    )
    TrainingRun.objects.filter(pk=run.pk).update(snapshot=snapshot, input_hash=snapshot.sha256)
    run.snapshot = snapshot
    rows = read_snapshot_jsonl(snapshot.uri)
    if len({row["prompt_id"] for row in rows}) < 2:
        raise ValueError(
            f"The snapshot has {len(rows)} preference pairs over fewer than two prompts: "
            f"collect more judgments before training {what}."
        )
    return snapshot, rows


def reward_model_dir(run: TrainingRun) -> Path:
    return Path(settings.ARTIFACTS_DIR) / "reward_models" / f"run-{run.pk}"


def reward_model_train(*, run: TrainingRun, reporter: RunReporter) -> RewardModel:
    """Snapshot → train → evaluate → RewardModel row. Re-running after a crash starts training over
    (a reward model is minutes to hours, not days) but never writes over a finished model."""
    from training.distributed import process_count
    from training.ml.checkpoints import is_complete_checkpoint
    from training.ml.pairs import snapshot_metadata, split_by_prompt
    from training.ml.reward import RewardModelConfig, TrainingHooks, evaluate_reward_model, train_reward_model
    from training.snapshots import pair_options

    existing = RewardModel.objects.filter(run=run).first()
    if existing is not None:  # a duplicate delivery after the row was written
        return existing
    config = RewardModelConfig.from_dict(run.config.get("training", {}))
    base = run_base_checkpoint(run)
    snapshot, rows = run_snapshot(run, reporter, "a reward model")
    train_rows, eval_rows = split_by_prompt(rows, config.eval_fraction, config.seed)
    reporter.log(
        f"Snapshot {snapshot.sha256[:12]}: {len(train_rows)} training and {len(eval_rows)} held-out pairs."
    )

    out_dir = reward_model_dir(run)
    options = pair_options(snapshot.options)  # the options the pairs were made with
    metadata = {"snapshot": snapshot.sha256, "run": run.pk, **snapshot_metadata(rows, options)}
    if is_complete_checkpoint(out_dir):
        reporter.stage("Evaluating the model a previous attempt finished")
        evaluation = evaluate_reward_model(out_dir, eval_rows, max_length=config.max_length)
        results = {"eval": evaluation, "train": {}, "status": "completed"}
    elif (num_processes := process_count(run.config)) > 1:
        reporter.stage(f"Training from {base} in {num_processes} processes")
        results = _train_in_processes(
            run, reporter, train_rows, eval_rows, base, out_dir, config, metadata, num_processes
        )
    else:
        reporter.stage(f"Training from {base}")
        hooks = TrainingHooks(
            on_metrics=reporter.metrics,
            on_progress=lambda step, total: reporter.progress(step, total, "Training"),
            should_stop=reporter.should_stop,
        )
        results = train_reward_model(
            train_rows, eval_rows, base.uri, out_dir, config, hooks, metadata=metadata
        )
    if results["status"] == "cancelled":
        raise RunCancelled
    return _reward_model_record(run, reporter, base=base, snapshot=snapshot, out_dir=out_dir, results=results)


def _train_in_processes(
    run: TrainingRun,
    reporter: RunReporter,
    train_rows,
    eval_rows,
    base,
    out_dir,
    config,
    metadata,
    num_processes,
) -> dict:
    """``train_reward_model`` in ``num_processes`` processes via ``accelerate launch``, same inputs and results."""
    from dataclasses import asdict

    from training.distributed import launch_dir, launch_processes
    from training.ml.pairs import write_snapshot_jsonl

    work_dir = launch_dir(run)
    write_snapshot_jsonl(train_rows, work_dir / "train.jsonl")
    write_snapshot_jsonl(eval_rows, work_dir / "eval.jsonl")
    results = launch_processes(
        module="training.ml.reward",
        config={
            "train_pairs": str(work_dir / "train.jsonl"),
            "eval_pairs": str(work_dir / "eval.jsonl") if eval_rows else None,
            "base_checkpoint": base.uri,
            "out_dir": str(out_dir),
            "reward": asdict(config),
            "metadata": metadata,
        },
        work_dir=work_dir,
        reporter=reporter,
        num_processes=num_processes,
        accelerate_config=run.config.get("accelerate_config"),
    )
    if "status" not in results:
        raise RuntimeError(f"The training processes exited without writing their results ({work_dir}).")
    run.outputs = {**run.outputs, "num_processes": num_processes}
    return results


def _reward_model_record(
    run: TrainingRun, reporter: RunReporter, *, base: Checkpoint, snapshot, out_dir: Path, results: dict
) -> RewardModel:
    """The RewardModel row for a trained (or previously finished) model, however it was trained."""
    evaluation = results["eval"] or {}
    reward_model = RewardModel.objects.create(
        project=run.project,
        run=run,
        base_checkpoint=base,
        snapshot=snapshot,
        uri=str(out_dir),
        accuracy=evaluation.get("accuracy"),
        eval_loss=evaluation.get("loss"),
        mean_margin=evaluation.get("mean_margin"),
        learned=bool(evaluation.get("learned")),
        evaluation={**evaluation, "train": results.get("train", {})},
    )
    run.outputs = {**run.outputs, **reward_model_outputs(reward_model)}
    reporter.log(f"Reward model #{reward_model.pk}: {reward_model.verdict}.")
    return reward_model


def reward_model_outputs(reward_model: RewardModel) -> dict:
    """What a run that made ``reward_model`` reports about it in its ``outputs`` (the API shows them)."""
    return {
        "reward_model_id": reward_model.pk,
        "accuracy": reward_model.accuracy,
        "accuracy_lower": reward_model.accuracy_lower,
        "accuracy_upper": reward_model.accuracy_upper,
        "learned": reward_model.learned,
        "verdict": reward_model.verdict,
    }


def not_learned_reason(reward_model: RewardModel) -> str:
    """Why policy training on ``reward_model`` (one that did not learn) would follow noise, in plain words.

    Names the held-out figures and, when known, how many pairs and judgments the model was trained
    from, so the admin sees how far the data are from enough.
    """
    interval = reward_model.accuracy_interval
    if interval is None:
        reason = (
            f"Reward model #{reward_model.pk} was not shown to learn: {reward_model.held_out_summary}, "
            "so nothing says its scores beat chance and PPO would follow noise."
        )
    elif interval[1] < CHANCE:
        reason = (
            f"Reward model #{reward_model.pk} did not learn: {reward_model.held_out_summary} lies below "
            f"chance ({CHANCE}), so PPO would follow noise."
        )
    else:
        reason = (
            f"Reward model #{reward_model.pk} did not learn: {reward_model.held_out_summary} includes "
            f"chance ({CHANCE}), so PPO would follow noise."
        )
    snapshot = reward_model.snapshot
    if snapshot is not None:
        reason += (
            f" It was trained on a snapshot of {snapshot.pair_count} pair{'' if snapshot.pair_count == 1 else 's'}"
            f" from {snapshot.judgment_count} judgment{'' if snapshot.judgment_count == 1 else 's'}."
        )
    return reason


def run_reward_model(run: TrainingRun) -> RewardModel | None:
    """The reward model a run made (a reward-model run, or a loop's reward-model step) or, for PPO,
    trained against; None when it has none (yet)."""
    if run.kind == TrainingRun.Kind.REWARD_MODEL:
        return RewardModel.objects.filter(run=run).first()
    if run.kind == TrainingRun.Kind.LOOP:
        return RewardModel.objects.filter(run__parent=run).order_by("-created_at").first()
    if run.kind == TrainingRun.Kind.PPO and isinstance(run.config.get("reward_model_id"), int):
        return RewardModel.objects.filter(project=run.project_id, pk=run.config["reward_model_id"]).first()
    return None

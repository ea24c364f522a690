"""The full loop as one action: snapshot → reward model → PPO (or DPO straight from the snapshot) → checkpoint.

Each step is a child run with its own progress and metrics. The loop's worker runs
the steps one after another in-process; a step that failed is retried from its own
inputs, and retrying the loop skips the steps that already succeeded.

The loop's config (see ``training.launch``): ``{"base_checkpoint_id", "filters",
"pairs", "reward_model": RewardModelConfig fields, "ppo": PPOConfig fields,
"open_next_round": bool, "round": RoundConfig fields for that next round,
"train_policy_anyway": bool, "algorithm": "ppo" | "dpo", "dpo": DPOConfig fields}``. With
``"algorithm": "dpo"`` the loop is one step, DPO on the judgments from the base checkpoint:
each published checkpoint's human round feeds the next run (iterative DPO with people as
the judge).

The loop guards the policy: when the reward model did not learn (the 95% interval of its
held-out accuracy includes chance), the loop fails before PPO with a plain reason and what
to do, unless ``train_policy_anyway`` is true. PPO against such a model follows noise; the
reward model's row and run stay, so the admin can see the figures.
"""

from __future__ import annotations

from django.utils import timezone

from training.models import RewardModel, TrainingRun
from training.policies import dpo_train, ppo_train
from training.reward_models import not_learned_reason, reward_model_train, run_base_checkpoint
from training.runs import RunCancelled, RunReporter, RunStopped, running


class StepFailed(RunStopped):
    """A step of the loop failed; its own run holds the details."""


def policy_guard(reward_model: RewardModel, config: dict, reporter: RunReporter) -> None:
    """Stop the loop before PPO when ``reward_model`` did not learn, unless the launch said to go on."""
    if reward_model.learned:
        return
    reporter.log(f"Reward model #{reward_model.pk}: {reward_model.verdict}.")
    if config.get("train_policy_anyway") is True:
        reporter.log("Training the policy anyway, as the launch asked.")
        return
    reporter.stage("Stopped before PPO: the reward model did not learn")
    raise RunStopped(
        f"{not_learned_reason(reward_model)} Collect more judgments (more prompts, more overlap, or "
        "K-wise rounds, which give C(K,2) pairs per judgment) and launch the loop again, or launch it "
        "with 'Train the policy anyway' ticked."
    )


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
    if config.get("algorithm") == "dpo":
        _loop_dpo(run, reporter, base)  # one process: DPO takes no accelerate settings yet
        return
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
    reward_model = RewardModel.objects.select_related("snapshot").get(
        pk=reward_run.outputs["reward_model_id"]
    )
    run.outputs = {**run.outputs, "reward_model_id": reward_model.pk}
    policy_guard(reward_model, config, reporter)
    reporter.progress(1, 2, "Step 2 of 2: PPO", force=True)
    ppo_run = _run_step(
        _child(
            run,
            TrainingRun.Kind.PPO,
            {
                "policy_checkpoint_id": base.pk,
                "reward_model_id": reward_model.pk,
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
        "reward_model_id": reward_model.pk,
        "checkpoint_id": ppo_run.outputs.get("checkpoint_id"),
        "finished": timezone.now().isoformat(),
    }
    reporter.progress(2, 2, "Done", force=True)


def _loop_dpo(run: TrainingRun, reporter: RunReporter, base) -> None:
    """The loop's one step when its algorithm is DPO: no reward model, so no guard before it."""
    config = run.config
    reporter.progress(0, 1, "Step 1 of 1: DPO", force=True)
    dpo_run = _run_step(
        _child(
            run,
            TrainingRun.Kind.DPO,
            {
                "policy_checkpoint_id": base.pk,
                "filters": config.get("filters", {}),
                "pairs": config.get("pairs", {}),
                "training": config.get("dpo", {}),
                "auto_publish": bool(config.get("open_next_round")),
                "round": config.get("round", {}),
            },
        ),
        dpo_train,
    )
    run.outputs = {
        **run.outputs,
        "checkpoint_id": dpo_run.outputs.get("checkpoint_id"),
        "finished": timezone.now().isoformat(),
    }
    reporter.progress(1, 1, "Done", force=True)

"""Reward model, PPO and the full loop as runs: from judgments in the database to checkpoints on disk.

Tiny random models on the CPU; the runs execute their task bodies in-process (the
real worker path is covered by the generation tests and the fault tests).
"""

from pathlib import Path

import pytest

from annotation.models import Judgment, Prompt
from tests.training.conftest import make_judged_round
from training.models import Checkpoint, Metric, RewardModel, TrainingRun
from training.runs import run_cancel
from training.tasks import run_loop, train_ppo, train_reward_model

pytestmark = pytest.mark.slow

TINY_RM = {"learning_rate": 1e-3, "num_epochs": 3, "batch_size": 8, "warmup_ratio": 0.0, "eval_fraction": 0.2}
TINY_PPO = {
    "total_episodes": 16,
    "batch_size": 8,
    "mini_batch_size": 4,
    "num_ppo_epochs": 1,
    "response_length": 6,
    "reward_norm_samples": 8,
    "save_every": 1,
    "learning_rate": 1e-4,
}


@pytest.fixture
def judged_round(project, tiny_checkpoint, settings, tmp_path):
    """A round whose 64 comparisons simulated annotators judged: they prefer the response saying 'thanks'."""
    settings.ARTIFACTS_DIR = tmp_path
    base = Checkpoint.objects.create(
        project=project, version=0, uri=str(tiny_checkpoint), origin="base", status="published"
    )
    round = make_judged_round(project, base, 64, eval_every=8)
    assert Judgment.objects.count() == 64
    return round, base


def _run(project, kind, config):
    return TrainingRun.objects.create(project=project, kind=kind, config=config)


def test_it_trains_a_reward_model_from_judgments_and_records_its_evaluation(judged_round, project):
    _, base = judged_round
    run = _run(project, "reward_model", {"base_checkpoint_id": base.pk, "training": TINY_RM})
    train_reward_model(run.pk)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.progress_done == run.progress_total > 0
    assert run.snapshot is not None and run.input_hash == run.snapshot.sha256
    assert run.snapshot.pair_count == 64
    losses = Metric.objects.filter(run=run, name="loss").order_by("step").values_list("value", flat=True)
    assert len(losses) >= 5 and Metric.objects.filter(run=run, name="accuracy").exists()
    reward_model = RewardModel.objects.get(run=run)
    assert reward_model.accuracy >= 0.75 and reward_model.learned
    assert reward_model.evaluation["by_source"]["simulated"]["pairs"] > 0
    assert (Path(reward_model.uri) / "config.json").is_file()
    # A second delivery of the same message does nothing twice.
    train_reward_model(run.pk)
    assert RewardModel.objects.count() == 1


def test_it_stops_a_reward_model_run_on_cancel_and_writes_no_model(judged_round, project, monkeypatch):
    _, base = judged_round
    run = _run(project, "reward_model", {"base_checkpoint_id": base.pk, "training": TINY_RM})
    from training.runs import RunReporter

    progress = RunReporter.progress

    def admin_cancels_after_two_steps(self, done, total, stage=None, **kwargs):
        progress(self, done, total, stage, **kwargs)
        if done == 2:
            run_cancel(TrainingRun.objects.get(pk=self.run.pk))  # as the dashboard would
            self._last_cancel_check = 0  # let the next check see it at once

    monkeypatch.setattr(RunReporter, "progress", admin_cancels_after_two_steps)
    train_reward_model(run.pk)
    run.refresh_from_db()
    assert run.status == "cancelled", run.error
    assert 2 <= run.progress_done < run.progress_total
    assert not RewardModel.objects.exists()
    from training.reward_models import reward_model_dir

    assert not reward_model_dir(run).exists()


def test_a_run_that_runs_out_of_memory_fails_with_a_plain_reason(judged_round, project, monkeypatch):
    """Fault injection where the allocation would fail: the run fails once, saying what to change,
    and stays failed (no automatic retry would run out again)."""
    import training.ml.reward

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(training.ml.reward, "build_reward_trainer", out_of_memory)
    _, base = judged_round
    run = _run(project, "reward_model", {"base_checkpoint_id": base.pk, "training": TINY_RM})
    train_reward_model(run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and run.attempts == 1
    assert run.error.startswith("The worker ran out of memory. Lower the batch size")
    assert not RewardModel.objects.exists()


def test_it_refuses_to_train_without_enough_judgments(project, tiny_checkpoint, settings, tmp_path):
    settings.ARTIFACTS_DIR = tmp_path
    base = Checkpoint.objects.create(project=project, version=0, uri=str(tiny_checkpoint), origin="base")
    run = _run(project, "reward_model", {"base_checkpoint_id": base.pk})
    train_reward_model(run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "collect more judgments" in run.error


def test_the_loop_trains_a_reward_model_then_ppo_and_publishes_the_policy(
    judged_round, project, eager, django_capture_on_commit_callbacks
):
    _, base = judged_round
    loop = _run(
        project,
        "loop",
        {
            "base_checkpoint_id": base.pk,
            "reward_model": TINY_RM,
            "ppo": TINY_PPO,
            "open_next_round": True,
            "round": {"max_new_tokens": 8},
        },
    )
    with django_capture_on_commit_callbacks(execute=True):
        run_loop(loop.pk)

    loop.refresh_from_db()
    assert loop.status == "succeeded", loop.error
    reward_run, ppo_run = loop.children.order_by("created_at")
    assert (reward_run.kind, reward_run.status) == ("reward_model", "succeeded")
    assert (ppo_run.kind, ppo_run.status) == ("ppo", "succeeded")
    assert Metric.objects.filter(run=ppo_run, name="objective/kl").count() == 2  # 16 episodes / 8 per update
    checkpoint = Checkpoint.objects.get(produced_by=ppo_run)
    assert checkpoint.parent == base and checkpoint.reward_model_id == reward_run.outputs["reward_model_id"]
    assert checkpoint.status == "published" and checkpoint.version == 1
    # Publishing opened the next round: the new policy against its parent on the eval prompts.
    next_round = project.rounds.get(number=2)
    assert set(next_round.checkpoints.all()) == {checkpoint, base}
    assert next_round.config["max_new_tokens"] == 8  # the loop's settings for the next round
    assert next_round.status == "open", next_round.error
    assert next_round.comparisons.count() == Prompt.objects.filter(project=project, split="eval").count()


def test_ppo_resumes_from_its_last_saved_state(
    judged_round, project, eager, django_capture_on_commit_callbacks
):
    _, base = judged_round
    reward_run = _run(project, "reward_model", {"base_checkpoint_id": base.pk, "training": TINY_RM})
    train_reward_model(reward_run.pk)
    reward_model = RewardModel.objects.get()
    config = {
        "policy_checkpoint_id": base.pk,
        "reward_model_id": reward_model.pk,
        "training": {**TINY_PPO, "total_episodes": 24},
    }
    run = _run(project, "ppo", config)

    # The first attempt is cancelled after its first update (a state is saved every update).
    from training import policies

    original = policies.ppo_train

    def cancel_after_first_update(*, run, reporter):
        metrics = reporter.metrics

        def metrics_then_cancel(step, values):
            metrics(step, values)
            TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
            reporter._last_cancel_check = 0

        reporter.metrics = metrics_then_cancel
        return original(run=run, reporter=reporter)

    policies.ppo_train = cancel_after_first_update
    try:
        train_ppo(run.pk)
    finally:
        policies.ppo_train = original
    run.refresh_from_db()
    assert run.status == "cancelled" and not Checkpoint.objects.filter(produced_by=run).exists()
    assert any((policies.run_dir(run) / "ppo-state").iterdir())

    from training.runs import run_retry

    with django_capture_on_commit_callbacks(execute=True):
        run_retry(run)  # eager: the retried task runs here once queued
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert "Resuming PPO" in run.log_tail
    steps = sorted(Metric.objects.filter(run=run, name="objective/kl").values_list("step", flat=True))
    assert steps == [1, 2, 3]


# --- the loop guards the policy ---------------------------------------------------------------

NOT_LEARNED_EVAL = {"accuracy": 0.55, "accuracy_lower": 0.42, "accuracy_upper": 0.68, "learned": False}


@pytest.fixture
def judged_no_model(project, settings, tmp_path):
    """16 judged comparisons and a base checkpoint that is never loaded: the steps below are faked."""
    settings.ARTIFACTS_DIR = tmp_path
    base = Checkpoint.objects.create(
        project=project, version=0, uri=str(tmp_path / "base"), origin="base", status="published"
    )
    make_judged_round(project, base, 16)
    return base


@pytest.fixture
def reward_model_without_learning(monkeypatch):
    """Reward-model training that returns at once with an evaluation whose interval includes chance;
    snapshot, split and the RewardModel row are the real ones."""
    from training.ml import reward

    def train(train_rows, eval_rows, base_uri, out_dir, config, hooks, metadata=None):
        prompts = len({r["prompt_id"] for r in eval_rows})
        return {"status": "completed", "eval": {**NOT_LEARNED_EVAL, "pairs": 40, "prompts": prompts}}

    monkeypatch.setattr(reward, "train_reward_model", train)


@pytest.fixture
def ppo_calls(monkeypatch):
    """PPO that records its run and makes a draft checkpoint, instead of training."""
    import training.loop

    calls = []

    def fake_ppo(*, run, reporter):
        calls.append(run)
        parent = Checkpoint.objects.get(pk=run.config["policy_checkpoint_id"])
        checkpoint = Checkpoint.objects.create(
            project=run.project, version=parent.version + 1, uri="/v1", parent=parent, produced_by=run
        )
        run.outputs = {**run.outputs, "checkpoint_id": checkpoint.pk}
        return checkpoint

    monkeypatch.setattr(training.loop, "ppo_train", fake_ppo)
    return calls


def test_the_loop_stops_before_ppo_when_the_reward_model_did_not_learn(
    judged_no_model, project, reward_model_without_learning, ppo_calls
):
    loop = _run(project, "loop", {"base_checkpoint_id": judged_no_model.pk})
    run_loop(loop.pk)

    loop.refresh_from_db()
    reward_model = RewardModel.objects.get()
    assert loop.status == "failed" and not ppo_calls
    assert list(loop.children.values_list("kind", "status")) == [("reward_model", "succeeded")]
    assert loop.error.startswith(
        f"Reward model #{reward_model.pk} did not learn: held-out accuracy 0.55 [0.42, 0.68] on 40 pairs "
        f"from {reward_model.evaluation['prompts']} prompts includes chance (0.5), so PPO would follow noise."
    )
    assert "trained on a snapshot of 16 pairs from 16 judgments" in loop.error
    assert "Collect more judgments" in loop.error and "K-wise rounds" in loop.error
    assert "'Train the policy anyway'" in loop.error and "StepFailed" not in loop.error
    assert loop.stage == "Stopped before PPO: the reward model did not learn"
    assert loop.outputs["reward_model_id"] == reward_model.pk
    assert not reward_model.learned  # the row stays, with its figures
    assert reward_model.run.outputs["verdict"].endswith("not better than chance")


def test_the_loop_trains_the_policy_anyway_when_asked(
    judged_no_model, project, reward_model_without_learning, ppo_calls
):
    loop = _run(project, "loop", {"base_checkpoint_id": judged_no_model.pk, "train_policy_anyway": True})
    run_loop(loop.pk)

    loop.refresh_from_db()
    assert loop.status == "succeeded", loop.error
    assert len(ppo_calls) == 1 and ppo_calls[0].config["reward_model_id"] == RewardModel.objects.get().pk
    assert loop.outputs["checkpoint_id"] == Checkpoint.objects.get(produced_by=ppo_calls[0]).pk
    assert "Training the policy anyway" in loop.log_tail


def test_the_verdict_of_a_model_evaluated_before_intervals_uses_wilson(project):
    from training.ml.intervals import wilson_interval

    old = RewardModel(project=project, uri="/rm", accuracy=0.6, learned=True, evaluation={"pairs": 20})
    lower, upper = wilson_interval(12, 20)
    assert old.accuracy_interval == (lower, upper) and lower < 0.5
    assert old.held_out_summary == f"held-out accuracy 0.60 [{lower:.2f}, {upper:.2f}] on 20 pairs"
    assert RewardModel(project=project, uri="/rm", accuracy=0.7).accuracy_interval is None
    unevaluated = RewardModel(project=project, uri="/rm", learned=False)
    assert (
        unevaluated.verdict
        == "no held-out accuracy (no held-out pairs to evaluate it on): not shown to learn"
    )


def test_the_migration_judges_old_models_by_their_wilson_interval(project):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("training.migrations.0002_reward_model_learned_help")
    by_loss = RewardModel.objects.create(
        project=project, uri="/a", accuracy=0.6, learned=True, evaluation={"pairs": 20}
    )
    clear = RewardModel.objects.create(
        project=project, uri="/b", accuracy=0.9, learned=False, evaluation={"pairs": 200}
    )
    new = RewardModel.objects.create(
        project=project, uri="/c", accuracy=0.55, learned=False, evaluation={"pairs": 40, **NOT_LEARNED_EVAL}
    )
    migration.learned_by_interval(apps, None)
    assert [RewardModel.objects.get(pk=m.pk).learned for m in (by_loss, clear, new)] == [False, True, False]


TINY_DPO = {"learning_rate": 2e-3, "batch_size": 8, "gradient_accumulation_steps": 1, "warmup_ratio": 0.0}


def test_a_dpo_run_turns_the_judgments_into_a_draft_checkpoint_that_prefers_what_people_chose(
    judged_round, project
):
    from training.tasks import train_dpo

    _, base = judged_round
    run = _run(
        project, "dpo", {"policy_checkpoint_id": base.pk, "training": {**TINY_DPO, "eval_fraction": 0.25}}
    )
    train_dpo(run.pk)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    assert run.snapshot is not None and run.snapshot.pair_count == 64
    checkpoint = Checkpoint.objects.get(produced_by=run)
    assert checkpoint.status == "draft" and checkpoint.parent == base and checkpoint.reward_model is None
    assert checkpoint.config == run.config["training"]
    held_out = run.outputs["eval"]
    assert held_out["accuracy_lower"] > 0.5, held_out
    for name in ("rewards/margins", "rewards/accuracies", "eval/accuracy"):
        assert Metric.objects.filter(run=run, name=name).exists(), name
    train_dpo(run.pk)  # a second delivery does nothing twice
    assert Checkpoint.objects.filter(produced_by=run).count() == 1


def test_the_loop_with_dpo_trains_the_policy_straight_from_the_judgments_and_publishes_it(
    judged_round, project, django_capture_on_commit_callbacks
):
    _, base = judged_round
    loop = _run(
        project,
        "loop",
        {"base_checkpoint_id": base.pk, "algorithm": "dpo", "dpo": TINY_DPO, "open_next_round": True},
    )
    with django_capture_on_commit_callbacks(execute=False):  # the next round's generation is not run
        run_loop(loop.pk)

    loop.refresh_from_db()
    assert loop.status == "succeeded", loop.error
    assert [child.kind for child in loop.children.all()] == ["dpo"]  # no reward model, no PPO
    checkpoint = Checkpoint.objects.get(pk=loop.outputs["checkpoint_id"])
    assert checkpoint.status == "published" and checkpoint.parent == base
    assert project.rounds.filter(number=2).exists()  # new vs old, for people to judge

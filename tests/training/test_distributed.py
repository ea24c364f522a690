"""Training in several processes: the task launches ``accelerate launch`` and watches it through files.

Real 2-process runs on the CPU (DDP over gloo) through the same launcher a GPU node uses.
"""

import json
import math
from pathlib import Path

import pytest

from tests.training.test_model_runs import TINY_PPO, TINY_RM, judged_round  # noqa: F401 (a fixture)
from training.distributed import launch_command, process_count
from training.models import Checkpoint, Metric, RewardModel, TrainingRun
from training.reward_models import reward_model_dir
from training.runs import RunReporter
from training.tasks import train_ppo, train_reward_model


def test_it_trains_in_the_worker_unless_the_config_asks_for_more_processes():
    assert process_count({}) == 1
    assert process_count({"num_processes": 1}) == 1
    assert process_count({"num_processes": 4}, gpu_count=8) == 4
    assert process_count({"num_processes": "auto"}, gpu_count=8) == 8
    assert process_count({"num_processes": "auto"}, gpu_count=1) == 1
    assert process_count({"num_processes": "auto"}, gpu_count=0) == 1
    with pytest.raises(ValueError, match="num_processes"):
        process_count({"num_processes": "many"})


def test_a_worker_runs_no_more_processes_than_it_has_devices():
    with pytest.raises(ValueError, match="this worker has 2 GPUs; ask for at most 2"):
        process_count({"num_processes": 100_000}, gpu_count=2)
    with pytest.raises(ValueError, match="CPU cores"):
        process_count({"num_processes": 100_000}, gpu_count=0)


def test_it_forms_a_cpu_group_with_the_torchrun_launcher_and_honours_an_accelerate_config(tmp_path, settings):
    settings.ACCELERATE_CONFIGS_DIR = tmp_path / "accelerate"
    settings.ACCELERATE_CONFIGS_DIR.mkdir()
    (settings.ACCELERATE_CONFIGS_DIR / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    cpu, env = launch_command(
        module="m",
        config_path=tmp_path / "r.json",
        num_processes=2,
        accelerate_config=None,
        cuda=False,
        port=1,
    )
    assert "--multi_gpu" in cpu and env["ACCELERATE_USE_CPU"] == "1"
    assert cpu[-4:] == ["-m", "m", "--config", str(tmp_path / "r.json")]
    fsdp, env = launch_command(
        module="m",
        config_path=tmp_path / "r.json",
        num_processes=8,
        accelerate_config="fsdp",
        cuda=True,
        port=1,
    )
    path = str((settings.ACCELERATE_CONFIGS_DIR / "fsdp.yaml").resolve())
    assert fsdp[fsdp.index("--config_file") + 1] == path and "--multi_gpu" not in fsdp
    assert "ACCELERATE_USE_CPU" not in env


@pytest.mark.slow
def test_it_trains_a_reward_model_in_two_processes(judged_round, project):  # noqa: F811
    _, base = judged_round
    config = {"base_checkpoint_id": base.pk, "training": TINY_RM, "num_processes": 2}
    run = TrainingRun.objects.create(project=project, kind="reward_model", config=config)
    train_reward_model(run.pk)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error + run.log_tail
    assert run.outputs["num_processes"] == 2
    assert run.progress_done == run.progress_total > 0
    assert Metric.objects.filter(run=run, name="loss").exists()
    assert Metric.objects.filter(run=run, name="eval/accuracy").exists()
    reward_model = RewardModel.objects.get(run=run)
    assert reward_model.accuracy is not None and reward_model.uri == str(reward_model_dir(run))
    # Both ranks trained: each optimizer step took a batch on each rank, so an epoch of
    # 36 pairs was ceil(18 / 8) = 3 steps, not the 5 of one process, and rank 0 saw half.
    train, epochs, batch = reward_model.evaluation["train"], TINY_RM["num_epochs"], TINY_RM["batch_size"]
    assert run.progress_total == math.ceil(train["pairs"] / 2 / batch) * epochs
    assert train["pairs_seen"] < train["pairs"] * epochs
    assert "Launching 2 processes" in run.log_tail
    written = json.loads((reward_model_dir(run) / "tandem_reward.json").read_text())
    assert written["metadata"]["run"] == run.pk


@pytest.mark.slow
def test_it_cancels_a_two_process_run_through_the_stop_file(judged_round, project, monkeypatch):  # noqa: F811
    _, base = judged_round
    training = {**TINY_RM, "num_epochs": 50}  # far longer than it takes to cancel
    config = {"base_checkpoint_id": base.pk, "training": training, "num_processes": 2}
    run = TrainingRun.objects.create(project=project, kind="reward_model", config=config)
    metrics = RunReporter.metrics

    def admin_cancels_after_the_first_metrics(self, step, values):
        metrics(self, step, values)
        TrainingRun.objects.filter(pk=self.run.pk).update(cancel_requested=True)  # the admin's button
        self._last_cancel_check = 0  # let the next check see it at once

    monkeypatch.setattr(RunReporter, "metrics", admin_cancels_after_the_first_metrics)
    train_reward_model(run.pk)

    run.refresh_from_db()
    assert run.status == "cancelled", run.error + run.log_tail
    assert 0 < run.progress_done < run.progress_total
    assert not RewardModel.objects.exists()
    assert not reward_model_dir(run).exists()
    assert not list(reward_model_dir(run).parent.glob(f"*{reward_model_dir(run).name}*"))


@pytest.mark.slow
def test_it_runs_ppo_in_two_processes_and_records_the_checkpoint(judged_round, project):  # noqa: F811
    _, base = judged_round
    reward_run = TrainingRun.objects.create(
        project=project,
        kind="reward_model",
        config={"base_checkpoint_id": base.pk, "training": {**TINY_RM, "max_steps": 1}},
    )  # any reward model will do: this is about the plumbing
    train_reward_model(reward_run.pk)
    config = {
        "policy_checkpoint_id": base.pk,
        "reward_model_id": RewardModel.objects.get().pk,
        "training": TINY_PPO,
        "num_processes": 2,
    }
    run = TrainingRun.objects.create(project=project, kind="ppo", config=config)
    train_ppo(run.pk)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error + run.log_tail
    assert run.outputs["num_processes"] == 2 and run.progress_done == run.progress_total > 0
    assert Metric.objects.filter(run=run, name="objective/kl").exists()
    checkpoint = Checkpoint.objects.get(produced_by=run)
    assert checkpoint.parent == base and (Path(checkpoint.uri) / "config.json").is_file()


def test_an_accelerate_config_is_taken_only_by_name_from_its_folder(
    judged_round,  # noqa: F811
    project,
    settings,
    tmp_path,
):
    _, base = judged_round
    settings.ACCELERATE_CONFIGS_DIR = tmp_path / "accelerate"
    settings.ACCELERATE_CONFIGS_DIR.mkdir()
    config = {"base_checkpoint_id": base.pk, "num_processes": 2, "accelerate_config": "fsdp"}
    run = TrainingRun.objects.create(project=project, kind="reward_model", config=config)
    train_reward_model(run.pk)

    run.refresh_from_db()
    assert run.status == "failed"
    assert f"No accelerate config named 'fsdp' in {settings.ACCELERATE_CONFIGS_DIR}" in run.error
    assert not RewardModel.objects.exists()


@pytest.mark.slow
def test_it_fails_the_run_with_the_processes_own_error(judged_round, project, settings, tmp_path):  # noqa: F811
    _, base = judged_round
    settings.ACCELERATE_CONFIGS_DIR = tmp_path / "accelerate"
    settings.ACCELERATE_CONFIGS_DIR.mkdir()
    (settings.ACCELERATE_CONFIGS_DIR / "broken.yaml").write_text("compute_environment: LOCAL_MACHINE\n")
    config = {"base_checkpoint_id": base.pk, "num_processes": 2, "accelerate_config": "broken"}
    run = TrainingRun.objects.create(project=project, kind="reward_model", config=config)
    train_reward_model(run.pk)

    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error.startswith("LaunchFailed: The 2 training processes exited with status 1:"), run.error
    assert "distributed_type" in run.error  # accelerate's own words about the broken file
    assert not RewardModel.objects.exists()

"""DPO through TRL's DPOTrainer on a tiny random Llama (training.ml.dpo): it learns, stops, resumes."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tests.ml.test_reward_training import MAGIC, WORDS, synthetic_pairs
from training.ml.dpo import RESULTS_FILE, DPOConfig, evaluate_dpo, latest_state, to_dpo_dataset, train_dpo
from training.ml.hooks import TrainingHooks

# A random 2-layer, 64-wide policy learns to say "thanks" from 60 pairs in one epoch at this rate.
TINY_DPO = DPOConfig(
    learning_rate=2e-3, batch_size=8, gradient_accumulation_steps=1, warmup_ratio=0.0, save_every=0
)


def content_pairs(n_prompts: int, seed: int) -> list[dict]:
    """Pairs that differ in one word only: the chosen answer says "thanks" where the rejected says
    another word. Same length on both sides, so DPO's summed log-probabilities cannot score a
    length prior as a learned preference (with one word more in the chosen answer, a policy
    trained on shuffled labels scored 0.72 [0.55, 0.84] held out)."""
    rng = random.Random(seed)
    return [
        {**row, "rejected": row["chosen"].replace(MAGIC, rng.choice(WORDS), 1)}
        for row in synthetic_pairs(n_prompts, seed)
    ]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_pairs_become_trl_conversational_preference_rows():
    rows = synthetic_pairs(1, seed=0)
    dataset = to_dpo_dataset(rows)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": rows[0]["chosen"]}]
    assert dataset[0]["prompt"] == rows[0]["prompt"]


def test_a_policy_against_itself_scores_chance_with_no_margin(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    evaluation = evaluate_dpo(model, model, tokenizer, synthetic_pairs(6, seed=3), beta=0.1)
    assert evaluation["accuracy"] == 0.5 and evaluation["mean_margin"] == 0.0
    assert evaluation["pairs"] == 12 and evaluation["prompts"] == 6


@pytest.mark.slow
def test_dpo_raises_held_out_preference_accuracy_and_moves_the_policy_toward_the_chosen_answers(
    tiny_checkpoint, tmp_path
):
    seen: dict[str, list[float]] = {}

    def on_metrics(step, metrics):
        for name, value in metrics.items():
            seen.setdefault(name, []).append(value)

    results = train_dpo(
        content_pairs(30, seed=1),
        content_pairs(16, seed=2),
        tiny_checkpoint,
        tmp_path / "policy",
        TINY_DPO,
        TrainingHooks(on_metrics=on_metrics),
    )

    assert results["status"] == "completed"
    held_out = results["eval"]
    # Chance is 0.5 (the starting policy against itself); the interval clears it.
    assert held_out["accuracy_lower"] > 0.5, held_out
    assert held_out["chosen_log_ratio"] > held_out["rejected_log_ratio"]
    # TRL's own metrics reach the hooks, as the run's charts read them.
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert seen.get(name), name
    moved = _weights(tmp_path / "policy")
    start = _weights(tiny_checkpoint)
    assert any(not moved[k].equal(start[k]) for k in start)
    assert (tmp_path / "policy" / RESULTS_FILE).is_file()


@pytest.mark.slow
def test_a_cancelled_dpo_run_writes_no_policy(tiny_checkpoint, tmp_path):
    steps = []
    hooks = TrainingHooks(
        on_progress=lambda step, total: steps.append(step), should_stop=lambda: len(steps) > 2
    )
    results = train_dpo(
        content_pairs(30, seed=1),
        synthetic_pairs(4, seed=2),
        tiny_checkpoint,
        tmp_path / "policy",
        TINY_DPO,
        hooks,
    )
    assert results["status"] == "cancelled" and results["steps"] < results["total_steps"]
    assert not (tmp_path / "policy").exists()
    assert not list(tmp_path.glob(".*policy*"))  # no half-written sibling either


@pytest.mark.slow
def test_a_dpo_run_resumes_from_its_last_saved_state(tiny_checkpoint, tmp_path):
    config = DPOConfig(**{**TINY_DPO.__dict__, "save_every": 2})
    train, held_out, state_dir = synthetic_pairs(24, seed=1), synthetic_pairs(4, seed=2), tmp_path / "state"
    steps = []
    stop_after_three = TrainingHooks(
        on_progress=lambda step, total: steps.append(step), should_stop=lambda: bool(steps) and steps[-1] >= 3
    )
    first = train_dpo(
        train, held_out, tiny_checkpoint, tmp_path / "policy", config, stop_after_three, state_dir=state_dir
    )
    assert first["status"] == "cancelled"
    saved = latest_state(state_dir)
    assert saved is not None and Path(saved).name == "checkpoint-2"

    resumed_steps = []
    second = train_dpo(
        train,
        held_out,
        tiny_checkpoint,
        tmp_path / "policy",
        config,
        TrainingHooks(on_progress=lambda step, total: resumed_steps.append(step)),
        state_dir=state_dir,
    )
    assert second["status"] == "completed" and second["resumed_from"] == "checkpoint-2"
    assert resumed_steps[0] == 2 and second["steps"] == second["total_steps"] == 6  # 48 pairs / 8
    shutil.rmtree(tmp_path / "policy")


@pytest.mark.slow
def reversed_labels(rows: list[dict]) -> list[dict]:
    return [{**row, "chosen": row["rejected"], "rejected": row["chosen"]} for row in rows]


@pytest.mark.slow
def test_dpo_follows_the_reversed_rule_so_the_direction_comes_from_the_judgments(tiny_checkpoint, tmp_path):
    """The control for the test above: people who prefer the answer *without* "thanks" get a
    policy that moves the other way. Were DPO drifting one way whatever the labels (a prior of
    the model or the data), one of the two tests would fail.

    Half the labels swapped (no preference) is not a clean control on this tiny model: held-out
    accuracy came out 0.78-0.88 (seeds 0-2), a pull toward the "thanks" answers that the
    reversed rule overrides completely (1.00 [0.89, 1.00] on every seed; issue #17's note)."""
    results = train_dpo(
        reversed_labels(content_pairs(30, seed=1)),
        reversed_labels(content_pairs(16, seed=2)),
        tiny_checkpoint,
        tmp_path / "policy",
        TINY_DPO,
    )
    held_out = results["eval"]
    assert held_out["accuracy_lower"] > 0.5, held_out
    assert held_out["chosen_log_ratio"] > held_out["rejected_log_ratio"]

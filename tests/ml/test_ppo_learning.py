"""PPO end to end on a tiny Llama: the reward goes up, the KL penalty holds the policy, runs resume.

The random tiny Llama spreads its probability over 49,152 tokens, so no reward can move
it in a few updates. The fixture gives it an untied output head whose rows for 32 tokens
are large (a "peaked" model, like a trained LM that puts most mass on a few tokens per
context); the reward is the share of response tokens among 8 of those 32.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from training.ml.checkpoints import is_complete_checkpoint
from training.ml.ppo import PPOConfig, PPOHooks, latest_state, main, resume_ppo, train_ppo

PEAKED_TOKENS = range(100, 132)
TARGET_TOKENS = frozenset(range(100, 108))
PROMPTS = [
    [{"role": "user", "content": f"Question {i}: {word}?"}]
    for i, word in enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split())
]


def target_share_reward(prompt_texts, response_ids, response_texts):
    """Share of response tokens in TARGET_TOKENS (a programmatic reward)."""
    return torch.tensor([sum(token in TARGET_TOKENS for token in ids) / len(ids) for ids in response_ids])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def peaked_checkpoint(tiny_checkpoint, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("peaked") / "policy"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, tie_word_embeddings=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.get_input_embeddings().weight)
        rows = torch.tensor(list(PEAKED_TOKENS))
        model.lm_head.weight[rows] = 0.6 * torch.randn(
            len(rows), model.config.hidden_size, generator=generator
        )
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(path)
    return path


def learning_config(**overrides) -> PPOConfig:
    values = dict(
        total_episodes=8 * 16,
        batch_size=8,
        mini_batch_size=8,
        response_length=8,
        reward_norm_samples=32,
        learning_rate=1e-4,
        seed=0,
    )
    values.update(overrides)
    return PPOConfig(**values)


def last(history, name, n=4):
    return sum(h[name] for h in history[-n:]) / n


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(next(path.glob("*.safetensors"))))


@pytest.mark.slow
def test_it_raises_the_reward_and_keeps_kl_bounded(peaked_checkpoint, tmp_path):
    updates = []
    result = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=tmp_path / "policy",
        config=learning_config(),
        hooks=PPOHooks(on_update=lambda i, n, metrics: updates.append((i, n)), on_log=None),
    )
    history = result.history
    assert updates == [(i, 16) for i in range(1, 17)]
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-3)  # first batch: policy == reference
    assert history[0]["objective/raw_scores"] < 0.3
    assert last(history, "objective/raw_scores") > history[0]["objective/raw_scores"] + 0.25
    assert last(history, "objective/kl") < 30.0
    for name in (
        "policy/entropy",
        "policy/clipfrac",
        "val/clipfrac",
        "policy/approxkl",
        "loss/policy",
        "loss/value",
    ):
        assert all(torch.isfinite(torch.tensor(h[name])) for h in history), name
    assert all(h["response/length_mean"] <= 8 for h in history)

    assert is_complete_checkpoint(result.output_dir)
    before, after = weights(peaked_checkpoint), weights(result.output_dir)
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(moved) == len(before)  # every tensor of the policy was trained


@pytest.mark.slow
def test_a_large_kl_coefficient_keeps_the_policy_near_the_reference(peaked_checkpoint):
    free = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=None,
        config=learning_config(total_episodes=8 * 12),
        hooks=PPOHooks(on_log=None),
    )
    held = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=None,
        config=learning_config(total_episodes=8 * 12, kl_coef=1.0, kl_estimator="k3"),
        hooks=PPOHooks(on_log=None),
    )
    assert last(held.history, "objective/kl") < 5.0
    assert last(held.history, "objective/kl") < 0.5 * last(free.history, "objective/kl")


def small_config(**overrides) -> PPOConfig:
    values = dict(
        total_episodes=4 * 4,
        batch_size=4,
        mini_batch_size=2,
        num_ppo_epochs=1,
        response_length=4,
        reward_norm_samples=8,
        learning_rate=1e-4,
        missing_eos_penalty=1.0,
        seed=3,
    )
    values.update(overrides)
    return PPOConfig(**values)


@pytest.mark.slow
def test_a_cancelled_run_resumes_where_it_stopped_and_matches_an_uninterrupted_run(
    peaked_checkpoint, tmp_path
):
    uninterrupted = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=None,
        config=small_config(),
        hooks=PPOHooks(on_log=None),
    )

    done = []
    state_dir = tmp_path / "state"
    cancelled = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=tmp_path / "never",
        config=small_config(save_every=2),
        state_dir=state_dir,
        hooks=PPOHooks(
            on_update=lambda i, n, m: done.append(i), should_stop=lambda: len(done) >= 2, on_log=None
        ),
    )
    assert cancelled.cancelled and cancelled.updates_done == 2 and cancelled.output_dir is None
    assert not (tmp_path / "never").exists()
    assert latest_state(state_dir).name == "update-000002"
    assert not [p for p in state_dir.iterdir() if p.name.startswith(".tmp")]

    resumed = resume_ppo(
        state_dir,
        prompts=PROMPTS,
        reward=target_share_reward,
        output_dir=tmp_path / "policy",
        hooks=PPOHooks(on_log=None),
    )
    assert not resumed.cancelled and resumed.updates_done == 4
    assert len(resumed.history) == 2
    for expected, got in zip(uninterrupted.history[2:], resumed.history, strict=True):
        for name in ("objective/raw_scores", "objective/kl", "loss/policy", "loss/value"):
            assert got[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-5), name
    assert is_complete_checkpoint(tmp_path / "policy")


def test_cancel_takes_effect_before_the_first_update(peaked_checkpoint):
    result = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=None,
        config=small_config(normalize_reward=False),
        hooks=PPOHooks(should_stop=lambda: True, on_log=None),
    )
    assert result.cancelled and result.updates_done == 0 and result.history == []


@pytest.mark.slow
def test_the_module_entry_point_runs_from_a_json_file(peaked_checkpoint, tiny_checkpoint, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward_model = tmp_path / "reward-model"  # as train_reward_model writes one: model and tokenizer
    AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=1).save_pretrained(
        reward_model
    )
    AutoTokenizer.from_pretrained(tiny_checkpoint).save_pretrained(reward_model)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"conversation": p}) for p in PROMPTS[:4]))
    spec = {
        "policy_path": str(peaked_checkpoint),
        "reward_model_path": str(reward_model),
        "prompts_path": str(prompts),
        "output_dir": str(tmp_path / "out"),
        "metrics_path": str(tmp_path / "metrics.jsonl"),
        "stop_file": str(tmp_path / "STOP"),
        "config": dataclass_dict(small_config(total_episodes=8)),
    }
    (tmp_path / "run.json").write_text(json.dumps(spec))
    result = main(["--config", str(tmp_path / "run.json")])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["update"] for line in lines] == [1, 2] and lines[-1]["num_updates"] == 2
    assert "objective/scores" in lines[0] and "response/eos_share" in lines[0]
    assert result.output_dir == tmp_path / "out" and is_complete_checkpoint(tmp_path / "out")


@pytest.mark.slow
def test_lora_trains_adapters_and_saves_a_merged_policy(peaked_checkpoint, tmp_path):
    result = train_ppo(
        policy_path=peaked_checkpoint,
        reward=target_share_reward,
        prompts=PROMPTS,
        output_dir=tmp_path / "policy",
        config=small_config(use_lora=True, lora_r=4, learning_rate=1e-3, total_episodes=8),
        hooks=PPOHooks(on_log=None),
    )
    assert result.history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-3)  # adapters start at zero
    assert is_complete_checkpoint(result.output_dir)
    before, after = weights(peaked_checkpoint), weights(result.output_dir)
    assert set(after) == set(before)  # merged: a plain checkpoint, no adapter keys
    assert any(not torch.equal(before[name], after[name]) for name in before)
    shutil.rmtree(result.output_dir)


def dataclass_dict(config):
    import dataclasses

    return dataclasses.asdict(config)

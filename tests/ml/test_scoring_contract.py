"""One scoring contract: PPO scores a response exactly as the reward model was trained and evaluated.

TRL trains the reward model on the chat template rendered over prompt + response, which for
SmolLM2 ends ``<|im_end|>`` then ``\\n``; the score is read at that last ``\\n``. PPO used to read
it at the ``<|im_end|>`` it sampled, a position the head was never trained on (on a tiny model
trained to prefer "thanks", held-out accuracy was 0.98 read where it was trained, 0.85 read
where PPO read it). These tests pin PPO to the evaluator's own function.
"""

from __future__ import annotations

import pytest
import torch

from training.ml.generation import response_text
from training.ml.ppo import PPOConfig, collect_rollout, disable_dropout, load_models, tokenize_prompts
from training.ml.reward import RewardModelConfig, RewardScorer, build_reward_trainer, load_reward_model

PROMPTS = [
    [{"role": "user", "content": f"Tell me about {w}."}] for w in ("rivers", "stones", "clouds", "music")
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reward_dir(tiny_checkpoint, tmp_path_factory):
    """A reward-model directory whose head is large, so positions give clearly different scores."""
    model, tokenizer = load_reward_model(tiny_checkpoint)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("rm") / "reward"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _rollout(tiny_checkpoint, reward_dir):
    config = PPOConfig(response_length=12, temperature=1.0, batch_size=4, mini_batch_size=4, seed=0)
    tokenizer, policy, _ref, _value, scorer, _fn = load_models(tiny_checkpoint, str(reward_dir), config)
    disable_dropout(policy)
    torch.manual_seed(0)
    rollout = collect_rollout(
        policy,
        tokenize_prompts(tokenizer, PROMPTS, 64),
        config=config,
        tokenizer=tokenizer,
        reward_model=scorer,
        reward_fn=None,
        device=torch.device("cpu"),
        conversations=PROMPTS,
    )
    texts = [
        response_text(tokenizer, row[m].tolist())
        for row, m in zip(rollout.response_ids, rollout.response_mask, strict=True)
    ]
    return tokenizer, scorer, rollout, texts


def test_ppo_scores_each_response_exactly_as_the_evaluator_does(tiny_checkpoint, reward_dir):
    _tokenizer, _scorer, rollout, texts = _rollout(tiny_checkpoint, reward_dir)
    evaluator = RewardScorer.from_pretrained(reward_dir)  # a fresh load, as evaluation does
    expected = evaluator.score(PROMPTS, texts, batch_size=1)
    assert rollout.raw_scores.tolist() == pytest.approx(expected, abs=1e-5)


def test_the_score_is_read_on_the_token_trl_trained_on_not_on_the_sampled_eos(
    tiny_checkpoint, reward_dir, tmp_path
):
    tokenizer, scorer, _rollout_, texts = _rollout(tiny_checkpoint, reward_dir)
    # What training tokenises (TRL's RewardTrainer, as Tandem builds it) for a pair whose chosen answer is texts[0]:
    row = {"prompt": PROMPTS[0], "chosen": texts[0], "rejected": "no"}
    trainer = build_reward_trainer(
        scorer.model, tokenizer, [row], None, RewardModelConfig(max_length=None), str(tmp_path)
    )
    trained_on = trainer.train_dataset[0]["chosen_ids"]
    assert scorer.encode(PROMPTS[0], texts[0]) == trained_on
    # The template closes the answer with EOS and more: the old position (EOS) is not the last token.
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert trained_on[-1] != eos and eos in trained_on[-3:]

"""PPO maths against hand-computed values, and the model plumbing that the maths relies on."""

from __future__ import annotations

import math

import pytest
import torch

from training.ml.ppo import (
    AdaptiveKLController,
    PolicyAndValue,
    PPOConfig,
    disable_dropout,
    gae_advantages,
    kl_penalty,
    last_token_index,
    left_pad,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    per_token_scores,
    policy_loss,
    position_ids_from_mask,
    prompt_indices_for_update,
    sample_responses,
    truncate_after_eos,
    value_loss,
)

EOS, PAD = 2, 0


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_it_averages_only_masked_values():
    values = t([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([2.0])


def test_it_whitens_over_masked_values_and_zeroes_the_rest():
    values = t([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    # mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1
    assert masked_whiten(values, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    # shift_mean=False rescales but keeps the mean (used for rewards)
    assert masked_whiten(values, mask, shift_mean=False).tolist()[0] == pytest.approx(
        [1.0, 2.0, 3.0, 0.0], abs=1e-4
    )


def test_it_computes_gae_on_a_short_sequence():
    rewards = t([[0.0, 0.0, 1.0]])
    values = t([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: delta = 1 + 0 - 0.5 = 0.5; t=1: delta = 0, A = 0.5 * 0.5; t=0: A = 0.5 * 0.25
    assert advantages.tolist()[0] == pytest.approx([0.125, 0.25, 0.5])
    assert returns.tolist()[0] == pytest.approx([0.625, 0.75, 1.0])


def test_it_treats_the_state_after_the_last_real_token_as_terminal():
    rewards = t([[0.0, 1.0, 9.0]])  # 9 sits on padding and must be ignored
    values = t([[0.5, 0.5, 7.0]])  # so must 7
    mask = torch.tensor([[True, True, False]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.25, 0.5, 0.0])
    assert returns.tolist()[0] == pytest.approx([0.75, 1.0, 0.0])


def test_it_discounts_with_gamma():
    advantages, _ = gae_advantages(t([[0.0, 1.0]]), t([[0.0, 0.0]]), torch.ones(1, 2), gamma=0.9, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([0.9, 1.0])


def test_it_estimates_kl_with_k1_and_k3():
    logprobs = torch.log(t([[0.5, 0.25]]))
    ref_logprobs = torch.log(t([[0.25, 0.25]]))
    k1 = kl_penalty(logprobs, ref_logprobs, "k1")
    k3 = kl_penalty(logprobs, ref_logprobs, "k3")
    assert k1.tolist()[0] == pytest.approx([math.log(2), 0.0])
    # r = ref / pi = 0.5: (r - 1) - log r = -0.5 + log 2
    assert k3.tolist()[0] == pytest.approx([-0.5 + math.log(2), 0.0])
    with pytest.raises(ValueError):
        kl_penalty(logprobs, ref_logprobs, "k2")


def test_k3_is_never_negative_where_k1_is():
    logprobs = torch.log(t([[0.1]]))
    ref_logprobs = torch.log(t([[0.4]]))
    assert kl_penalty(logprobs, ref_logprobs, "k1").item() < 0
    assert kl_penalty(logprobs, ref_logprobs, "k3").item() > 0


def test_it_clips_the_policy_loss():
    old = t([[0.0, 0.0]])
    new = torch.log(t([[1.5, 1.5]]))  # ratio 1.5 on both tokens
    advantages = t([[1.0, -1.0]])
    loss, stats = policy_loss(new, old, advantages, torch.ones(1, 2, dtype=torch.bool), cliprange=0.2)
    # A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5 (unclipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approxkl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2)


def test_the_clipped_policy_term_has_no_gradient():
    new = torch.log(t([[1.5]])).requires_grad_()
    loss, _ = policy_loss(new, t([[0.0]]), t([[1.0]]), torch.ones(1, 1), cliprange=0.2)
    loss.backward()
    assert new.grad.item() == 0.0


def test_it_clips_the_value_loss():
    old = t([[0.0, 0.0]])
    new = t([[0.5, 0.1]])
    returns = t([[1.0, 1.0]])
    loss, stats = value_loss(new, old, returns, torch.ones(1, 2, dtype=torch.bool), cliprange_value=0.2)
    # v_clip = [0.2, 0.1]; losses max((0.25, 0.64), (0.81, 0.81)) = (0.64, 0.81)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_it_truncates_responses_after_the_first_eos():
    responses = torch.tensor([[5, EOS, 7, EOS, 9], [EOS, 5, 5, 5, 5], [5, 5, 5, 5, 5], [5, PAD, EOS, 7, 7]])
    truncated, mask = truncate_after_eos(responses, EOS, PAD)
    assert truncated.tolist() == [
        [5, EOS, PAD, PAD, PAD],
        [EOS, PAD, PAD, PAD, PAD],
        [5, 5, 5, 5, 5],  # no EOS: every token is real
        [5, PAD, EOS, PAD, PAD],  # a sampled pad id before EOS is a real token
    ]
    assert mask.long().tolist() == [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_the_score_lands_on_the_eos_token_in_a_padded_batch():
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # left padding
    _, response_mask = truncate_after_eos(torch.tensor([[5, EOS, 6, 6], [5, 6, 7, 8]]), EOS, PAD)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    # row 0: EOS at response index 1 -> position 3 + 1; row 1 never ends -> its last token
    assert last_token_index(attention_mask).tolist() == [4, 6]
    assert last_token_index(response_mask).tolist() == [1, 3]

    rewards, non_score = per_token_rewards(t([10.0, 20.0]), torch.ones(2, 4), 0.1, response_mask)
    torch.testing.assert_close(rewards, t([[-0.1, 9.9, 0.0, 0.0], [-0.1, -0.1, -0.1, 19.9]]))
    assert non_score.sum(1).tolist() == pytest.approx([-0.2, -0.4])


def test_positions_skip_left_padding():
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_left_pad():
    ids, mask = left_pad([[7, 8, 9], [5]], PAD)
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_adaptive_kl_controller_moves_toward_the_target():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=12.0, num_episodes=256)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    controller.update(current_kl=3.0, num_episodes=256)  # error -0.5 clipped to -0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000) * (1 - 0.2 * 256 / 10_000))


def test_prompt_order_is_a_fresh_shuffle_per_epoch_and_deterministic():
    first_epoch = [i for u in range(3) for i in prompt_indices_for_update(u, 6, 2, 1, 0, seed=1)]
    assert sorted(first_epoch) == list(range(6))
    assert prompt_indices_for_update(4, 6, 2, 1, 0, seed=1) == prompt_indices_for_update(
        4, 6, 2, 1, 0, seed=1
    )
    # two processes split one global batch without overlap
    both = prompt_indices_for_update(0, 8, 2, 2, 0, 3) + prompt_indices_for_update(0, 8, 2, 2, 1, 3)
    assert len(set(both)) == 4


def test_config_documents_every_field_and_keeps_trl_defaults():
    import dataclasses

    fields = dataclasses.fields(PPOConfig)
    assert all(f.metadata.get("help") for f in fields)
    config = PPOConfig()
    assert (config.learning_rate, config.kl_coef, config.cliprange, config.cliprange_value) == (
        3e-6,
        0.05,
        0.2,
        0.2,
    )
    assert (config.vf_coef, config.gamma, config.lam, config.num_ppo_epochs, config.temperature) == (
        0.1,
        1.0,
        0.95,
        4,
        0.7,
    )
    with pytest.raises(ValueError):
        PPOConfig.from_dict({"learning_rat": 1e-5})
    with pytest.raises(ValueError):
        PPOConfig(batch_size=6, mini_batch_size=4)


# ---- model plumbing on the tiny Llama -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tiny_checkpoint):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads, and loses on busy cores
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    value = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint, num_labels=1)
    for model in (policy, value):
        disable_dropout(model)
    yield policy, value
    torch.set_num_threads(previous)


def test_sampled_logprobs_match_a_forward_pass_on_left_padded_prompts(tiny_models):
    """Old log-probs come from the sampler; they must equal what the training forward computes,
    or the first PPO ratio would not be 1."""
    policy, value = tiny_models
    torch.manual_seed(0)
    prompt_ids, prompt_mask = left_pad([[11, 12, 13, 14, 15], [21, 22], [31, 32, 33]], PAD)
    responses, logprobs, _ = sample_responses(
        policy, prompt_ids, prompt_mask, max_new_tokens=6, temperature=0.7, eos_token_id=EOS, pad_token_id=PAD
    )
    responses, response_mask = truncate_after_eos(responses, EOS, PAD)
    sequences = torch.cat([prompt_ids, responses], 1)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], 1)
    with torch.no_grad():
        logits, values = PolicyAndValue(policy, value)(sequences, attention_mask, responses.shape[1], 0.7)
    from training.ml.ppo import logprobs_from_logits

    recomputed = logprobs_from_logits(logits, responses)
    assert torch.allclose(recomputed[response_mask], logprobs[response_mask], atol=1e-4)
    assert values.shape == responses.shape


def test_the_reward_head_scores_a_padded_row_like_the_unpadded_sequence(tiny_models):
    _, value = tiny_models
    sequence = [11, 12, 13, 5, 6, EOS]
    ids, mask = left_pad([sequence, [40, 41, 42, 43, 44, 45, 46, 47]], PAD)
    ids = torch.cat([ids, torch.full((2, 2), PAD)], 1)  # right padding after the response too
    mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.long)], 1)
    with torch.no_grad():
        scores = per_token_scores(value, ids, mask, position_ids_from_mask(mask))
        padded_score = scores[0, last_token_index(mask)[0]]
        alone = torch.tensor([sequence])
        expected = value(input_ids=alone, attention_mask=torch.ones_like(alone)).logits[0, 0]
    assert padded_score.item() == pytest.approx(expected.item(), abs=1e-4)


def test_dropout_is_off(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, attention_dropout=0.5)
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    ids = torch.tensor([[11, 12, 13, 14]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)

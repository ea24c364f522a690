"""PPO for RLHF: policy, frozen reference, reward (model or function) and a per-token value model.

Written on torch + transformers + accelerate (TRL removed its PPOTrainer). The loop follows
Huang et al., "The N+ Implementation Details of RLHF with PPO" (2024):

- prompts are left-padded for generation; the pad token must differ from EOS, and every
  attention mask is built explicitly (never from ``ids != pad``), so a sampled pad id is
  just another token;
- sampling divides the logits by ``temperature``, and so does every later log-prob
  computation (old, new and reference log-probs all see the same distribution);
- a response is truncated after its first EOS; the reward lands on that EOS token (the
  last real token), and responses that never reach EOS can be penalised;
- a reward model scores a response exactly as it was trained and evaluated (the scoring
  contract): the response is decoded as Tandem stores it (``generation.response_text``) and
  scored by ``reward.RewardScorer`` on the chat template rendered over prompt + response,
  read where TRL read it in training (for SmolLM2 the ``\n`` after ``<|im_end|>``, not the
  EOS token the policy sampled);
- the score is normalised so that responses of the reference policy score mean 0 and std 1
  (estimated on reference samples before training);
- per-token KL penalty ``-kl_coef * KL`` (k1 or k3 estimator, fixed or adaptive coefficient);
- GAE on the per-token rewards, advantages whitened over real tokens;
- ``num_ppo_epochs`` passes of shuffled minibatches with the clipped surrogate and the
  clipped value loss; dropout is off in every model.

Nothing here imports Django. A Celery task calls :func:`train_ppo` (or :func:`resume_ppo`)
with :class:`PPOHooks` to receive metrics, report progress and request cancellation; a
multi-GPU run is launched with ``accelerate launch -m training.ml.ppo --config run.json``
(on CPU-only machines ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m training.ml.ppo ...``
runs DDP over gloo). Each process samples ``batch_size`` responses per update; metrics are
averaged over processes and hooks run on the main process only.

Shapes in docstrings: ``B`` sequences, ``P`` prompt tokens (left-padded), ``T`` response
tokens (right-padded), ``V`` vocabulary size.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from training.ml.checkpoints import (
    atomic_directory,
    ensure_distinct_pad_token,
    pause_between_files,
    train_top_layers_only,
)
from training.ml.generation import response_text
from training.ml.ppo_config import PPOConfig  # noqa: F401  (torch-free, so the web process can check configs)
from training.ml.reward import RewardScorer, load_reward_model

STATE_PREFIX = "update-"


# --------------------------------------------------------------------------------------
# Hooks: how the caller (a Celery task) watches and steers a run
# --------------------------------------------------------------------------------------


@dataclass
class PPOHooks:
    """Callbacks into the caller. Every one is optional; all run on the main process only.

    - ``on_update(update, num_updates, metrics)``: after each update (1-based ``update``);
      ``metrics`` maps names such as ``objective/scores`` to floats.
    - ``should_stop()``: polled before every update, between minibatches and between
      sampling chunks; returning True ends the run within one minibatch (no final save).
    - ``on_state_saved(path)``: after a resumable state is renamed into place.
    - ``on_log(message)``: human-readable progress lines (defaults to print).
    """

    on_update: Callable[[int, int, dict[str, float]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_state_saved: Callable[[Path], None] | None = None
    on_log: Callable[[str], None] | None = print


def file_hooks(metrics_path: str | os.PathLike | None, stop_file: str | os.PathLike | None) -> PPOHooks:
    """Hooks for a separate process: append metrics as JSON lines, stop when ``stop_file`` exists.

    Used by the ``python -m training.ml.ppo`` entry point, where the launching task cannot pass
    Python callables; it tails ``metrics_path`` and creates ``stop_file`` to cancel.
    """

    def on_update(update: int, num_updates: int, metrics: dict[str, float]) -> None:
        if metrics_path is not None:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps({"update": update, "num_updates": num_updates, **metrics}) + "\n")

    def should_stop() -> bool:
        return stop_file is not None and Path(stop_file).exists()

    return PPOHooks(on_update=on_update, should_stop=should_stop)


@dataclass
class PPOResult:
    """What a run returns: where the policy went, how far it got, the metrics of every update."""

    output_dir: Path | None
    updates_done: int
    num_updates: int
    cancelled: bool
    history: list[dict[str, float]]


# --------------------------------------------------------------------------------------
# Rewards: a reward model or a Python function, both first-class
# --------------------------------------------------------------------------------------


class RewardFunction(Protocol):
    """A programmatic reward: one score per response.

    Called as ``fn(prompt_texts, response_ids, response_texts)``: prompts decoded without
    padding, response token ids up to and including the first EOS (no padding), responses
    decoded without special tokens. Returns a float tensor (or list) of shape ``(B,)``.
    """

    def __call__(
        self, prompt_texts: list[str], response_ids: list[list[int]], response_texts: list[str]
    ) -> torch.Tensor | Sequence[float]: ...


# --------------------------------------------------------------------------------------
# Maths (pure tensor functions, unit-tested against hand-computed values)
# --------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true. values, mask: same shape; returns scalar or reduced."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``values`` where ``mask`` is true. Returns a scalar."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    if count < 2:
        raise ValueError("Whitening needs at least two masked values (raise mini_batch_size).")
    return masked_mean((values - mean) ** 2, mask) * count / (count - 1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(values - mean) / std`` over the masked entries; masked-out entries become 0.

    With ``shift_mean=False`` the mean is added back (only the scale changes), as used for rewards.
    values, mask: ``(B, T)``; returns ``(B, T)``.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def truncate_after_eos(
    response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first EOS; pad the rest.

    response_ids: ``(B, T)``. Returns ``(truncated_ids (B, T), response_mask (B, T) bool)``;
    the mask is true on the real tokens (all of them when a response has no EOS).
    """
    is_eos = response_ids == eos_token_id
    # Number of EOS tokens strictly before each position: a token is kept while that is 0.
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos.long()
    response_mask = eos_before == 0
    return response_ids.masked_fill(~response_mask, pad_token_id), response_mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last true entry of each row (where the reward lands). mask: ``(B, L)`` -> ``(B,)``.

    Works for left padding, right padding or both, because it looks for the last real
    position rather than counting real tokens. A row with no true entry gives 0.
    """
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens (0 for left padding). ``(B, L)`` -> ``(B, L)``."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def logprobs_from_logits(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]. logits: ``(B, T, V)``, token_ids: ``(B, T)`` -> ``(B, T)``."""
    logits = logits.float()
    picked = torch.gather(logits, -1, token_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from sampled tokens (http://joschu.net/blog/kl-approx.html).

    k1 = log pi - log ref (unbiased, can be negative); k3 = (r - 1) - log r with r = ref/pi
    (unbiased, never negative, lower variance). Inputs and output: ``(B, T)``.
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"Unknown KL estimator {estimator!r}.")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward of each response token: ``-kl_coef * kl`` everywhere, plus the score on the last real token.

    scores: ``(B,)``; kl, response_mask: ``(B, T)``. Returns ``(rewards, non_score_rewards)``, both
    ``(B, T)`` and zero on padding.
    """
    mask = response_mask.to(kl.dtype)
    non_score_rewards = -kl_coef * kl * mask
    rewards = non_score_rewards.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(response_mask)] += scores
    return rewards, non_score_rewards


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    rewards, values, response_mask: ``(B, T)``; ``values[:, t]`` is V(state before token t).
    The state after the last real token is terminal (value 0). Returns ``(advantages, returns)``,
    both ``(B, T)`` and zero on padding; returns = advantages + values.
    """
    mask = response_mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    last_advantage = torch.zeros_like(values[:, 0])
    advantages_reversed = []
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_advantage = delta + gamma * lam * last_advantage
        advantages_reversed.append(last_advantage)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``mean(max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)))`` over masked tokens.

    All inputs ``(B, T)``; rho = exp(new - old). Returns the scalar loss and detached stats
    ``clipfrac`` (share of tokens where the clipped term is active) and ``approxkl``
    (0.5 * mean squared log-ratio).
    """
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        }
    return loss, stats


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5 * mean(max((v - R)^2, (v_clip - R)^2))`` over masked tokens.

    ``v_clip = old + clamp(v - old, -c, c)``. All inputs ``(B, T)``. Returns the scalar loss and
    detached ``clipfrac`` (share of tokens where the clipped term is the larger).
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (new_values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask)}
    return loss, stats


class AdaptiveKLController:
    """Ziegler et al. (2019): multiply kl_coef by ``1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon``."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, num_episodes: int) -> None:
        proportional_error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + proportional_error * num_episodes / self.horizon


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def disable_dropout(model: nn.Module) -> None:
    """Turn dropout off for good: p=0 in every Dropout, 0 in every ``*dropout*`` config float, eval mode.

    Llama-style attention reads ``config.attention_dropout`` directly, so zeroing the
    modules alone would not be enough. Nothing in a causal LM depends on train mode otherwise.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for name, value in config.to_dict().items():
                if "dropout" in name and isinstance(value, float):
                    setattr(config, name, 0.0)
    model.eval()


def _base_transformer(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def per_token_scores(
    sequence_classifier: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
) -> torch.Tensor:
    """Apply a sequence-classification model's scalar head to every token.

    ``AutoModelForSequenceClassification`` pools at the last non-pad token itself, which is
    wrong for left-padded prompts followed by right-padded responses; here the head is
    applied to all hidden states and the caller picks positions. input_ids etc: ``(B, L)`` ->
    ``(B, L)`` float.
    """
    model = _base_transformer(sequence_classifier)
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


class PolicyAndValue(nn.Module):
    """Policy and value model in one module, so accelerate wraps (DDP) and syncs both together."""

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob inputs for the response part. input_ids: ``(B, P+T)`` with ``T = response_length``.

        Returns ``(logits (B, T, V) already divided by temperature, values (B, T))``; position t
        holds the prediction/value for response token t (computed from the token before it).
        """
        position_ids = position_ids_from_mask(attention_mask)
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=response_length + 1,
        ).logits[:, :-1]
        values = per_token_scores(self.value_model, input_ids, attention_mask, position_ids)
        return logits.float() / temperature, values[:, -response_length - 1 : -1]


def _sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row from ``probs`` ``(B, V)`` -> ``(B,)``, by inverting the CDF.

    Over a 49k vocabulary this is ~10x faster than ``torch.multinomial`` on a CPU; the
    cumulative sum is in float64 so rare tokens keep their exact share.
    """
    cdf = probs.double().cumsum(-1)
    draw = torch.rand(probs.shape[0], 1, device=probs.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp_(max=probs.shape[1] - 1)


@torch.no_grad()
def sample_responses(
    policy: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample responses with a KV cache, pure temperature sampling (no top-k/top-p).

    prompt_ids, prompt_mask: ``(B, P)``, left-padded. Stops when every row has produced EOS.
    Returns ``(response_ids (B, T), logprobs (B, T), entropy (B, T))`` with ``T <= max_new_tokens``;
    log-probs and entropies are those of softmax(logits / temperature); after a row's EOS
    its ids are ``pad_token_id`` (its log-probs and entropies are meaningless there).
    """
    batch = prompt_ids.shape[0]
    attention_mask = prompt_mask.long()
    position_ids = position_ids_from_mask(attention_mask)
    output = policy(
        input_ids=prompt_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    next_position = position_ids[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, logprobs, entropies = [], [], []
    for _ in range(max_new_tokens):
        step_logprobs = torch.log_softmax(output.logits[:, -1].float() / temperature, dim=-1)
        step_probs = step_logprobs.exp()
        token = _sample_categorical(step_probs)
        token = token.masked_fill(finished, pad_token_id)
        tokens.append(token)
        logprobs.append(step_logprobs.gather(1, token[:, None]).squeeze(1))
        entropies.append(-(step_probs * step_logprobs).sum(-1))
        finished |= token == eos_token_id
        if bool(finished.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        output = policy(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=output.past_key_values,
            use_cache=True,
        )
        next_position = next_position + 1
    return torch.stack(tokens, 1), torch.stack(logprobs, 1), torch.stack(entropies, 1)


def _require_peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("use_lora=True needs the peft package: pip install peft") from exc
    return peft


def load_models(
    policy_path: str | os.PathLike,
    reward: str | os.PathLike | RewardFunction | nn.Module,
    config: PPOConfig,
    *,
    policy_state: str | os.PathLike | None = None,
    value_state: str | os.PathLike | None = None,
):
    """Load tokenizer, policy, reference, value model and reward from checkpoints.

    ``reward`` is a path to a reward-model checkpoint, a :class:`~training.ml.reward.RewardScorer`,
    a loaded sequence-classification model (scored with the policy's tokenizer), or a
    :class:`RewardFunction`. ``policy_state``/``value_state`` point at weights saved in a
    resumable state (full models or LoRA adapters). Returns
    ``(tokenizer, policy, ref_policy or None with LoRA, value_model, RewardScorer or None, reward_fn or None)``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    ensure_distinct_pad_token(tokenizer)
    tokenizer.padding_side = "left"

    reward_model, reward_fn = None, None
    if isinstance(reward, RewardScorer):
        reward_model = reward
    elif isinstance(reward, nn.Module):
        reward_model = RewardScorer(reward, tokenizer)
    elif isinstance(reward, (str, os.PathLike)):
        reward_model = RewardScorer(*load_reward_model(reward))
    elif callable(reward):
        reward_fn = reward
    else:
        raise TypeError(f"reward must be a path, a model or a callable, not {type(reward).__name__}.")

    value_path = config.value_model_path
    if value_path is None:
        value_path = reward if isinstance(reward, (str, os.PathLike)) else policy_path
    if config.use_lora and value_state is not None:
        value_model = AutoModelForSequenceClassification.from_pretrained(value_path, num_labels=1)
    else:
        value_model = AutoModelForSequenceClassification.from_pretrained(
            value_state or value_path, num_labels=1
        )
    policy_source = policy_state if (policy_state is not None and not config.use_lora) else policy_path
    policy = AutoModelForCausalLM.from_pretrained(policy_source)
    for model in (policy, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id

    ref_policy = None
    if config.use_lora:
        peft = _require_peft()
        if policy_state is not None:
            policy = peft.PeftModel.from_pretrained(policy, policy_state, is_trainable=True)
            value_model = peft.PeftModel.from_pretrained(value_model, value_state, is_trainable=True)
        else:
            lora = dict(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=0.0,
                target_modules=config.lora_target_modules,
            )
            policy = peft.get_peft_model(policy, peft.LoraConfig(task_type="CAUSAL_LM", **lora))
            value_model = peft.get_peft_model(
                value_model, peft.LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora)
            )
    else:
        ref_policy = AutoModelForCausalLM.from_pretrained(policy_path)
        ref_policy.requires_grad_(False)
        for model in (policy, value_model):
            train_top_layers_only(model, config.trainable_layers)
    if reward_model is not None:
        reward_model.model.requires_grad_(False)
    for model in (policy, ref_policy, value_model, reward_model and reward_model.model):
        if model is not None:
            disable_dropout(model)
    return tokenizer, policy, ref_policy, value_model, reward_model, reward_fn


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------


def tokenize_prompts(
    tokenizer, prompts: Sequence[str | list[dict]], max_prompt_length: int
) -> list[list[int]]:
    """Token ids of each prompt. A conversation (list of {role, content}) goes through the chat
    template with the generation prompt; a string is tokenized as it is. Long prompts keep their end.
    """
    tokenized = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        if not ids:
            raise ValueError("Empty prompt.")
        tokenized.append(list(ids)[-max_prompt_length:])
    return tokenized


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to the longest. Returns ``(ids (B, P) long, mask (B, P) long)``."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, length - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            mask[row, length - len(sequence) :] = 1
    return ids, mask


def prompt_indices_for_update(
    update: int, num_prompts: int, batch_size: int, num_processes: int, process_index: int, seed: int
) -> list[int]:
    """Which prompts this process uses at ``update`` (0-based): a fresh shuffle every epoch.

    Deterministic in (update, seed), so a resumed run sees exactly the prompts it would have seen.
    """
    global_batch = batch_size * num_processes
    start = update * global_batch + process_index * batch_size
    indices = []
    for slot in range(start, start + batch_size):
        epoch, position = divmod(slot, num_prompts)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        indices.append(int(torch.randperm(num_prompts, generator=generator)[position]))
    return indices


# --------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of sampled responses and everything PPO needs about them (all on one device)."""

    query_responses: torch.Tensor  # (B, P+T) prompt then truncated response
    attention_mask: torch.Tensor  # (B, P+T) 1 on real tokens
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) bool
    logprobs: torch.Tensor  # (B, T) sampling log-probs of the policy
    entropy: torch.Tensor  # (B, T)
    raw_scores: torch.Tensor  # (B,) reward before normalisation
    has_eos: torch.Tensor  # (B,) bool


@torch.no_grad()
def score_responses(
    conversations: Sequence[list[dict] | None],
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    reward_model: RewardScorer | None,
    reward_fn: RewardFunction | None,
    tokenizer,
    micro_batch_size: int,
) -> torch.Tensor:
    """Raw score of each response, from the reward model (the scoring contract) or the reward function.

    conversations: B prompts as ``{role, content}`` lists (None for a raw-string prompt, which
    only a reward function can score); query_responses, attention_mask: ``(B, P+T)``;
    response_ids, response_mask: ``(B, T)``. Returns ``(B,)``.

    A reward model sees what it was trained and evaluated on: the response decoded as Tandem
    stores it (:func:`training.ml.generation.response_text`), rendered with the chat template
    after its conversation, scored by :meth:`RewardScorer.score` -- the evaluator's own function.
    """
    response_lists = [row[m].tolist() for row, m in zip(response_ids, response_mask, strict=True)]
    if reward_model is not None:
        if any(c is None for c in conversations):
            raise ValueError(
                "A reward model scores conversations: give PPO prompts as {role, content} lists."
            )
        texts = [response_text(tokenizer, ids) for ids in response_lists]
        scores = reward_model.score(conversations, texts, batch_size=micro_batch_size)
        return torch.tensor(scores, dtype=torch.float32, device=query_responses.device)
    prompt_length = query_responses.shape[1] - response_ids.shape[1]
    prompt_texts = tokenizer.batch_decode(
        [
            row[m.bool()]
            for row, m in zip(
                query_responses[:, :prompt_length], attention_mask[:, :prompt_length], strict=True
            )
        ],
        skip_special_tokens=False,
    )
    response_texts = tokenizer.batch_decode(response_lists, skip_special_tokens=True)
    scores = reward_fn(prompt_texts, response_lists, response_texts)
    return torch.as_tensor(scores, dtype=torch.float32, device=query_responses.device).reshape(-1)


@torch.no_grad()
def collect_rollout(
    policy: nn.Module,
    prompt_ids: list[list[int]],
    *,
    config: PPOConfig,
    tokenizer,
    reward_model: RewardScorer | None,
    reward_fn: RewardFunction | None,
    device: torch.device,
    conversations: Sequence[list[dict] | None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Rollout | None:
    """Sample one response per prompt (in chunks of ``micro_batch_size``), truncate at EOS, score.

    ``conversations``: the prompts as ``{role, content}`` lists, one per ``prompt_ids`` row
    (needed when a reward model scores). Returns None when ``should_stop`` fires between chunks.
    """
    micro = config.micro_batch_size or config.mini_batch_size
    chunks = []
    for start in range(0, len(prompt_ids), micro):
        if should_stop():
            return None
        ids, mask = left_pad(prompt_ids[start : start + micro], tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        responses, logprobs, entropy = sample_responses(
            policy,
            ids,
            mask,
            max_new_tokens=config.response_length,
            temperature=config.temperature,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        chunks.append((ids, mask, responses, logprobs, entropy))

    # Chunks differ in prompt and response lengths: left-pad prompts, right-pad responses.
    prompt_len = max(c[0].shape[1] for c in chunks)
    response_len = max(c[2].shape[1] for c in chunks)
    pad = tokenizer.pad_token_id
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("ids", "mask", "resp", "lp", "ent")}
    for ids, mask, responses, logprobs, entropy in chunks:
        extra_p, extra_t = prompt_len - ids.shape[1], response_len - responses.shape[1]
        parts["ids"].append(F.pad(ids, (extra_p, 0), value=pad))
        parts["mask"].append(F.pad(mask, (extra_p, 0), value=0))
        parts["resp"].append(F.pad(responses, (0, extra_t), value=pad))
        parts["lp"].append(F.pad(logprobs, (0, extra_t), value=0.0))
        parts["ent"].append(F.pad(entropy, (0, extra_t), value=0.0))
    prompt_ids_t, prompt_mask = torch.cat(parts["ids"]), torch.cat(parts["mask"])
    response_ids, response_mask = truncate_after_eos(torch.cat(parts["resp"]), tokenizer.eos_token_id, pad)
    has_eos = (response_ids == tokenizer.eos_token_id).any(dim=1)
    query_responses = torch.cat([prompt_ids_t, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)
    raw_scores = score_responses(
        list(conversations) if conversations is not None else [None] * len(prompt_ids),
        query_responses,
        attention_mask,
        response_ids,
        response_mask,
        reward_model=reward_model,
        reward_fn=reward_fn,
        tokenizer=tokenizer,
        micro_batch_size=micro,
    )
    return Rollout(
        query_responses=query_responses,
        attention_mask=attention_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=torch.cat(parts["lp"]) * response_mask,
        entropy=torch.cat(parts["ent"]) * response_mask,
        raw_scores=raw_scores,
        has_eos=has_eos,
    )


@torch.no_grad()
def response_logprobs(
    policy: nn.Module, rollout: Rollout, temperature: float, micro_batch_size: int
) -> torch.Tensor:
    """Log-probs of the rollout's response tokens under ``policy`` (at ``temperature``). Returns ``(B, T)``."""
    length = rollout.response_ids.shape[1]
    out = []
    for start in range(0, rollout.query_responses.shape[0], micro_batch_size):
        chunk = slice(start, start + micro_batch_size)
        mask = rollout.attention_mask[chunk]
        logits = policy(
            input_ids=rollout.query_responses[chunk],
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
            logits_to_keep=length + 1,
        ).logits[:, :-1]
        out.append(logprobs_from_logits(logits.float() / temperature, rollout.response_ids[chunk]))
    return torch.cat(out) * rollout.response_mask


@torch.no_grad()
def response_values(value_model: nn.Module, rollout: Rollout, micro_batch_size: int) -> torch.Tensor:
    """V(state before each response token) from the value model. Returns ``(B, T)``, 0 on padding."""
    length = rollout.response_ids.shape[1]
    out = []
    for start in range(0, rollout.query_responses.shape[0], micro_batch_size):
        chunk = slice(start, start + micro_batch_size)
        mask = rollout.attention_mask[chunk]
        scores = per_token_scores(
            value_model, rollout.query_responses[chunk], mask, position_ids_from_mask(mask)
        )
        out.append(scores[:, -length - 1 : -1])
    return torch.cat(out) * rollout.response_mask


# --------------------------------------------------------------------------------------
# Resumable state
# --------------------------------------------------------------------------------------


def latest_state(state_dir: str | os.PathLike) -> Path | None:
    """The most recent complete resumable state under ``state_dir`` (``update-000123``), or None."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return None
    states = sorted(
        p for p in state_dir.iterdir() if p.name.startswith(STATE_PREFIX) and (p / "run.json").exists()
    )
    return states[-1] if states else None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(
    state_dir: Path,
    *,
    accelerator,
    model: PolicyAndValue,
    optimizer,
    run: dict[str, Any],
    keep: int,
) -> Path | None:
    """Write policy, value model, optimizer, RNG states and ``run.json`` atomically (main process)."""
    from accelerate.utils import gather_object

    rng_states = gather_object([_rng_state()])  # one per process, in rank order
    path = state_dir / f"{STATE_PREFIX}{run['updates_done']:06d}"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        with atomic_directory(path) as tmp:
            unwrapped.policy.save_pretrained(tmp / "policy")
            pause_between_files(tmp)
            unwrapped.value_model.save_pretrained(tmp / "value_model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rng_states, tmp / "rng_states.pt")
            (tmp / "run.json").write_text(json.dumps(run, indent=2))
        old_states = sorted(p for p in state_dir.iterdir() if p.name.startswith(STATE_PREFIX))
        for old in old_states[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def train_ppo(
    *,
    policy_path: str | os.PathLike,
    reward: str | os.PathLike | RewardFunction | nn.Module | RewardScorer,
    prompts: Sequence[str | list[dict]],
    output_dir: str | os.PathLike | None,
    config: PPOConfig | None = None,
    hooks: PPOHooks | None = None,
    state_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    accelerator=None,
) -> PPOResult:
    """Run PPO and write the final policy (+ tokenizer) to ``output_dir`` atomically.

    - ``policy_path``: a ``save_pretrained`` causal-LM directory (the SFT model; also the reference).
    - ``reward``: a reward-model checkpoint path (or a loaded model or ``RewardScorer``), scored
      exactly as it was trained and evaluated, or a :class:`RewardFunction`.
    - ``prompts``: conversations (lists of ``{role, content}``, rendered with the chat template)
      or raw strings.
    - ``output_dir``: must not exist; None skips the final save (tests, benchmarks).
    - ``state_dir``: where resumable states go every ``config.save_every`` updates.
    - ``resume_from``: a state directory written by a previous run (see :func:`resume_ppo`).

    Returns a :class:`PPOResult`; ``cancelled`` is True when ``hooks.should_stop`` ended the run.
    """
    from accelerate import Accelerator

    hooks = hooks or PPOHooks()
    config = config or PPOConfig()
    if output_dir is not None and Path(output_dir).exists():  # fail now, not after hours of training
        raise FileExistsError(f"{output_dir} already exists; checkpoints are never overwritten.")
    accelerator = accelerator or Accelerator()
    device = accelerator.device
    is_main = accelerator.is_main_process
    resume_run: dict[str, Any] | None = None
    if resume_from is not None:
        resume_from = Path(resume_from)
        resume_run = json.loads((resume_from / "run.json").read_text())
        config = PPOConfig.from_dict(resume_run["config"])

    def log(message: str) -> None:
        if is_main and hooks.on_log is not None:
            hooks.on_log(message)

    def stop_requested() -> bool:
        wanted = bool(hooks.should_stop()) if (is_main and hooks.should_stop is not None) else False
        if accelerator.num_processes > 1:  # every rank must leave the loop at the same point
            flag = torch.tensor([float(wanted)], device=device)
            wanted = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        return wanted

    torch.manual_seed(config.seed)  # identical initial weights (fresh value/LoRA heads) on every rank
    tokenizer, policy, ref_policy, value_model, reward_model, reward_fn = load_models(
        policy_path,
        reward,
        config,
        policy_state=resume_from / "policy" if resume_from else None,
        value_state=resume_from / "value_model" if resume_from else None,
    )
    torch.manual_seed(config.seed + 100_003 * accelerator.process_index)
    random.seed(config.seed + accelerator.process_index)

    model = PolicyAndValue(policy, value_model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel is ~10x faster than the default per-tensor loop on CPU (big embedding matrices).
    optimizer = torch.optim.AdamW(
        trainable,
        lr=config.learning_rate,
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
        fused=True,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    disable_dropout(model)
    for frozen in (ref_policy, reward_model and reward_model.model):
        if frozen is not None:
            frozen.to(device)

    prompt_ids = tokenize_prompts(tokenizer, prompts, config.max_prompt_length)
    conversations = [None if isinstance(p, str) else list(p) for p in prompts]
    episodes_per_update = config.batch_size * accelerator.num_processes
    num_updates = math.ceil(config.total_episodes / episodes_per_update)
    micro = config.micro_batch_size or config.mini_batch_size
    kl_controller = (
        AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.kl_target is not None
        else None
    )
    kl_coef = config.kl_coef
    unwrapped = accelerator.unwrap_model(model)

    def reference_logprobs(rollout: Rollout) -> torch.Tensor:
        if ref_policy is not None:
            return response_logprobs(ref_policy, rollout, config.temperature, micro)
        with unwrapped.policy.disable_adapter():  # LoRA: the reference is the base model
            return response_logprobs(unwrapped.policy, rollout, config.temperature, micro)

    # Reward normalisation: score reference samples before any update (the policy is still the reference).
    score_mean, score_std = 0.0, 1.0
    start_update = 0
    if resume_run is not None:
        score_mean, score_std = resume_run["score_mean"], resume_run["score_std"]
        kl_coef = resume_run["kl_coef"]
        if kl_controller is not None:
            kl_controller.value = kl_coef
        start_update = resume_run["updates_done"]
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", weights_only=False))
        rng_states = torch.load(resume_from / "rng_states.pt", weights_only=False)
        _set_rng_state(rng_states[min(accelerator.process_index, len(rng_states) - 1)])
        log(f"Resumed from {resume_from} after update {start_update}/{num_updates}.")
    elif config.normalize_reward:
        generator = torch.Generator().manual_seed(config.seed + 7 + accelerator.process_index)
        picks = torch.randint(len(prompt_ids), (config.reward_norm_samples,), generator=generator).tolist()
        raw = []
        for start in range(0, len(picks), config.batch_size):
            rollout = collect_rollout(
                unwrapped.policy if ref_policy is None else ref_policy,
                [prompt_ids[i] for i in picks[start : start + config.batch_size]],
                config=config,
                tokenizer=tokenizer,
                reward_model=reward_model,
                reward_fn=reward_fn,
                device=device,
                conversations=[conversations[i] for i in picks[start : start + config.batch_size]],
                should_stop=stop_requested,
            )
            if rollout is None:
                return PPOResult(
                    output_dir=None, updates_done=0, num_updates=num_updates, cancelled=True, history=[]
                )
            raw.append(rollout.raw_scores)
        raw_scores = accelerator.gather(torch.cat(raw))
        score_mean = raw_scores.mean().item()
        score_std = raw_scores.std().item() if raw_scores.numel() > 1 else 0.0
        if not math.isfinite(score_std) or score_std < 1e-6:
            log(f"Reference scores are (nearly) constant (std {score_std:.2e}): only the mean is removed.")
            score_std = 1.0
        log(
            f"Reward normalisation from {raw_scores.numel()} reference samples: mean {score_mean:.4f}, std {score_std:.4f}."
        )

    history: list[dict[str, float]] = []
    run_start = time.time()
    cancelled = False
    for update in range(start_update, num_updates):
        if stop_requested():
            cancelled = True
            break
        update_start = time.time()
        if config.anneal_lr:
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * (1.0 - update / num_updates)

        # 1. Rollout: sample, truncate at EOS, score; old log-probs come from the sampler itself.
        batch_prompts = prompt_indices_for_update(
            update,
            len(prompt_ids),
            config.batch_size,
            accelerator.num_processes,
            accelerator.process_index,
            config.seed,
        )
        rollout = collect_rollout(
            unwrapped.policy,
            [prompt_ids[i] for i in batch_prompts],
            config=config,
            tokenizer=tokenizer,
            reward_model=reward_model,
            reward_fn=reward_fn,
            device=device,
            conversations=[conversations[i] for i in batch_prompts],
            should_stop=stop_requested,
        )
        if rollout is None:
            cancelled = True
            break
        with torch.no_grad():
            mask = rollout.response_mask
            ref_logprobs = reference_logprobs(rollout)
            values = response_values(unwrapped.value_model, rollout, micro)

            # 2. Rewards: normalised score on the EOS token, per-token KL penalty everywhere.
            scores = (rollout.raw_scores - score_mean) / score_std
            if config.missing_eos_penalty is not None:
                scores = scores - config.missing_eos_penalty * (~rollout.has_eos).float()
            kl = kl_penalty(rollout.logprobs, ref_logprobs, config.kl_estimator) * mask
            rewards, non_score_rewards = per_token_rewards(scores, kl, kl_coef, mask)
            if config.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False)

            # 3. Advantages (GAE), whitened over real tokens.
            advantages, returns = gae_advantages(rewards, values, mask, config.gamma, config.lam)
            advantages = masked_whiten(advantages, mask)

        # 4. PPO epochs over shuffled minibatches; micro-batches accumulate token-weighted gradients.
        stats: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approxkl")
        }
        response_length = rollout.response_ids.shape[1]
        for _epoch in range(config.num_ppo_epochs):
            order = torch.randperm(config.batch_size)
            for mb_start in range(0, config.batch_size, config.mini_batch_size):
                if stop_requested():
                    cancelled = True
                    break
                minibatch = order[mb_start : mb_start + config.mini_batch_size]
                minibatch_tokens = mask[minibatch].sum().clamp(min=1)
                for mc_start in range(0, config.mini_batch_size, micro):
                    idx = minibatch[mc_start : mc_start + micro].to(device)
                    weight = mask[idx].sum() / minibatch_tokens
                    with (
                        accelerator.no_sync(model)
                        if mc_start + micro < config.mini_batch_size
                        else contextlib.nullcontext()
                    ):
                        logits, new_values = model(
                            rollout.query_responses[idx],
                            rollout.attention_mask[idx],
                            response_length,
                            config.temperature,
                        )
                        new_logprobs = logprobs_from_logits(logits, rollout.response_ids[idx])
                        pg_loss, pg_stats = policy_loss(
                            new_logprobs, rollout.logprobs[idx], advantages[idx], mask[idx], config.cliprange
                        )
                        vf_loss, vf_stats = value_loss(
                            new_values, values[idx], returns[idx], mask[idx], config.cliprange_value
                        )
                        loss = (pg_loss + config.vf_coef * vf_loss) * weight
                        accelerator.backward(loss)
                    stats["pg_loss"].append(pg_loss.detach() * weight)
                    stats["vf_loss"].append(vf_loss.detach() * weight)
                    stats["pg_clipfrac"].append(pg_stats["clipfrac"] * weight)
                    stats["vf_clipfrac"].append(vf_stats["clipfrac"] * weight)
                    stats["approxkl"].append(pg_stats["approxkl"] * weight)
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if cancelled:
                break
        if cancelled:
            break

        # 5. Metrics, averaged over processes; KL controller; hooks; resumable state.
        with torch.no_grad():
            num_minibatches = max(1, config.num_ppo_epochs * (config.batch_size // config.mini_batch_size))
            lengths = mask.sum(1).float()
            local = {
                "objective/scores": scores.mean(),
                "objective/raw_scores": rollout.raw_scores.mean(),
                "objective/kl": kl.sum(1).mean(),
                "objective/non_score_reward": non_score_rewards.sum(1).mean(),
                "objective/rlhf_reward": (scores + non_score_rewards.sum(1)).mean(),
                "policy/entropy": masked_mean(rollout.entropy, mask),
                "policy/approxkl": torch.stack(stats["approxkl"]).sum() / num_minibatches,
                "policy/clipfrac": torch.stack(stats["pg_clipfrac"]).sum() / num_minibatches,
                "val/clipfrac": torch.stack(stats["vf_clipfrac"]).sum() / num_minibatches,
                "loss/policy": torch.stack(stats["pg_loss"]).sum() / num_minibatches,
                "loss/value": torch.stack(stats["vf_loss"]).sum() / num_minibatches,
                "response/length_mean": lengths.mean(),
                "response/eos_share": rollout.has_eos.float().mean(),
            }
            names = list(local)
            reduced = accelerator.reduce(torch.stack([local[n].float() for n in names]).to(device), "mean")
            metrics = {n: float(v) for n, v in zip(names, reduced.tolist(), strict=True)}
        if kl_controller is not None:
            kl_controller.update(metrics["objective/kl"], episodes_per_update)
            kl_coef = kl_controller.value
        updates_done = update + 1
        metrics.update(
            {
                "objective/kl_coef": kl_coef,
                "lr": optimizer.param_groups[0]["lr"],
                "episode": float(updates_done * episodes_per_update),
                "time/update_s": time.time() - update_start,
                "time/episodes_per_s": (updates_done - start_update)
                * episodes_per_update
                / max(time.time() - run_start, 1e-9),
            }
        )
        history.append(metrics)
        if is_main and hooks.on_update is not None:
            hooks.on_update(updates_done, num_updates, metrics)
        log(
            f"update {updates_done}/{num_updates} score {metrics['objective/scores']:+.3f} "
            f"kl {metrics['objective/kl']:.3f} entropy {metrics['policy/entropy']:.3f}"
        )
        if config.save_every and state_dir is not None and updates_done % config.save_every == 0:
            run = {
                "updates_done": updates_done,
                "num_updates": num_updates,
                "policy_path": str(policy_path),
                "reward": str(reward) if isinstance(reward, (str, os.PathLike)) else None,
                "config": config.to_dict(),
                "kl_coef": kl_coef,
                "score_mean": score_mean,
                "score_std": score_std,
            }
            saved = _save_state(
                Path(state_dir),
                accelerator=accelerator,
                model=model,
                optimizer=optimizer,
                run=run,
                keep=config.keep_states,
            )
            if is_main and hooks.on_state_saved is not None:
                hooks.on_state_saved(saved)

    updates_done = len(history) + start_update
    saved_output = None
    if not cancelled and output_dir is not None:
        saved_output = save_policy(accelerator.unwrap_model(model).policy, tokenizer, output_dir, accelerator)
    return PPOResult(
        output_dir=saved_output,
        updates_done=updates_done,
        num_updates=num_updates,
        cancelled=cancelled,
        history=history,
    )


def save_policy(policy: nn.Module, tokenizer, output_dir: str | os.PathLike, accelerator=None) -> Path:
    """Write ``policy`` (LoRA merged into a plain model) and ``tokenizer`` to ``output_dir`` atomically."""
    output_dir = Path(output_dir)
    if accelerator is None or accelerator.is_main_process:
        to_save = policy
        if hasattr(policy, "merge_and_unload"):
            import copy

            to_save = copy.deepcopy(policy).merge_and_unload()
        with atomic_directory(output_dir) as tmp:
            to_save.save_pretrained(tmp)
            pause_between_files(tmp)
            tokenizer.save_pretrained(tmp)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return output_dir


def resume_ppo(
    state_path: str | os.PathLike,
    *,
    prompts: Sequence[str | list[dict]],
    output_dir: str | os.PathLike | None,
    reward: str | os.PathLike | RewardFunction | nn.Module | None = None,
    hooks: PPOHooks | None = None,
    state_dir: str | os.PathLike | None = None,
    accelerator=None,
) -> PPOResult:
    """Continue a run from a resumable state (a ``update-NNNNNN`` directory, or the folder holding them).

    Config and policy path come from the state; ``reward`` defaults to the saved reward-model
    path and must be passed again for a reward function. ``state_dir`` defaults to the
    state's parent folder.
    """
    state_path = Path(state_path)
    if not (state_path / "run.json").exists():
        latest = latest_state(state_path)
        if latest is None:
            raise FileNotFoundError(f"No resumable PPO state under {state_path}.")
        state_path = latest
    run = json.loads((state_path / "run.json").read_text())
    reward = reward if reward is not None else run["reward"]
    if reward is None:
        raise ValueError("This run used a reward function: pass it again as reward=.")
    return train_ppo(
        policy_path=run["policy_path"],
        reward=reward,
        prompts=prompts,
        output_dir=output_dir,
        hooks=hooks,
        state_dir=state_dir if state_dir is not None else state_path.parent,
        resume_from=state_path,
        accelerator=accelerator,
    )


# --------------------------------------------------------------------------------------
# Entry point: python -m training.ml.ppo --config run.json  (or accelerate launch -m ...)
# --------------------------------------------------------------------------------------


def _load_callable(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _load_prompts(path: str | os.PathLike) -> list[str | list[dict]]:
    """Prompts from a JSON list or JSON lines; each item a string, a conversation, or {"conversation": ...}."""
    text = Path(path).read_text()
    items = (
        json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
    )
    return [item["conversation"] if isinstance(item, dict) else item for item in items]


def main(argv: Sequence[str] | None = None) -> PPOResult:
    """Run PPO from a JSON file::

        {"policy_path": "...", "reward_model_path": "..." | "reward_function": "pkg.mod:fn",
         "prompts_path": "prompts.jsonl", "output_dir": "...", "state_dir": "...",
         "metrics_path": "metrics.jsonl", "stop_file": "...", "resume": false,
         "config": {PPOConfig fields}}

    Metrics go to ``metrics_path`` as JSON lines; creating ``stop_file`` cancels the run;
    ``resume: true`` continues from the latest state in ``state_dir`` when there is one.
    """
    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON file describing the run")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.config).read_text())
    if spec.get("reward_function"):
        reward = _load_callable(spec["reward_function"])
    else:
        reward = spec["reward_model_path"]
    hooks = file_hooks(spec.get("metrics_path"), spec.get("stop_file"))
    prompts = _load_prompts(spec["prompts_path"])
    state_dir = spec.get("state_dir")
    if spec.get("resume") and state_dir and latest_state(state_dir) is not None:
        return resume_ppo(
            state_dir, prompts=prompts, output_dir=spec.get("output_dir"), reward=reward, hooks=hooks
        )
    return train_ppo(
        policy_path=spec["policy_path"],
        reward=reward,
        prompts=prompts,
        output_dir=spec.get("output_dir"),
        config=PPOConfig.from_dict(spec.get("config", {})),
        hooks=hooks,
        state_dir=state_dir,
    )


if __name__ == "__main__":
    main()

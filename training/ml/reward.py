"""Bradley-Terry reward model: train with TRL's RewardTrainer, evaluate, score responses.

The model is ``AutoModelForSequenceClassification`` with one label over any causal
LM checkpoint: it reads the reward r(x, y) at the last non-pad token of the chat
template rendered over ``prompt + [assistant: response]``. Training minimises

    -log sigmoid(r(x, y_w) - r(x, y_l) - m)          (m: the pair's margin, 0 if off)

averaged over pairs (TRL), or weighted by the pairs' ``weight`` column when it is
not all ones (the "per_ranking" convention of ``training.ml.pairs``): the weights are
rescaled to mean 1 over the dataset and the loss is ``mean(w * nll)`` per micro-batch
(:func:`weighted_preference_loss`), so each ranking counts once across batches.

Two ways in:

- in-process (CPU, tests, one GPU): :func:`train_reward_model` with a
  :class:`TrainingHooks` for metrics, progress and cancellation;
- ``accelerate launch -m training.ml.reward --config run.json`` (several GPUs):
  see :func:`main` for the JSON it reads; metrics go to a JSON-lines file and a
  stop file cancels the run.

No Django here: the Celery task loads rows, calls this, writes rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.ml.checkpoints import (
    atomic_directory,
    ensure_distinct_pad_token,
    pause_between_files,
    train_top_layers_only,
)
from training.ml.hooks import TrainingHooks, hooks_callback, quiet_progress_bars
from training.ml.intervals import clustered_share_interval
from training.ml.pairs import split_by_prompt

LN2 = math.log(2.0)
RESULTS_FILE = "tandem_reward.json"


@dataclass
class RewardModelConfig:
    """Reward-model training settings. Defaults suit SmolLM2-135M on a CPU or one small GPU."""

    learning_rate: float = field(default=2e-5, metadata={"help": "Peak AdamW learning rate."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many optimizer steps (overrides num_epochs when > 0)."}
    )
    batch_size: int = field(
        default=8, metadata={"help": "Pairs per device per micro-batch (the model sees 2x sequences)."}
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Micro-batches per optimizer step; effective batch = batch_size x this x GPUs."},
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass when evaluating."})
    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Pairs whose chosen or rejected sequence (chat template included) is longer are left out "
            "of training (TRL filters, it does not truncate); scoring keeps the last max_length tokens."
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of prompts held out when no eval rows are given (split by prompt)."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for the head's initialisation, data order and split."}
    )
    use_margin: bool = field(default=True, metadata={"help": "Subtract each pair's margin inside the loss."})
    use_weights: bool = field(
        default=True,
        metadata={
            "help": "Weigh the loss by the pairs' `weight` column when it is not all 1.0 (per_ranking)."
        },
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Adds coef * mean((r_w + r_l)^2) so rewards stay centred near 0 (0.01 is usual)."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of steps for linear warm-up."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "Batch pairs of similar length together (less padding, faster; order stays random)."
        },
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train only the top this-many transformer layers (plus final norm and head); "
            "None: the whole model. 8 of SmolLM2's 30 halves a CPU step and learns from a few hundred pairs."
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward: less memory, ~30% slower."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; None: on when a CUDA GPU supports it, off on CPU."},
    )
    logging_steps: int = field(default=1, metadata={"help": "Push averaged metrics every this many steps."})
    eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Also evaluate on the held-out pairs every this many steps (None: only at the end)."
        },
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardModelConfig:
        """Build from JSON data, refusing unknown keys (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown RewardModelConfig fields: {sorted(unknown)}")
        return cls(**data)


# --- data -----------------------------------------------------------------------------------


def to_trl_dataset(rows: Sequence[dict], *, use_margin: bool = True, use_weights: bool = False):
    """A ``datasets.Dataset`` in TRL's conversational preference format.

    Columns: ``prompt`` (list of {role, content}), ``chosen`` and ``rejected`` (one
    assistant message each), plus ``margin`` (float) and ``weight`` (float) when asked.
    TRL concatenates prompt + chosen and applies the tokenizer's chat template.
    """
    from datasets import Dataset

    data: dict[str, list] = {
        "prompt": [[{"role": m["role"], "content": m["content"]} for m in r["prompt"]] for r in rows],
        "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
        "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
    }
    if use_margin:
        data["margin"] = [float(r.get("margin", 0.0)) for r in rows]
    if use_weights:
        data["weight"] = normalized_weights(rows)
    return Dataset.from_dict(data)


def normalized_weights(rows: Sequence[dict]) -> list[float]:
    """The pairs' ``weight`` column rescaled to mean 1 over the whole dataset.

    The weighted loss is then ``mean(w_i * nll_i)`` over each micro-batch: a dataset-wide
    constant, not the batch's own sum of weights, so a ranking's share of the loss survives
    batching. (Dividing by the batch's sum cancels "per_ranking" whenever all rankings have
    the same K, since every pair then carries the same weight.) In expectation over batches
    the loss is ``sum(w_i * nll_i) / sum(w_i)`` over the dataset: each ranking counts once.
    """
    weights = [float(r.get("weight", 1.0)) for r in rows]
    mean = sum(weights) / len(weights) if weights else 1.0
    if not mean > 0:
        raise ValueError("pair weights must have a positive mean")
    return [w / mean for w in weights]


def weighted_preference_loss(diff, weight, margin=None):
    """``mean(weight * -log sigmoid(diff - margin))``: the Bradley-Terry loss with per-pair weights.

    diff = r(x, y_w) - r(x, y_l), weight and margin: ``(B,)`` tensors; ``weight`` comes from
    :func:`normalized_weights` (mean 1 over the dataset). Returns a scalar tensor.
    """
    import torch.nn.functional as F

    if margin is not None:
        diff = diff - margin
    return (weight * -F.logsigmoid(diff)).mean()


def _needs_weights(rows: Sequence[dict]) -> bool:
    return any(float(r.get("weight", 1.0)) != 1.0 for r in rows)


# --- model loading --------------------------------------------------------------------------


def _zero_dropout(config) -> None:
    """Set every dropout probability in a (possibly nested) model config to 0."""
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        for name, value in list(vars(cfg).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(cfg, name, 0.0)


def load_reward_model(checkpoint: str | os.PathLike, *, dtype=None):
    """(model, tokenizer) from a checkpoint directory, ready to train or score.

    Any causal LM or sequence-classification checkpoint works: the head is
    ``num_labels=1`` (randomly initialised when the checkpoint has none), dropout is
    off, the tokenizer has a pad token distinct from EOS and ``model.config.pad_token_id``
    is set to it (the head reads the reward at the last non-pad token).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    checkpoint = str(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    vocab_before = len(tokenizer)
    ensure_distinct_pad_token(tokenizer)
    if tokenizer.chat_template is None:
        raise ValueError(f"{checkpoint}: the tokenizer has no chat template; reward models need one.")

    config = AutoConfig.from_pretrained(checkpoint)
    _zero_dropout(config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, config=config, dtype=dtype or torch.float32
        )
    if len(tokenizer) != vocab_before:  # pragma: no cover - only for tokenizers without a spare pad token
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --- scoring --------------------------------------------------------------------------------


class RewardScorer:
    """Scores (conversation, response) pairs with a loaded reward model; keep one alive to reuse it."""

    def __init__(self, model, tokenizer, *, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, *, device=None, max_length: int | None = None):
        """Load a trained reward model directory (as written by :func:`train_reward_model`)."""
        model, tokenizer = load_reward_model(model_dir)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, max_length=max_length)

    def encode(self, conversation: Sequence[dict], response: str) -> list[int]:
        """Token ids of ``conversation + [assistant: response]``, exactly as TRL tokenises for training."""
        messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
        messages.append({"role": "assistant", "content": response})
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length :]  # the reward is read at the end: keep the end
        return list(ids)

    def score(
        self,
        conversations: Sequence[Sequence[dict]],
        responses: Sequence[str],
        batch_size: int = 8,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[float]:
        """Reward of each response after its conversation: N conversations, N responses -> N floats.

        Sequences are sorted by length and right-padded per batch: ``input_ids`` and
        ``attention_mask`` of shape (batch, max_len_in_batch); the model's logits
        (batch, 1) are the rewards. ``should_stop`` is polled between batches and
        raises :class:`TrainingCancelled`.
        """
        import torch

        if len(conversations) != len(responses):
            raise ValueError("conversations and responses must have the same length")
        encoded = [self.encode(c, r) for c, r in zip(conversations, responses, strict=True)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        pad_id = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        rewards = [0.0] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    if should_stop and should_stop():
                        raise TrainingCancelled("stopped while scoring")
                    idx = order[start : start + batch_size]
                    width = max(len(encoded[i]) for i in idx)
                    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                    attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for row, i in enumerate(idx):
                        input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                        attention_mask[row, : len(encoded[i])] = 1
                    logits = self.model(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        use_cache=False,
                    ).logits  # (batch, 1)
                    for row, i in enumerate(idx):
                        rewards[i] = float(logits[row, 0])
        finally:
            self.model.train(was_training)
        return rewards


class TrainingCancelled(Exception):
    """``should_stop()`` returned True."""


def score_responses(
    model_dir: str | os.PathLike | RewardScorer,
    conversations: Sequence[Sequence[dict]],
    responses: Sequence[str],
    batch_size: int = 8,
    *,
    max_length: int | None = None,
    device=None,
) -> list[float]:
    """Rewards r(conversation_i, response_i), one float each (N inputs -> list of N floats).

    ``model_dir`` is a reward-model directory or a :class:`RewardScorer` already loaded
    (pass one to avoid reloading in a loop, e.g. PPO or simulated annotators).
    """
    scorer = (
        model_dir
        if isinstance(model_dir, RewardScorer)
        else RewardScorer.from_pretrained(model_dir, device=device, max_length=max_length)
    )
    return scorer.score(conversations, responses, batch_size)


# --- evaluation -----------------------------------------------------------------------------


def _pair_stats(diffs: list[float], margins: list[float]) -> dict[str, float]:
    n = len(diffs)
    if n == 0:
        return {"pairs": 0, "accuracy": float("nan"), "mean_margin": float("nan"), "loss": float("nan")}

    def nll(x: float) -> float:  # -log sigmoid(x), stable
        return math.log1p(math.exp(-x)) if x > -30 else -x

    return {
        "pairs": n,
        "accuracy": sum(d > 0 for d in diffs) / n,
        "mean_margin": sum(diffs) / n,
        "loss": sum(nll(d) for d in diffs) / n,
        "loss_with_margin": sum(nll(d - m) for d, m in zip(diffs, margins, strict=True)) / n,
    }


def evaluate_reward_model(
    model: str | os.PathLike | RewardScorer,
    rows: Sequence[dict],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Held-out figures of a reward model on pair rows (``training.ml.pairs`` format).

    Returns ``{pairs, accuracy, accuracy_lower, accuracy_upper, prompts, mean_margin, loss,
    loss_with_margin, learned, by_round, by_source}``: accuracy is the share of pairs with
    r_chosen > r_rejected (a tie counts as wrong), with its 95% interval from
    :func:`training.ml.intervals.clustered_share_interval` over prompts (the pairs of one
    ranking share a prompt, so they are not independent); mean_margin the mean of
    r_chosen - r_rejected, loss the mean -log sigmoid(r_chosen - r_rejected) (ln 2 ~ 0.693
    at chance), loss_with_margin the same with each pair's margin subtracted. ``learned`` is
    True only when the interval lies above 0.5: a model whose interval includes chance has
    not been shown to learn. ``by_round`` and ``by_source`` map str(key) to
    ``{pairs, accuracy, mean_margin, loss, loss_with_margin}``.
    Each distinct (prompt, response) is scored once.
    """
    scorer = (
        model
        if isinstance(model, RewardScorer)
        else RewardScorer.from_pretrained(model, max_length=max_length)
    )
    keys: dict[str, int] = {}
    conversations, responses = [], []

    def key_of(prompt, response) -> int:
        k = json.dumps([prompt, response], sort_keys=True, ensure_ascii=False)
        if k not in keys:
            keys[k] = len(conversations)
            conversations.append(prompt)
            responses.append(response)
        return keys[k]

    index = [(key_of(r["prompt"], r["chosen"]), key_of(r["prompt"], r["rejected"])) for r in rows]
    rewards = scorer.score(conversations, responses, batch_size, should_stop=should_stop)
    diffs = [rewards[c] - rewards[rj] for c, rj in index]
    margins = [float(r.get("margin", 0.0)) for r in rows]

    result: dict[str, Any] = _pair_stats(diffs, margins)
    interval = clustered_share_interval(
        [float(d > 0) for d in diffs], [json.dumps(r["prompt"], sort_keys=True) for r in rows]
    )
    result["accuracy_lower"], result["accuracy_upper"] = interval["lower"], interval["upper"]
    result["prompts"] = interval["clusters"]
    result["learned"] = bool(result["pairs"]) and interval["lower"] > 0.5
    for name in ("round", "source"):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups["none" if r.get(name) is None else str(r[name])].append(i)
        result[f"by_{name}"] = {
            k: _pair_stats([diffs[i] for i in idx], [margins[i] for i in idx])
            for k, idx in sorted(groups.items())
        }
    return result


# --- training -------------------------------------------------------------------------------


def _trainer_class():
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    @dataclass
    class PreferenceCollator(DataCollatorForPreference):
        """TRL's collator plus an optional per-pair ``weight`` tensor of shape (batch,)."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            if "weight" in examples[0]:
                out["weight"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float)
            return out

    class TandemRewardTrainer(RewardTrainer):
        """RewardTrainer that counts pairs, keeps a `length` column for length grouping, and weighs pairs."""

        pairs_seen = 0

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight", "length"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # inputs: input_ids/attention_mask (2B, T), chosen rows first; margin, weight (B,)
            if self.model.training:
                self.pairs_seen += inputs["input_ids"].shape[0] // 2
            weight = inputs.pop("weight", None)
            if weight is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            _, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)  # metrics, one forward
            rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = weighted_preference_loss(rewards_chosen - rewards_rejected, weight, inputs.get("margin"))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean(
                    (rewards_chosen + rewards_rejected) ** 2
                )
            return (loss, outputs) if return_outputs else loss

    return TandemRewardTrainer, PreferenceCollator


def _use_bf16(config: RewardModelConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def build_reward_trainer(
    model,
    tokenizer,
    train_rows: Sequence[dict],
    eval_rows: Sequence[dict] | None,
    config: RewardModelConfig,
    work_dir: str,
    callbacks: list | None = None,
):
    """A configured TRL ``RewardTrainer`` (Tandem subclass) over pair rows; nothing is trained yet."""
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig

    trainer_cls, collator_cls = _trainer_class()
    use_weights = config.use_weights and _needs_weights(train_rows)
    train_dataset = to_trl_dataset(train_rows, use_margin=config.use_margin, use_weights=use_weights)
    eval_dataset = None
    if config.eval_steps and eval_rows:
        eval_dataset = to_trl_dataset(eval_rows, use_margin=config.use_margin, use_weights=use_weights)
    args = RewardConfig(
        output_dir=work_dir,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(1, config.eval_batch_size // 2),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        center_rewards_coefficient=config.center_rewards_coefficient,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        lr_scheduler_type=config.lr_scheduler_type,
        max_grad_norm=config.max_grad_norm,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        activation_checkpointing=config.gradient_checkpointing,
        bf16=_use_bf16(config),
        logging_steps=config.logging_steps,
        eval_strategy="steps" if eval_dataset is not None else "no",
        eval_steps=config.eval_steps if eval_dataset is not None else None,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        disable_dropout=True,
        dataloader_pin_memory=False,
    )
    collator = collator_cls(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)
    trainer = trainer_cls(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # metrics go to the hooks, not to stdout
    if config.group_by_length:
        trainer.train_dataset = trainer.train_dataset.map(
            lambda batch: {
                "length": [
                    max(len(c), len(r))
                    for c, r in zip(batch["chosen_ids"], batch["rejected_ids"], strict=True)
                ]
            },
            batched=True,
        )
    return trainer


def train_reward_model(
    train_rows: Sequence[dict],
    eval_rows: Sequence[dict] | None,
    base_checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: RewardModelConfig | None = None,
    hooks: TrainingHooks | None = None,
    *,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a Bradley-Terry reward model from ``base_checkpoint`` and write it to ``out_dir``.

    ``train_rows``/``eval_rows`` are pair rows (``training.ml.pairs``); with
    ``eval_rows=None`` the held-out pairs are split off by prompt
    (``config.eval_fraction``, ``config.seed``). Each micro-batch is
    ``input_ids``/``attention_mask`` of shape (2 x batch_size, T) (chosen rows first)
    and the head yields rewards of shape (2 x batch_size, 1).

    ``out_dir`` is written atomically (temporary sibling, renamed when complete) and
    holds the model, the tokenizer and ``tandem_reward.json`` (these results plus
    ``metadata``, e.g. the snapshot's ``snapshot_metadata``). A cancelled run writes
    nothing. Returns::

        {"status": "completed" | "cancelled", "model_dir": str | None,
         "base_checkpoint": str, "steps": int, "total_steps": int,
         "train": {"pairs", "pairs_dropped_too_long", "pairs_seen", "epochs", "loss",
                   "runtime_s", "pairs_per_s"},
         "eval": evaluate_reward_model(...) | None, "config": {...}}
    """
    from transformers import set_seed

    config = config or RewardModelConfig()
    hooks = hooks or TrainingHooks()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; checkpoints are never overwritten.")
    if eval_rows is None:
        train_rows, eval_rows = split_by_prompt(train_rows, config.eval_fraction, config.seed)
    if not train_rows:
        raise ValueError("no training pairs")

    set_seed(config.seed)  # before loading: the new head is initialised at random
    work_dir = tempfile.mkdtemp(prefix="tandem-rm-")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work_dir, ignore_errors=True)
        cleanup.enter_context(quiet_progress_bars())
        model, tokenizer = load_reward_model(base_checkpoint)
        train_top_layers_only(model, config.trainable_layers)
        callback = hooks_callback(hooks)
        trainer = build_reward_trainer(model, tokenizer, train_rows, eval_rows, config, work_dir, [callback])
        started = time.perf_counter()
        output = trainer.train()
        runtime = time.perf_counter() - started
        state = trainer.state
        results: dict[str, Any] = {
            "status": "cancelled" if callback.stopped else "completed",
            "model_dir": None,
            "base_checkpoint": str(base_checkpoint),
            "steps": state.global_step,
            "total_steps": state.max_steps,
            "train": {
                "pairs": len(trainer.train_dataset),
                "pairs_dropped_too_long": len(train_rows) - len(trainer.train_dataset),
                "pairs_seen": trainer.pairs_seen,
                "epochs": state.epoch,
                "loss": output.training_loss,
                "runtime_s": runtime,
                "pairs_per_s": trainer.pairs_seen / runtime if runtime > 0 else float("nan"),
            },
            "eval": None,
            "config": asdict(config),
        }
        if callback.stopped:
            return results

        if eval_rows and trainer.is_world_process_zero():
            scorer = RewardScorer(trainer.model, tokenizer, max_length=config.max_length)
            try:
                results["eval"] = evaluate_reward_model(
                    scorer,
                    eval_rows,
                    batch_size=config.eval_batch_size,
                    should_stop=hooks.should_stop,
                )
            except TrainingCancelled:
                results["status"] = "cancelled"
                return results
            if hooks.on_metrics:
                e = results["eval"]
                hooks.on_metrics(
                    state.global_step,
                    {
                        "eval/accuracy": e["accuracy"],
                        "eval/mean_margin": e["mean_margin"],
                        "eval/loss": e["loss"],
                    },
                )
        results["model_dir"] = str(out_dir)
        _save(trainer, out_dir, {**results, "metadata": metadata or {}})
        return results


def _finish_directory(tmp: Path, record: dict) -> None:
    """Add the results file, drop the pickled TrainingArguments, make files readable by other workers."""
    (tmp / "training_args.bin").unlink(missing_ok=True)
    (tmp / RESULTS_FILE).write_text(json.dumps(record, indent=2, default=str))
    for file in tmp.iterdir():  # safetensors writes 0600 files; the web process may run as another user
        if file.is_file():
            os.chmod(file, 0o644)


def _save(trainer, out_dir: Path, record: dict) -> None:
    """Write model + tokenizer + ``tandem_reward.json`` to ``out_dir``, atomically."""
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        with atomic_directory(out_dir) as tmp:
            trainer.save_model(str(tmp))
            pause_between_files(tmp)
            _finish_directory(tmp, record)
        return
    # Several processes: every rank takes part in gathering sharded weights (FSDP/DeepSpeed),
    # rank 0 writes them to a staging directory, then moves them into place atomically.
    staging = out_dir.parent / f".staging-{out_dir.name}"
    trainer.save_model(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_directory(out_dir) as tmp:
            for item in staging.iterdir():
                shutil.move(str(item), tmp / item.name)
            pause_between_files(tmp)
            _finish_directory(tmp, record)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.ml.reward --config run.json`` (or under ``accelerate launch``).

    run.json::

        {"train_pairs": "train.jsonl",          # pair rows, one JSON object a line
         "eval_pairs": "eval.jsonl" | null,     # null: split train by prompt
         "base_checkpoint": "path/to/checkpoint",
         "out_dir": "path/to/new/reward-model", # must not exist
         "reward": {...RewardModelConfig fields...},
         "results_path": "results.json",        # optional: the results dict
         "metrics_path": "metrics.jsonl",       # optional: {"step", "metrics"} | {"step", "total"} lines
         "stop_file": "STOP",                   # optional: the run cancels when this file appears
         "metadata": {...}}                     # optional: copied into tandem_reward.json
    """
    from training.ml.pairs import read_snapshot_jsonl

    parser = argparse.ArgumentParser(description="Train a Bradley-Terry reward model on preference pairs.")
    parser.add_argument("--config", required=True, help="run description (JSON), see the module docs")
    run = json.loads(Path(parser.parse_args(argv).config).read_text())

    metrics_path = run.get("metrics_path")
    stop_file = run.get("stop_file")

    def append(record: dict) -> None:
        with open(metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    hooks = TrainingHooks(
        on_metrics=(lambda step, m: append({"step": step, "metrics": m})) if metrics_path else None,
        on_progress=(lambda step, total: append({"step": step, "total": total})) if metrics_path else None,
        should_stop=(lambda: os.path.exists(stop_file)) if stop_file else None,
    )
    results = train_reward_model(
        read_snapshot_jsonl(run["train_pairs"]),
        read_snapshot_jsonl(run["eval_pairs"]) if run.get("eval_pairs") else None,
        run["base_checkpoint"],
        run["out_dir"],
        RewardModelConfig.from_dict(run.get("reward", {})),
        hooks,
        metadata=run.get("metadata"),
    )
    if run.get("results_path") and int(os.environ.get("RANK", "0")) == 0:
        Path(run["results_path"]).write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: results[k] for k in ("status", "model_dir", "steps")} | {"eval": results["eval"]}))
    return 0 if results["status"] in ("completed", "cancelled") else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Direct preference optimisation: the preferences go straight into the policy, no reward model, no sampling.

Training is TRL's ``DPOTrainer`` (sigmoid, IPO, the robust and conservative variants
through ``label_smoothing``, hinge, APO-zero); this module only turns Tandem's pair rows
(``training.ml.pairs``) into TRL's conversational preference format, wires the hooks
(progress, metrics, cancel; ``training.ml.hooks``), keeps a resumable state and writes
the policy atomically. The reference model is the policy the run starts from.

The one thing TRL does not do is the held-out evaluation Tandem reports for every
model: :func:`evaluate_dpo` reads each held-out pair's implicit reward margin

    beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)))

and gives the preference accuracy (ties count half, so the starting policy scores 0.5)
with a 95% interval clustered by prompt, the same interval as the reward model's.

No torch at import: the web process imports :class:`DPOConfig` to check launches.
TRL 1.16's DPO losses take no per-pair margin, so a pair's strength is not used here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from training.ml.checkpoints import atomic_directory, pause_between_files, train_top_layers_only
from training.ml.hooks import TrainingHooks, hooks_callback, quiet_progress_bars
from training.ml.intervals import clustered_share_interval

RESULTS_FILE = "tandem_dpo.json"
LossType = Literal["sigmoid", "ipo", "robust", "hinge", "apo_zero", "sppo_hard", "nca_pair"]


@dataclass
class DPOConfig:
    """DPO settings. Defaults finish on SmolLM2-135M on 2 CPU cores in minutes for a few hundred pairs."""

    beta: float = field(
        default=0.1,
        metadata={"help": "Strength of the pull back to the reference policy (IPO: its regulariser)."},
    )
    loss_type: LossType = field(
        default="sigmoid",
        metadata={
            "help": "sigmoid: DPO; ipo: IPO; robust: robust DPO (with label_smoothing); hinge: SLiC; "
            "apo_zero, sppo_hard, nca_pair: TRL's other pairwise losses."
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Assumed share of flipped labels: conservative DPO with sigmoid, robust DPO with robust."
        },
    )
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak AdamW learning rate."})
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many optimizer steps (overrides num_epochs when > 0)."}
    )
    batch_size: int = field(default=4, metadata={"help": "Pairs per device per micro-batch."})
    gradient_accumulation_steps: int = field(
        default=2, metadata={"help": "Micro-batches per optimizer step; effective batch = batch_size x this."}
    )
    max_length: int | None = field(
        default=512, metadata={"help": "Tokens of prompt plus answer kept (TRL truncates the rest)."}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of prompts held out when no eval rows are given."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Pairs per forward pass when evaluating."})
    seed: int = field(default=0, metadata={"help": "Seed for data order and the held-out split."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps for linear warm-up."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    trainable_layers: int | None = field(
        default=None,
        metadata={"help": "Train only the top this-many transformer layers (plus the head); None: all."},
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Score the pairs with the reference once before training (one model in memory)."},
    )
    save_every: int = field(
        default=20,
        metadata={"help": "Optimizer steps between resumable states (0: never; a retry restarts)."},
    )
    logging_steps: int = field(default=1, metadata={"help": "Push averaged metrics every this many steps."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; None: on when a CUDA GPU supports it."}
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPOConfig:
        """Build from JSON data, refusing unknown keys (a typo must not pass silently)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown DPOConfig fields: {sorted(unknown)}")
        return cls(**data)

    def errors(self) -> dict[str, list[str]]:
        """Problems across fields, keyed by field (the bounds of single values are in run_configs)."""
        problems: dict[str, list[str]] = {}
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust"):
            problems["label_smoothing"] = ["Only the sigmoid (conservative) and robust losses use it."]
        if self.loss_type == "robust" and not 0 < self.label_smoothing < 0.5:
            problems["label_smoothing"] = ["Robust DPO needs a share of flipped labels between 0 and 0.5."]
        return problems


# --- data ---------------------------------------------------------------------------------------


def to_dpo_dataset(rows: Sequence[dict]):
    """Pair rows as TRL's conversational preference dataset: prompt, chosen and rejected messages."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [[{"role": m["role"], "content": m["content"]} for m in r["prompt"]] for r in rows],
            "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
            "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
        }
    )


# --- evaluation ---------------------------------------------------------------------------------


def _answer_tokens(tokenizer, conversation: Sequence[dict], answer: str) -> tuple[list[int], int]:
    """(ids of prompt + answer as the chat template writes them, where the answer starts)."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in conversation]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    full_ids = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": answer}], tokenize=True
    )
    prompt_ids = list(getattr(prompt_ids, "input_ids", prompt_ids))
    full_ids = list(getattr(full_ids, "input_ids", full_ids))
    return full_ids, len(prompt_ids)


def answer_log_probs(model, tokenizer, items: Sequence[tuple[Sequence[dict], str]], *, batch_size: int = 8):
    """Sum of log p(answer tokens | prompt) for each (conversation, answer), as DPO scores them."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    totals: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            encoded = [_answer_tokens(tokenizer, c, a) for c, a in items[start : start + batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            attention = torch.zeros((len(encoded), width), dtype=torch.long)
            answer_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
            for row, (ids, answer_start) in enumerate(encoded):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                answer_mask[row, answer_start : len(ids)] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = input_ids[:, 1:].to(device)
            picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            totals.extend((picked * answer_mask[:, 1:].to(device)).sum(dim=1).tolist())
    return totals


def evaluate_dpo(policy, reference, tokenizer, rows: Sequence[dict], *, beta: float, batch_size: int = 8):
    """Held-out preference accuracy of a DPO policy against its reference, with a 95% interval by prompt.

    Returns ``{"pairs", "prompts", "accuracy", "accuracy_lower", "accuracy_upper",
    "mean_margin", "chosen_log_ratio", "rejected_log_ratio"}``: the margin is the implicit
    reward margin (in units of beta), the log ratios are per pair, averaged.
    """
    items = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    policy_lp = answer_log_probs(policy, tokenizer, items, batch_size=batch_size)
    reference_lp = answer_log_probs(reference, tokenizer, items, batch_size=batch_size)
    n = len(rows)
    chosen_ratio = [policy_lp[i] - reference_lp[i] for i in range(n)]
    rejected_ratio = [policy_lp[n + i] - reference_lp[n + i] for i in range(n)]
    margins = [beta * (c - r) for c, r in zip(chosen_ratio, rejected_ratio, strict=True)]
    outcomes = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
    interval = clustered_share_interval(outcomes, [r["prompt_id"] for r in rows])
    return {
        "pairs": n,
        "prompts": interval["clusters"],
        "accuracy": interval["share"],
        "accuracy_lower": interval["lower"],
        "accuracy_upper": interval["upper"],
        "mean_margin": sum(margins) / n if n else math.nan,
        "chosen_log_ratio": sum(chosen_ratio) / n if n else math.nan,
        "rejected_log_ratio": sum(rejected_ratio) / n if n else math.nan,
    }


# --- training -----------------------------------------------------------------------------------


def latest_state(state_dir: str | os.PathLike | None) -> str | None:
    """The newest resumable state the Trainer saved in ``state_dir``, or None."""
    if state_dir is None or not Path(state_dir).is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(state_dir))


def _use_bf16(config: DPOConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def train_dpo(
    train_rows: Sequence[dict],
    eval_rows: Sequence[dict] | None,
    policy_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: DPOConfig | None = None,
    hooks: TrainingHooks | None = None,
    *,
    state_dir: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """DPO from the policy at ``policy_path`` (also the reference) on pair rows; writes the new policy.

    With ``state_dir`` the Trainer saves a resumable state every ``config.save_every``
    steps and a second call continues from the newest one. ``out_dir`` is written
    atomically (model, tokenizer, ``tandem_dpo.json``); a cancelled run writes nothing
    there. Returns ``{"status": "completed" | "cancelled", "model_dir", "steps",
    "total_steps", "resumed_from", "train": {...}, "eval": evaluate_dpo(...) | None,
    "config": {...}}``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from training.ml.pairs import split_by_prompt

    config = config or DPOConfig()
    hooks = hooks or TrainingHooks()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; checkpoints are never overwritten.")
    if eval_rows is None:
        train_rows, eval_rows = split_by_prompt(train_rows, config.eval_fraction, config.seed)
    if not train_rows:
        raise ValueError("no training pairs")

    set_seed(config.seed)
    scratch = tempfile.mkdtemp(prefix="tandem-dpo-")
    try:
        with quiet_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(policy_path))
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(str(policy_path))
            train_top_layers_only(model, config.trainable_layers)
            saving = bool(state_dir and config.save_every)
            args = TRLDPOConfig(
                output_dir=str(state_dir) if saving else scratch,
                beta=config.beta,
                loss_type=[config.loss_type],
                label_smoothing=config.label_smoothing,
                learning_rate=config.learning_rate,
                num_train_epochs=config.num_epochs,
                max_steps=config.max_steps,
                per_device_train_batch_size=config.batch_size,
                gradient_accumulation_steps=config.gradient_accumulation_steps,
                max_length=config.max_length,
                seed=config.seed,
                data_seed=config.seed,
                warmup_steps=config.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
                lr_scheduler_type=config.lr_scheduler_type,
                max_grad_norm=config.max_grad_norm,
                precompute_ref_log_probs=config.precompute_ref_log_probs,
                bf16=_use_bf16(config),
                logging_steps=config.logging_steps,
                save_strategy="steps" if saving else "no",
                save_steps=config.save_every or 500,
                save_total_limit=1,
                save_only_model=False,
                report_to="none",
                disable_tqdm=True,
                dataloader_pin_memory=False,
            )
            callback = hooks_callback(hooks)
            trainer = DPOTrainer(
                model=model,
                args=args,
                train_dataset=to_dpo_dataset(train_rows),
                processing_class=tokenizer,
                callbacks=[callback],
            )
            trainer.remove_callback(PrinterCallback)
            resumed_from = latest_state(state_dir) if saving else None
            started = time.perf_counter()
            output = trainer.train(resume_from_checkpoint=resumed_from)
            runtime = time.perf_counter() - started
            state = trainer.state
            results: dict[str, Any] = {
                "status": "cancelled" if callback.stopped else "completed",
                "model_dir": None,
                "policy_path": str(policy_path),
                "steps": state.global_step,
                "total_steps": state.max_steps,
                "resumed_from": Path(resumed_from).name if resumed_from else None,
                "train": {
                    "pairs": len(train_rows),
                    "epochs": state.epoch,
                    "loss": output.training_loss,
                    "runtime_s": runtime,
                },
                "eval": None,
                "config": asdict(config),
            }
            if callback.stopped:
                return results
            if eval_rows:
                reference = AutoModelForCausalLM.from_pretrained(str(policy_path))
                results["eval"] = evaluate_dpo(
                    trainer.model,
                    reference,
                    tokenizer,
                    eval_rows,
                    beta=config.beta,
                    batch_size=config.eval_batch_size,
                )
                del reference
                if hooks.on_metrics:
                    e = results["eval"]
                    hooks.on_metrics(
                        state.global_step,
                        {"eval/accuracy": e["accuracy"], "eval/mean_margin": e["mean_margin"]},
                    )
            results["model_dir"] = str(out_dir)
            with atomic_directory(out_dir) as tmp:
                trainer.model.save_pretrained(tmp)
                pause_between_files(tmp)
                tokenizer.save_pretrained(tmp)
                (tmp / RESULTS_FILE).write_text(
                    json.dumps({**results, "metadata": metadata or {}}, indent=2, default=str)
                )
            return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

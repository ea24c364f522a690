"""PPO's hyperparameters, in a module of their own that imports no torch.

The web process checks run configs at launch (``training.run_configs``) against this
dataclass; ``training.ml.ppo`` imports torch, which the web process never loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class PPOConfig:
    """Hyperparameters of one PPO run. Defaults follow the last TRL PPOConfig (1.12)."""

    # Optimisation
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate (policy and value)."})
    anneal_lr: bool = field(
        default=True, metadata={"help": "Decay the learning rate linearly to 0 over the run (TRL default)."}
    )
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clip the global gradient norm to this value; None: no clipping."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for sampling, prompt order and initialisation."})

    # Batch sizes and length of the run
    total_episodes: int = field(
        default=1024, metadata={"help": "Responses to sample over the whole run (all processes together)."}
    )
    batch_size: int = field(
        default=16, metadata={"help": "Responses sampled per update on each process (the rollout batch)."}
    )
    mini_batch_size: int = field(
        default=4, metadata={"help": "Responses per optimiser step; must divide batch_size."}
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Most sequences in one forward pass (gradient accumulation inside a minibatch, "
            "and chunks of rollout scoring); None: mini_batch_size."
        },
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})

    # Sampling
    response_length: int = field(default=53, metadata={"help": "Most tokens sampled per response."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Longer prompts keep their last max_prompt_length tokens."}
    )
    temperature: float = field(
        default=0.7,
        metadata={"help": "Sampling temperature; log-probs are computed from logits divided by it too."},
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the (normalised) score of a response that never reaches EOS."},
    )

    # Reward shaping
    kl_coef: float = field(
        default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."}
    )
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={
            "help": "KL estimator: 'k1' = log(pi/ref); 'k3' = (ref/pi - 1) - log(ref/pi), lower variance."
        },
    )
    kl_target: float | None = field(
        default=None,
        metadata={
            "help": "Adaptive KL controller (Ziegler et al. 2019): steer kl_coef so that the per-response KL "
            "approaches this value; None: kl_coef stays fixed."
        },
    )
    kl_horizon: int = field(
        default=10000, metadata={"help": "Episodes over which the adaptive controller corrects kl_coef."}
    )
    normalize_reward: bool = field(
        default=True,
        metadata={"help": "Rescale scores so that the reference policy's responses score mean 0, std 1."},
    )
    reward_norm_samples: int = field(
        default=128,
        metadata={"help": "Reference responses sampled (per process) to estimate the score's mean and std."},
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten the per-token rewards (keeping their mean) before GAE."}
    )

    # PPO
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})

    # Models
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint the value model starts from (a sequence-classification model); None: the "
            "reward model when the reward is a path, else the policy with a fresh scalar head."
        },
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train only the top this-many transformer layers of the policy and the value model "
            "(plus final norm and heads); None: whole models. Ignored with use_lora."
        },
    )
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters (needs peft); the reference is the policy with adapters off."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules that get LoRA adapters (peft target_modules)."}
    )

    # Checkpoints
    save_every: int = field(
        default=0, metadata={"help": "Write a resumable state every this many updates; 0: never."}
    )
    keep_states: int = field(default=2, metadata={"help": "Resumable states kept on disk (oldest removed)."})

    def __post_init__(self) -> None:
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', not {self.kl_estimator!r}.")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (PPO needs a sampling distribution).")
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size {self.mini_batch_size} must divide batch_size {self.batch_size}."
            )
        if self.micro_batch_size is not None and self.mini_batch_size % self.micro_batch_size:
            raise ValueError("micro_batch_size must divide mini_batch_size.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PPOConfig:
        """Build a config from a dict, refusing unknown keys (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown PPOConfig fields: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

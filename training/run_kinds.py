"""Every kind of training run, in one place: its title, its task, what its config holds, what it makes.

Adding an algorithm is one :class:`RunKind` entry here, one task in ``training/tasks.py``
that calls its service, and its pure function in ``training/ml/``. Everything else reads
this registry: the launch services (``training.launch``), the bounds every config is
checked against at launch (``training.run_configs``), the API's choice of kinds, the
dashboard's titles, and the queue (``training.runs.enqueue`` sends a run's task by name,
so no module that enqueues imports the tasks).

No torch here: the web process imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from training.ml.dpo import DPOConfig
from training.ml.pairs import PairOptions
from training.ml.ppo_config import PPOConfig
from training.ml.reward import RewardModelConfig
from training.models import TrainingRun
from training.round_config import RoundConfig

Kind = TrainingRun.Kind
RESUMES = "A retry resumes from the state it saved (a killed worker loses at most one save interval)."


@dataclass(frozen=True)
class RunKind:
    kind: str  # TrainingRun.Kind value, stored on the row
    slug: str  # the dashboard's launch URL: /dashboard/projects/<id>/launch/<slug>/
    title: str  # what the launch button and the page say
    blurb: str  # one sentence under the title
    task: str  # the Celery task that carries it out; CELERY_TASK_ROUTES picks the queue
    # Top-level settings of its config, each checked by name (training.run_configs.SETTING_CHECKS).
    settings: tuple[str, ...] = ()
    # Sections of its config, each the fields of one typed dataclass with help text.
    sections: Mapping[str, type] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # what a succeeded run leaves: "reward_model", "checkpoint", "round"
    launched_directly: bool = True  # by training.launch.run_start (a round is opened by round_open)
    retry: str = RESUMES


ACCELERATE = ("num_processes", "accelerate_config")

RUN_KINDS: Mapping[str, RunKind] = MappingProxyType(
    {
        entry.kind: entry
        for entry in (
            RunKind(
                kind=Kind.GENERATE,
                slug="round",
                title="Open a round",
                blurb="Sample responses from the chosen checkpoints for a fresh set of prompts, "
                "then hand the comparisons to annotators.",
                task="training.tasks.generate_round",
                sections={"round": RoundConfig},
                outputs=("round",),
                launched_directly=False,
                retry="A retry generates only the responses still missing; saved ones stay.",
            ),
            RunKind(
                kind=Kind.REWARD_MODEL,
                slug="reward-model",
                title="Train a reward model",
                blurb="Fit a Bradley–Terry reward model to the project's judgments so far.",
                task="training.tasks.train_reward_model",
                settings=("base_checkpoint_id", "filters", *ACCELERATE),
                sections={"training": RewardModelConfig, "pairs": PairOptions},
                outputs=("reward_model",),
            ),
            RunKind(
                kind=Kind.PPO,
                slug="ppo",
                title="Run PPO",
                blurb="Improve a policy checkpoint with PPO against a reward model, kept close to "
                "where it started by a KL penalty.",
                task="training.tasks.train_ppo",
                settings=(
                    "policy_checkpoint_id",
                    "reward_model_id",
                    "train_policy_anyway",
                    "auto_publish",
                    *ACCELERATE,
                ),
                sections={"training": PPOConfig, "round": RoundConfig},
                outputs=("checkpoint",),
            ),
            RunKind(
                kind=Kind.DPO,
                slug="dpo",
                title="Run DPO",
                blurb="Improve a policy checkpoint straight from the judgments, with no reward model "
                "and no sampling; the checkpoint it starts from is also its reference.",
                task="training.tasks.train_dpo",
                settings=("policy_checkpoint_id", "filters", "auto_publish"),  # one process for now
                sections={"training": DPOConfig, "pairs": PairOptions, "round": RoundConfig},
                outputs=("checkpoint",),
            ),
            RunKind(
                kind=Kind.LOOP,
                slug="loop",
                title="Run the full loop",
                blurb="Reward model on the judgments so far, then PPO against it; the new checkpoint "
                "is published when you ask, ready for a round against its parent.",
                task="training.tasks.run_loop",
                settings=(
                    "base_checkpoint_id",
                    "filters",
                    "open_next_round",
                    "train_policy_anyway",
                    "algorithm",
                    *ACCELERATE,
                ),
                sections={
                    "reward_model": RewardModelConfig,
                    "ppo": PPOConfig,
                    "dpo": DPOConfig,
                    "pairs": PairOptions,
                    "round": RoundConfig,
                },
                outputs=("reward_model", "checkpoint", "round"),
            ),
        )
    }
)

# Launched by training.launch.run_start, from the dashboard, the API and the command line.
LAUNCHABLE = tuple(kind for kind, entry in RUN_KINDS.items() if entry.launched_directly)
BY_SLUG: Mapping[str, RunKind] = MappingProxyType({entry.slug: entry for entry in RUN_KINDS.values()})


def run_kind(kind: str) -> RunKind:
    """The registry entry of ``kind``; a KeyError names the kinds that exist."""
    try:
        return RUN_KINDS[kind]
    except KeyError:
        raise KeyError(f"No run kind {kind!r} (known: {', '.join(RUN_KINDS)}).") from None

"""One whole loop through the product's own paths, on the real SmolLM2-135M-Instruct, on the CPU.

Shared by the slow test (``tests/training/test_loop_smollm2.py``) and the loop-efficacy
benchmark (``tests/benchmarks/loop_efficacy.py``), so the figures the benchmark prints are
the figures of the code the test holds to account.

The scenario: round 1 opens on the training prompts (K-wise, K = 4: a ranking of four
answers gives C(4, 2) = 6 pairs per judgment); simulated annotators following a rule rank
them through ``judgment_submit``; the loop run builds the preference snapshot, trains the
Bradley-Terry reward model, runs PPO against it and publishes the policy, which opens
round 2 (pairwise, new vs old on the evaluation prompts); three simulated annotators with
the same rule judge it, and the new policy's win rate over its parent is read with an
interval clustered by comparison.

Controls: ``labels="shuffled"`` has round 1 ranked at random (the labels carry no
information), so round 2's interval must contain 0.5; ``missing_eos_penalty`` set shows
whether a win depends on PPO's built-in push towards short answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

TRAIN_QUESTIONS = [
    "Why is the sky blue?",
    "What is the opposite of hot?",
    "How do I boil an egg?",
    "What is 7 times 8?",
    "What is a tuple in Python?",
    "What colour is a ripe banana?",
    "Give me a tip for sleeping better.",
    "What is the capital of France?",
    "Why do leaves change colour in autumn?",
    "How many legs does a spider have?",
    "How do plants drink water?",
    "What do bees make?",
    "What is gravity?",
    "Is a tomato a fruit?",
    "How can I learn to cook?",
    "What is the largest ocean?",
    "Why do we need sleep?",
    "Name a primary colour.",
    "How does a bicycle stay upright?",
    "What sound does a cat make?",
    "What is a good way to save money?",
    "What is frozen water called?",
    "How do airplanes fly?",
    "Which planet is closest to the Sun?",
    "What is photosynthesis?",
    "How do I make friends in a new city?",
    "What is the boiling point of water?",
    "Why do we dream?",
    "What is a prime number?",
    "How do I tie a tie?",
    "What is the tallest mountain on Earth?",
    "How does a refrigerator keep food cold?",
    "What is the difference between weather and climate?",
    "How do I start running?",
    "What is an atom?",
    "Why do onions make you cry?",
    "What is a noun?",
    "How do I care for a cactus?",
    "What is the speed of light?",
    "Why is reading good for you?",
    "How do bats find their way in the dark?",
    "What is a list in Python?",
    "How do I wash a wool sweater?",
    "What language is spoken in Brazil?",
    "What is inflation?",
    "How do I write a thank-you note?",
    "Why do stars twinkle?",
    "What does a heart do?",
]
# Round 2 compares the new policy with its parent on these (never seen in training).
EVAL_QUESTIONS = [
    "What causes rain?",
    "How do I make a cup of tea?",
    "What is a computer?",
    "Why do cats purr?",
    "How can I be more productive?",
    "What is the Moon made of?",
    "How do magnets work?",
    "What is a healthy breakfast?",
    "Why is exercise good for you?",
    "How do fish breathe?",
    "What is electricity?",
    "How do I plant a tree?",
    "What is a volcano?",
    "Why do birds migrate?",
    "How does the internet work?",
    "What is a dictionary in Python?",
    "How do I stay calm before an exam?",
    "What are clouds made of?",
    "Why is the ocean salty?",
    "How do vaccines work?",
    "What is a black hole?",
    "How do I write a good email?",
    "Why do we have seasons?",
    "What makes a good friend?",
    "How do I keep houseplants alive?",
    "What is a rainbow?",
    "Why do we yawn?",
    "How does a compass work?",
    "What is a function in Python?",
    "How do I make pancakes?",
    "Why is the grass green?",
    "What is an earthquake?",
    "How do I learn a new language?",
    "What do pandas eat?",
    "How does soap clean things?",
    "What is recycling?",
    "Why do we need water?",
    "How do I fix a flat bicycle tyre?",
    "What is a galaxy?",
    "How can I sleep on a long flight?",
    "What is democracy?",
    "Why do dogs wag their tails?",
    "How do solar panels work?",
    "What is a habit?",
    "How do I plan a small garden?",
    "What is the water cycle?",
    "Why do we celebrate birthdays?",
    "How does a camera take a picture?",
]


@dataclass
class LoopSettings:
    """Everything one loop run depends on; the benchmark and the slow test differ only here."""

    rule: str = "longer"
    seed: int = 0
    labels: str = "rule"  # "rule" | "shuffled" (round 1 ranked at random: the control)
    k: int = 4
    noise: float = 0.1  # share of rankings given at random (a tired annotator)
    train_questions: list[str] = field(default_factory=lambda: list(TRAIN_QUESTIONS[:40]))
    eval_questions: list[str] = field(default_factory=lambda: list(EVAL_QUESTIONS))
    # Brief answers: three in four end on their own within 48 tokens (against 15% without), so
    # lengths differ for real and the annotators judge finished answers, not truncations.
    prompt_suffix: str = " Answer in one or two sentences."
    round_1: dict[str, Any] = field(
        default_factory=lambda: {
            "split": "train",
            "temperature": 1.0,
            "top_p": 0.95,
            "max_new_tokens": 48,
            "batch_size": 16,
            "device": "cpu",
        }
    )
    # One epoch at 2e-4: held-out accuracy 0.90 [0.80, 0.97] against 0.88 [0.78, 0.95] for two
    # epochs at 1e-4 (rule longer, seed 0), in half the CPU time (192 s against 374 s).
    reward_model: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 2e-4,
            "num_epochs": 1,
            "batch_size": 8,
            "trainable_layers": 8,
            "max_length": 192,
            "eval_fraction": 0.25,
            "eval_batch_size": 16,
        }
    )
    ppo: dict[str, Any] = field(
        default_factory=lambda: {
            "total_episodes": 96,
            "batch_size": 16,
            "mini_batch_size": 8,
            "num_ppo_epochs": 1,
            "response_length": 40,
            "temperature": 0.9,
            "learning_rate": 1e-4,
            "trainable_layers": 8,
            "anneal_lr": False,
            "kl_coef": 0.05,
            "missing_eos_penalty": None,
            "reward_norm_samples": 16,
            "max_prompt_length": 64,
        }
    )
    # Round 2 compares the policies' typical answers (temperature 0.5) on all 48 unseen prompts:
    # at 0.8 on 24 the sampling noise alone spread the win rate's interval over +-0.18.
    round_2: dict[str, Any] = field(
        default_factory=lambda: {"max_new_tokens": 64, "temperature": 0.5, "batch_size": 16, "device": "cpu"}
    )
    judges_round_2: int = 3
    algorithm: str = "ppo"  # "ppo": reward model then PPO; "dpo": DPO straight from the judgments
    dpo: dict[str, Any] = field(
        default_factory=lambda: {
            "learning_rate": 5e-5,
            "beta": 0.1,
            "num_epochs": 1,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "trainable_layers": 8,
            "max_length": 192,
            "eval_fraction": 0.25,
            "save_every": 0,
        }
    )

    def with_seed(self) -> LoopSettings:
        """The same settings with the seed written into every stage that samples."""
        copy = dataclasses.replace(self)
        copy.round_1 = {**self.round_1, "seed": self.seed}
        copy.reward_model = {**self.reward_model, "seed": self.seed}
        copy.ppo = {**self.ppo, "seed": self.seed}
        copy.dpo = {**self.dpo, "seed": self.seed}
        copy.round_2 = {**self.round_2, "seed": 1000 + self.seed}
        return copy


@dataclass
class LoopOutcome:
    """What one loop run measured: the benchmark's row, the slow test's assertions."""

    settings: LoopSettings
    judgments: int = 0
    train_pairs: int = 0
    heldout_pairs: int = 0
    rm_accuracy: float | None = None
    rm_lower: float | None = None
    rm_upper: float | None = None
    rm_learned: bool = False
    ppo_kl: float | None = None
    ppo_series: dict[str, list[float]] = field(default_factory=dict)
    win: dict[str, Any] = field(default_factory=dict)
    mean_chars: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, old, new)

    @property
    def total_cpu_min(self) -> float:
        return sum(self.cpu_s.values()) / 60


class _Stopwatch:
    def __init__(self, outcome: LoopOutcome):
        self.outcome = outcome

    @contextlib.contextmanager
    def stage(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.outcome.cpu_s[name] = time.process_time() - cpu
        self.outcome.wall_s[name] = time.perf_counter() - wall


def run_loop_scenario(
    settings: LoopSettings,
    *,
    base_uri: str,
    project_name: str,
    on_commit=contextlib.nullcontext,
) -> LoopOutcome:
    """Run round 1 -> judgments -> loop (reward model, PPO, publish) -> round 2 judged; measure it.

    ``on_commit`` is a context-manager factory inside which ``transaction.on_commit``
    callbacks run (pytest-django's ``django_capture_on_commit_callbacks(execute=True)`` in a
    test; nothing in autocommit mode). Celery must be eager (``CELERY_TASK_ALWAYS_EAGER``).
    """
    from annotation.models import Project, Prompt
    from annotation.simulation import simulate_round
    from training.models import Checkpoint, Metric, RewardModel, TrainingRun
    from training.rounds import round_open
    from training.tasks import run_loop

    settings = settings.with_seed()
    outcome = LoopOutcome(settings=settings)
    clock = _Stopwatch(outcome)
    project = Project.objects.create(
        name=project_name, comparison_mode=Project.Mode.KWISE, k=settings.k, overlap=1
    )
    for split, questions in (("train", settings.train_questions), ("eval", settings.eval_questions)):
        Prompt.objects.bulk_create(
            Prompt(
                project=project,
                conversation=[{"role": "user", "content": q + settings.prompt_suffix}],
                split=split,
            )
            for q in questions
        )
    base = Checkpoint.objects.create(
        project=project, version=0, uri=base_uri, origin="base", status="published"
    )

    with clock.stage("round 1: generate"), on_commit():
        round_1 = round_open(project=project, checkpoints=[base], config=settings.round_1)
    round_1.refresh_from_db()
    if round_1.status != "open":
        raise RuntimeError(f"round 1 did not open: {round_1.error}")
    with clock.stage("round 1: judge"):
        shuffled = settings.labels == "shuffled"
        judged = simulate_round(
            round=round_1,
            annotators=1,
            rule=settings.rule,
            noise=1.0 if shuffled else settings.noise,
            seed=settings.seed + 1,
        )
    outcome.judgments = judged.judgments

    # Round 2 is pairwise (new vs old), three judgments per comparison.
    project.comparison_mode, project.k, project.overlap = Project.Mode.PAIRWISE, 2, settings.judges_round_2
    project.save(update_fields=["comparison_mode", "k", "overlap"])
    loop = TrainingRun.objects.create(
        project=project,
        kind="loop",
        config={
            "base_checkpoint_id": base.pk,
            "reward_model": settings.reward_model,
            "ppo": settings.ppo,
            "dpo": settings.dpo,
            "algorithm": settings.algorithm,
            "open_next_round": True,
            "round": settings.round_2,
            "train_policy_anyway": True,  # the control's reward model must not stop its own loop
        },
    )
    with clock.stage("loop: snapshot, reward model, PPO, round 2 generation"), on_commit():
        run_loop(loop.pk)
    loop.refresh_from_db()
    if loop.status != "succeeded":
        raise RuntimeError(f"the loop failed: {loop.error}")
    for child in loop.children.all():
        if child.started_at and child.finished_at:
            outcome.wall_s[f"loop: {child.kind}"] = (child.finished_at - child.started_at).total_seconds()
    if settings.algorithm == "dpo":
        policy_run = loop.children.get(kind="dpo")
        held_out = policy_run.outputs["eval"]  # DPO's preference accuracy: the RM columns' counterpart
        outcome.heldout_pairs = held_out["pairs"]
        outcome.train_pairs = policy_run.snapshot.pair_count - held_out["pairs"]
        outcome.rm_accuracy, outcome.rm_lower = held_out["accuracy"], held_out["accuracy_lower"]
        outcome.rm_upper = held_out["accuracy_upper"]
        outcome.rm_learned = held_out["accuracy_lower"] > 0.5
        return _round_2(project, settings, outcome, clock, round_1, base, policy_run)
    reward_run = loop.children.get(kind="reward_model")
    ppo_run = loop.children.get(kind="ppo")
    reward_model = RewardModel.objects.get(run=reward_run)
    evaluation = reward_model.evaluation
    outcome.heldout_pairs = evaluation.get("pairs", 0)
    outcome.train_pairs = evaluation.get("train", {}).get("pairs", 0)
    outcome.rm_accuracy = reward_model.accuracy
    outcome.rm_lower, outcome.rm_upper = evaluation.get("accuracy_lower"), evaluation.get("accuracy_upper")
    outcome.rm_learned = reward_model.learned
    for name in ("objective/scores", "objective/kl", "response/length_mean", "response/eos_share"):
        outcome.ppo_series[name] = list(
            Metric.objects.filter(run=ppo_run, name=name).order_by("step").values_list("value", flat=True)
        )
    outcome.ppo_kl = outcome.ppo_series["objective/kl"][-1] if outcome.ppo_series["objective/kl"] else None
    return _round_2(project, settings, outcome, clock, round_1, base, ppo_run)


def _round_2(project, settings, outcome, clock, round_1, base, policy_run) -> LoopOutcome:
    """Round 2, new vs old, judged by the same rule; the win rate and what the answers look like."""
    from annotation.models import Prompt, Response
    from annotation.simulation import simulate_round
    from training.leaderboard_data import head_to_head
    from training.models import Checkpoint

    new = Checkpoint.objects.get(produced_by=policy_run)
    round_2 = project.rounds.get(number=2)
    if round_2.status != "open":
        raise RuntimeError(f"round 2 did not open: {round_2.error}")
    with clock.stage("round 2: judge"):
        simulate_round(
            round=round_2,
            annotators=settings.judges_round_2,
            rule=settings.rule,
            noise=settings.noise,
            seed=settings.seed + 2,
        )
    outcome.win = head_to_head(project.pk, new.pk, base.pk)
    old_texts = {r.prompt_id: r.text for r in Response.objects.filter(round=round_2, checkpoint=base)}
    new_texts = {r.prompt_id: r.text for r in Response.objects.filter(round=round_2, checkpoint=new)}
    outcome.mean_chars = {
        "round 1": statistics.mean(len(r.text) for r in Response.objects.filter(round=round_1)),
        "old": statistics.mean(len(t) for t in old_texts.values()),
        "new": statistics.mean(len(t) for t in new_texts.values()),
    }
    prompts = dict(Prompt.objects.filter(project=project).values_list("pk", "conversation"))
    outcome.samples = [
        (prompts[pk][0]["content"], old_texts[pk], new_texts.get(pk, "")) for pk in sorted(old_texts)[:3]
    ]
    return outcome

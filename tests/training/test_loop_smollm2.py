"""The whole loop on the real SmolLM2-135M-Instruct, on the CPU, through the product's own paths.

Simulated annotators who prefer shorter responses judge round 1 (the base model's
answers); the loop trains a Bradley-Terry reward model on those judgments, then PPO
against it, publishes the policy and opens round 2, which pits the new checkpoint
against its parent on the evaluation prompts, judged by three simulated annotators.
The test holds the loop to what it must do every time: every stage succeeds through the
product's own paths, PPO moves the policy away from its parent (KL > 0, different
answers), the new checkpoint is published and round 2 is judged in full, and the
leaderboard computes a win rate with its interval. Run with ``-s`` to see the figures.

It does not assert that the new policy wins. Sized for two CPU cores, round 1 yields
~17 pairs, too few for the reward model to beat chance (held-out accuracy 0.50 on 6
pairs in every run so far), so which way PPO moves is luck: runs have given win rates of
0.972 [0.904, 0.992], 0.722 and 0.514 [0.401, 0.626]. That learning works is asserted on
tiny models where it can be (tests/ml/test_reward_training.py, tests/ml/test_ppo_learning.py);
a real win over SmolLM2 needs the full HH-RLHF reward model, i.e. a GPU
(tests/benchmarks/reward_model_hh.py).

One run, one torch thread (TANDEM_TEST_THREADS=1) on a shared two-core machine: round 1
204 chars on average (21% of answers ended before 48 tokens); PPO's EOS share 0.12 ->
0.75 over 6 updates, KL 10; round 2 old 560 chars, new 69 chars; new vs old 70-2,
win rate 0.972 [0.904, 0.992]; 332 s wall, 319 s CPU.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import pytest

from annotation.models import Judgment, Prompt, Response
from annotation.simulation import simulate_round
from training.leaderboard_data import project_votes, tally
from training.ml.leaderboard import win_rate_interval
from training.models import Checkpoint, Metric, RewardModel, TrainingRun
from training.rounds import round_open
from training.tasks import run_loop

pytestmark = pytest.mark.slow

# Round 1 and PPO sample from these. Some have one-word answers, so that some sampled
# answers end early and both the reward model and PPO see what "short" looks like.
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
]

ROUND_1 = {
    "split": "train",
    "samples_per_checkpoint": 2,
    "temperature": 1.0,
    "top_p": 0.95,
    "max_new_tokens": 48,
    "batch_size": 16,
    "device": "cpu",
    "seed": 0,
}
REWARD_MODEL = {
    "learning_rate": 5e-5,
    "num_epochs": 1,
    "batch_size": 8,
    "max_length": 192,
    "eval_fraction": 0.25,
    "eval_batch_size": 16,
}
PPO = {
    "total_episodes": 48,
    "batch_size": 8,
    "mini_batch_size": 4,
    "num_ppo_epochs": 1,
    "response_length": 40,
    "temperature": 0.9,
    "learning_rate": 5e-5,
    "anneal_lr": False,
    "kl_coef": 0.02,
    "missing_eos_penalty": 2.0,
    "reward_norm_samples": 8,
    "max_prompt_length": 64,
}
# The round that publishing opens (new vs old on the eval prompts): long enough that an
# answer which never ends shows as long, which is what the "shorter" annotators judge.
ROUND_2 = {"max_new_tokens": 128, "temperature": 0.8, "batch_size": 16}
NOISE = 0.1  # a tenth of the answers are at random (a tired annotator)


class Stopwatch:
    def __init__(self):
        self.stages: list[tuple[str, float, float]] = []

    @contextmanager
    def stage(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.stages.append((name, time.perf_counter() - wall, time.process_time() - cpu))

    def report(self) -> str:
        lines = [f"  {name:<34} {wall:7.1f} s wall {cpu:7.1f} s CPU" for name, wall, cpu in self.stages]
        wall = sum(s[1] for s in self.stages)
        cpu = sum(s[2] for s in self.stages)
        return "\n".join([*lines, f"  {'total':<34} {wall:7.1f} s wall {cpu:7.1f} s CPU"])


@pytest.fixture
def torch_threads():
    """One thread by default: the figures above were taken so, and on a shared CI machine a
    second OpenMP thread spinning against other jobs made the run 3-4x slower. Set
    TANDEM_TEST_THREADS=2 on a quiet machine (sampling then differs in the last bits)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("TANDEM_TEST_THREADS", "1")))
    yield torch.get_num_threads()
    torch.set_num_threads(previous)


def _lengths(responses) -> tuple[float, float]:
    """Mean characters and the share of responses that ended on their own."""
    texts = list(responses)
    return (
        statistics.mean(len(r.text) for r in texts),
        sum(r.finish_reason == "eos" for r in texts) / len(texts),
    )


def test_shorter_preferences_make_a_policy_that_wins_the_next_round(
    project, smollm2_checkpoint, settings, tmp_path, eager, django_capture_on_commit_callbacks, torch_threads
):
    settings.ARTIFACTS_DIR = tmp_path
    clock = Stopwatch()
    for split, questions in (("train", TRAIN_QUESTIONS), ("eval", EVAL_QUESTIONS)):
        Prompt.objects.bulk_create(
            Prompt(project=project, conversation=[{"role": "user", "content": q}], split=split)
            for q in questions
        )
    base = Checkpoint.objects.create(
        project=project, version=0, uri=str(smollm2_checkpoint), origin="base", status="published"
    )

    # Round 1: the base model answers the training prompts twice; one annotator per comparison.
    with clock.stage("round 1: generate"), django_capture_on_commit_callbacks(execute=True):
        round_1 = round_open(project=project, checkpoints=[base], config=ROUND_1)
    round_1.refresh_from_db()
    assert round_1.status == "open", round_1.error
    with clock.stage("round 1: judge"):
        judged = simulate_round(round=round_1, annotators=1, rule="shorter", noise=NOISE, seed=1)
    assert judged.judgments == round_1.comparisons.count() >= 20
    length_1, ended_1 = _lengths(Response.objects.filter(round=round_1))

    # The loop: reward model, PPO, publish; publishing opens round 2 and generates it.
    project.overlap = 3  # round 2: three judgments per comparison
    project.save(update_fields=["overlap"])
    loop = TrainingRun.objects.create(
        project=project,
        kind="loop",
        config={
            "base_checkpoint_id": base.pk,
            "reward_model": REWARD_MODEL,
            "ppo": PPO,
            "open_next_round": True,
            "round": ROUND_2,
        },
    )
    with clock.stage("loop + round 2 generation"), django_capture_on_commit_callbacks(execute=True):
        run_loop(loop.pk)
    loop.refresh_from_db()
    assert loop.status == "succeeded", loop.error
    reward_run, ppo_run = loop.children.order_by("created_at")
    reward_model = RewardModel.objects.get(run=reward_run)
    new = Checkpoint.objects.get(produced_by=ppo_run)
    assert new.status == "published" and new.parent == base
    round_2 = project.rounds.get(number=2)
    assert round_2.status == "open", round_2.error
    assert set(round_2.checkpoints.all()) == {new, base}

    with clock.stage("round 2: judge"):
        simulate_round(round=round_2, annotators=3, rule="shorter", noise=NOISE, seed=2)
    assert Judgment.objects.filter(comparison__round=round_2).count() == 3 * round_2.comparisons.count()

    counts = tally(project_votes([project.pk])[project.pk]).between(new.pk, base.pk)
    result = win_rate_interval(counts.a_wins, counts.b_wins, counts.ties + counts.both_bad)

    def series(name):
        return [
            v
            for v in Metric.objects.filter(run=ppo_run, name=name)
            .order_by("step")
            .values_list("value", flat=True)
        ]

    old_length, old_ended = _lengths(Response.objects.filter(round=round_2, checkpoint=base))
    new_length, new_ended = _lengths(Response.objects.filter(round=round_2, checkpoint=new))
    fmt = lambda values: " ".join(f"{v:+.2f}" for v in values)  # noqa: E731
    print(
        f"\nLoop on SmolLM2-135M-Instruct, {torch_threads} torch thread(s)\n"
        f"round 1: {round_1.comparisons.count()} comparisons, mean response {length_1:.0f} chars, "
        f"{ended_1:.0%} ended before {ROUND_1['max_new_tokens']} tokens\n"
        f"reward model: held-out accuracy {reward_model.accuracy:.3f} "
        f"({reward_model.evaluation.get('pairs', '?')} pairs), learned={reward_model.learned}\n"
        f"PPO scores   {fmt(series('objective/scores'))}\n"
        f"PPO KL       {fmt(series('objective/kl'))}\n"
        f"PPO length   {fmt(series('response/length_mean'))}\n"
        f"PPO eos      {fmt(series('response/eos_share'))}\n"
        f"round 2: {round_2.comparisons.count()} comparisons x 3 judgments; mean response "
        f"old {old_length:.0f} chars ({old_ended:.0%} ended), new {new_length:.0f} chars ({new_ended:.0%} ended)\n"
        f"new vs old: {counts.a_wins} wins, {counts.b_wins} losses, {counts.ties + counts.both_bad} ties; "
        f"win rate {result['win_rate']:.3f}, 95% interval [{result['lower']:.3f}, {result['upper']:.3f}]\n"
        f"{clock.report()}"
    )
    for response in Response.objects.filter(round=round_2).order_by("prompt_id", "-checkpoint__version")[:4]:
        print(f"  v{response.checkpoint.version}: {response.text[:100]!r}")
    assert result["n"] >= 60  # 24 eval prompts x 3 judgments, less any identical pair
    assert 0.0 <= result["lower"] <= result["win_rate"] <= result["upper"] <= 1.0, result
    # PPO moved the policy: a KL above zero against its parent, and different answers.
    assert series("objective/kl")[-1] > 0.1
    old_texts = {r.prompt_id: r.text for r in Response.objects.filter(round=round_2, checkpoint=base)}
    new_texts = {r.prompt_id: r.text for r in Response.objects.filter(round=round_2, checkpoint=new)}
    assert sum(new_texts[p] != old_texts[p] for p in new_texts) >= len(new_texts) // 2

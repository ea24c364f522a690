"""The whole loop on the real SmolLM2-135M-Instruct, on the CPU, through the product's own paths.

Simulated annotators who prefer **longer** answers rank round 1 (K-wise, K = 4, the base
model's answers to brief-answer prompts); the loop trains a Bradley-Terry reward model on those
rankings, then PPO against it with the missing-EOS penalty **off**, publishes the policy and
opens round 2, which pits the new checkpoint against its parent on evaluation prompts it never
trained on, judged by three simulated annotators (``loop_scenario.py``, shared with
``tests/benchmarks/loop_efficacy.py``).

What this test asserts, every time: the reward model learned the rule from people's rankings
(its held-out accuracy's 95% interval, clustered by prompt, lies above chance), PPO moved the
policy (KL above 0.1), and **the new policy wins**: its win rate over its parent, judged on 48
evaluation prompts by three annotators, has a 95% interval (clustered by comparison) above 0.5.

Measured with these settings (``tests/benchmarks/loop_efficacy.py``, 2026-12-03): win 0.72
[0.60, 0.83] (rule longer, seed 0); the shuffled-labels control 0.44 [0.30, 0.58], with no
drift in length (181 -> 179 chars), so the win comes from the rankings. On one thread it took
602 s in a clean-clone CI run (678 s in an earlier one): at the 10 minutes the issue asks for,
not safely under them (#16 stays open on that).
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import os

import pytest

from tests.training.loop_scenario import LoopSettings, run_loop_scenario

pytestmark = pytest.mark.slow


@pytest.fixture
def torch_threads():
    """One thread by default: on a shared machine a second OpenMP thread spinning against other
    work made decoding 3-5x slower (575-976 ms against 183 ms a step for a batch of 16).
    TANDEM_TEST_THREADS=2 on a quiet machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("TANDEM_TEST_THREADS", "1")))
    yield torch.get_num_threads()
    torch.set_num_threads(previous)


def test_rankings_that_prefer_longer_answers_make_a_policy_that_people_prefer(
    smollm2_checkpoint, settings, tmp_path, eager, django_capture_on_commit_callbacks, torch_threads, db
):
    settings.ARTIFACTS_DIR = tmp_path
    outcome = run_loop_scenario(
        LoopSettings(rule="longer", seed=0),
        base_uri=str(smollm2_checkpoint),
        project_name="Loop on SmolLM2",
        on_commit=lambda: django_capture_on_commit_callbacks(execute=True),
    )
    win = outcome.win
    series = outcome.ppo_series
    print(
        f"\nLoop on SmolLM2-135M-Instruct, {torch_threads} torch thread(s), rule 'longer', no EOS penalty\n"
        f"round 1: {outcome.judgments} rankings -> {outcome.train_pairs} training pairs\n"
        f"reward model: held-out accuracy {outcome.rm_accuracy:.3f} [{outcome.rm_lower:.3f}, "
        f"{outcome.rm_upper:.3f}] on {outcome.heldout_pairs} pairs, learned={outcome.rm_learned}\n"
        f"PPO scores {' '.join(f'{v:+.2f}' for v in series['objective/scores'])}; "
        f"KL {' '.join(f'{v:.2f}' for v in series['objective/kl'])}\n"
        f"round 2 mean chars: old {outcome.mean_chars['old']:.0f}, new {outcome.mean_chars['new']:.0f}\n"
        f"new vs old: {win['wins']}-{win['losses']}-{win['ties']}, win rate {win['win_rate']:.3f} "
        f"[{win['lower']:.3f}, {win['upper']:.3f}] over {win['comparisons']} comparisons\n"
        f"CPU minutes: {', '.join(f'{k} {v / 60:.1f}' for k, v in outcome.cpu_s.items())}"
    )
    assert outcome.rm_learned, "the reward model's held-out interval includes chance"
    assert outcome.rm_lower > 0.5 and outcome.heldout_pairs >= 40
    assert outcome.ppo_kl > 0.1, "PPO did not move the policy"
    assert win["n"] >= 120  # 48 eval prompts x 3 judgments, less any identical pair
    assert win["lower"] > 0.5, f"the new policy did not win: {win['win_rate']:.3f} [{win['lower']:.3f}, ...]"

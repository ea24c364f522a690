"""Benchmark: does the loop learn what people prefer? Several rules, several seeds, two controls.

    .venv/bin/python tests/benchmarks/loop_efficacy.py [--rules longer shorter phrase:...]
        [--seeds 0 1] [--controls shuffled with-eos-penalty] [--ppo-episodes N] [--rm-epochs E]
        [--rm-layers L] [--threads 2]

Each row is one whole loop through the product's own paths, on the bundled
SmolLM2-135M-Instruct, on the CPU (``tests/training/loop_scenario.py``): round 1 opened
(K-wise, K = 4; K = 6 for a phrase rule, whose agreeing answers tie), simulated annotators following the rule rank it through
``judgment_submit``, the loop run snapshots the judgments, trains the Bradley-Terry
reward model, runs PPO and publishes the policy; round 2 (new vs old, pairwise, on
evaluation prompts never trained on) is judged by three simulated annotators with the
same rule. A fresh SQLite database and artifacts folder per row; Celery eager.

Columns: rule, seed, judgments and training pairs, reward-model held-out accuracy with
its 95% interval (clustered by prompt) and held-out pairs, PPO's KL at the end (per
response, nats), the new policy's win rate over its parent with its 95% interval
(clustered by comparison), mean characters old -> new, CPU minutes of each stage.

Controls, in the same table:
- ``shuffled``: round 1 ranked at random (labels carry no information); the win rate's
  interval must contain 0.5, or the loop "learns" something people did not say.
- ``with-eos-penalty``: the first rule with PPO's missing-EOS penalty (2.0) on; every other
  row runs without it, so a win there does not come from the penalty's push to end early.

Targets (issue #16): every rule and seed: accuracy >= 0.75 and a win rate >= 0.75 whose
interval lies above 0.5; one loop within 20 CPU-minutes. The last column says which
targets a row met. Holds ``/tmp/bench.lock`` so two benchmarks never share the cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RULES = ["longer", "shorter", "phrase:that"]
TARGET_ACCURACY, TARGET_WIN, TARGET_CPU_MIN = 0.75, 0.75, 20.0


def setup_django(work: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{work / 'bench.sqlite3'}"
    os.environ["ARTIFACTS_DIR"] = str(work / "artifacts")
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    for name, value in (
        ("TOKENIZERS_PARALLELISM", "false"),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(name, value)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.CELERY_TASK_EAGER_PROPAGATES = True
    call_command("migrate", verbosity=0)


def base_checkpoint() -> str:
    from training.ml.checkpoints import convert_gguf_checkpoint, smollm2_gguf_path

    path = ROOT / "tests" / "artifacts" / "smollm2-135m-instruct"
    if not path.exists():
        convert_gguf_checkpoint(smollm2_gguf_path(), path)
    return str(path)


def fmt_interval(value, lower, upper) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} [{lower:.2f}, {upper:.2f}]"


def verdict(outcome, control: str | None) -> str:
    win = outcome.win
    if control == "shuffled":
        return "ok (contains 0.5)" if win["lower"] <= 0.5 <= win["upper"] else "FAILS: moved without signal"
    missed = []
    if not (outcome.rm_accuracy or 0) >= TARGET_ACCURACY:
        missed.append("accuracy")
    if not (win["win_rate"] >= TARGET_WIN and win["lower"] > 0.5):
        missed.append("win")
    if outcome.total_cpu_min > TARGET_CPU_MIN:
        missed.append("time")
    return "met" if not missed else "missed: " + ", ".join(missed)


def print_row(label: str, seed: int, outcome, control: str | None) -> None:
    stages = " ".join(f"{cpu / 60:.1f}" for cpu in outcome.cpu_s.values())
    win = outcome.win
    print(
        f"| {label} | {seed} | {outcome.judgments} / {outcome.train_pairs} | "
        f"{fmt_interval(outcome.rm_accuracy, outcome.rm_lower, outcome.rm_upper)} on {outcome.heldout_pairs} | "
        f"{'-' if outcome.ppo_kl is None else f'{outcome.ppo_kl:.2f}'} | {fmt_interval(win['win_rate'], win['lower'], win['upper'])} "
        f"({win['wins']}-{win['losses']}-{win['ties']}) | "
        f"{outcome.mean_chars['old']:.0f} -> {outcome.mean_chars['new']:.0f} | "
        f"{stages} = {outcome.total_cpu_min:.1f} | {verdict(outcome, control)} |",
        flush=True,
    )


def run_one(settings, label: str, seed: int, control: str | None, work_root: Path, lock: str, verbose: bool):
    from tests.benchmarks.bench_lock import bench_lock
    from tests.training.loop_scenario import run_loop_scenario

    with bench_lock(lock, f"{label} seed {seed}"):
        started = time.perf_counter()
        outcome = run_loop_scenario(settings, base_uri=base_checkpoint(), project_name=f"{label} seed {seed}")
    if verbose and settings.algorithm == "ppo":
        series = outcome.ppo_series
        print(
            f"    {label} seed {seed}: {time.perf_counter() - started:.0f} s wall; PPO scores "
            + " ".join(f"{v:+.2f}" for v in series["objective/scores"])
            + "; length "
            + " ".join(f"{v:.0f}" for v in series["response/length_mean"])
            + "; eos "
            + " ".join(f"{v:.2f}" for v in series["response/eos_share"])
            + "; wall s: "
            + ", ".join(f"{k} {v:.0f}" for k, v in outcome.wall_s.items()),
            flush=True,
        )
        for prompt, old, new in outcome.samples[:2]:
            print(f"      {prompt!r}\n        old: {old[:120]!r}\n        new: {new[:120]!r}", flush=True)
    print_row(label, seed, outcome, control)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", nargs="+", default=DEFAULT_RULES)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument(
        "--controls",
        nargs="*",
        default=["shuffled", "with-eos-penalty"],
        choices=["shuffled", "with-eos-penalty"],
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (a second thread thrashes when anything else runs)",
    )
    # 144 (9 updates) against the default 96 moved the length rows' wins to 0.80, 0.89, 0.76 and
    # 0.71 (from 0.72, 0.86, 0.746, 0.76) at twice the KL: no setting yet wins 0.75 on every row.
    parser.add_argument(
        "--ppo-episodes",
        type=int,
        help="PPO's total episodes in every loop (default: LoopSettings' 96, the slow test's)",
    )
    parser.add_argument("--rm-epochs", type=float, help="reward-model epochs (default: LoopSettings')")
    parser.add_argument(
        "--rm-layers", type=int, help="reward-model trainable top layers (default: LoopSettings')"
    )
    parser.add_argument(
        "--algorithm",
        choices=["ppo", "dpo"],
        default="ppo",
        help="ppo: reward model then PPO (the RM columns are the reward model's); dpo: DPO straight "
        "from the judgments (the RM columns hold DPO's held-out preference accuracy, no PPO KL)",
    )
    parser.add_argument("--lock", default="/tmp/bench.lock", help="flock held around each loop")
    parser.add_argument("--quiet", action="store_true", help="only the table")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="loop-efficacy-"))
    setup_django(work)
    import torch

    from tests.training.loop_scenario import LoopSettings

    torch.set_num_threads(args.threads)
    print(
        f"Loop efficacy on SmolLM2-135M-Instruct, CPU, {args.threads} torch thread(s); work dir {work}\n"
        "| rule | seed | judgments / train pairs | RM held-out accuracy [95%] on pairs | PPO KL | "
        "new vs old win rate [95%] (W-L-T) | chars old -> new | CPU min (r1 gen, judge, loop, r2 judge) | "
        "targets |\n|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    runs: list[tuple[str, int, LoopSettings, str | None]] = []
    for rule in args.rules:
        for seed in args.seeds:
            # A content rule ties the answers that agree on it (both say the phrase, or neither):
            # those pairs carry nothing, so its rankings are of six answers to keep the pairs.
            k = 6 if rule.startswith("phrase:") else 4
            runs.append((rule, seed, LoopSettings(rule=rule, seed=seed, k=k), None))
    first = args.rules[0]
    if "shuffled" in args.controls:
        runs.append(
            (f"{first}, shuffled labels", 0, LoopSettings(rule=first, seed=0, labels="shuffled"), "shuffled")
        )
    if "with-eos-penalty" in args.controls:
        control = LoopSettings(rule=first, seed=0)
        control.ppo = {**control.ppo, "missing_eos_penalty": 2.0}
        runs.append((f"{first}, EOS penalty 2.0", 0, control, "with-eos-penalty"))
    for label, seed, settings, control in runs:
        settings.algorithm = args.algorithm
        if args.algorithm != "ppo":
            label = f"{label} ({args.algorithm})"
        if args.ppo_episodes:
            settings.ppo = {**settings.ppo, "total_episodes": args.ppo_episodes}
        if args.rm_epochs:
            settings.reward_model = {**settings.reward_model, "num_epochs": args.rm_epochs}
        if args.rm_layers:
            settings.reward_model = {**settings.reward_model, "trainable_layers": args.rm_layers}
        run_one(settings, label, seed, control, work, args.lock, verbose=not args.quiet)


if __name__ == "__main__":
    main()

"""Reward model on Anthropic HH-RLHF (harmless-base, test): held-out accuracy and pairs/s against plain TRL.

Both runs train the same model (SmolLM2-135M-Instruct converted, by default) on the
same training pairs, in the same order of batches (random, as TRL's default sampler
draws them: ours' length grouping is off unless --group-by-length), with the same batch
size, learning rate, max_length and precision, in the same process, one after the other:

- **ours**: ``training.ml.reward.train_reward_model`` (hooks, margin column, held-out
  evaluation by round/source);
- **plain**: the documented TRL recipe, ``RewardTrainer(model=<path>,
  args=RewardConfig(...), train_dataset=<conversational prompt/chosen/rejected>)``.

Both trained models are then scored by one evaluator, ``evaluate_reward_model`` (the same
scorer, batch size and max_length, on the same held-out pairs), which gives each its
accuracy with a 95% interval over prompts: a speed-up is only worth reporting next to the
accuracy it kept.

Throughput is training pairs / seconds spent inside ``trainer.train()`` (model
loading, tokenisation and evaluation excluded) for both, by the wall clock and by
this process's CPU time (steadier on a shared machine). The overhead ratio is
plain pairs/s divided by ours (target: <= 1.05; below 1 means ours is faster).
With ``--repeats`` the runs alternate ours/plain, plain/ours, ... and medians are
reported (accuracy is taken on the first pair of runs).

On a CPU the whole set (1,850 training pairs, ~10 s a step) takes hours, so the
script trains one epoch on a subset (``--max-pairs``) and caps the time
(``--max-seconds``); it prints which. A capped run compares only a partial epoch and
leaves no model to score: prefer a subset that fits the budget. Holds the bench lock
(``--lock``, tests/benchmarks/bench_lock.py) from the first training to the last.

    .venv/bin/python tests/benchmarks/reward_model_hh.py --max-pairs 96 --max-eval-pairs 64
    .venv/bin/python tests/benchmarks/reward_model_hh.py --model tests/artifacts/tiny-llama-v1 --max-pairs 400
    .venv/bin/python tests/benchmarks/reward_model_hh.py --pairs-jsonl export.jsonl   # rows exported by Tandem
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tests.benchmarks.bench_lock import DEFAULT_LOCK, bench_lock  # noqa: E402
from training.ml.pairs import read_snapshot_jsonl, split_by_prompt  # noqa: E402
from training.ml.reward import (  # noqa: E402
    RewardModelConfig,
    RewardScorer,
    TrainingHooks,
    evaluate_reward_model,
    train_reward_model,
)

HH_PATH = ROOT.parent / "shared" / "datasets" / "hh-rlhf-harmless-base-test.jsonl.gz"
DEFAULT_MODEL = ROOT / "tests" / "artifacts" / "smollm2-135m-instruct"  # same path as the test fixture
TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{role: user, content: a}, {role: assistant, content: b}]."""
    parts = TURN.split(text)
    return [{"role": ROLES[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def hh_pairs(path: Path) -> tuple[list[dict], dict[str, int]]:
    """HH rows -> pair rows: the shared turns are the prompt, the last assistant replies differ."""
    rows, skipped = [], {"prefix_differs": 0, "same_reply": 0, "unparsable": 0}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            raw = json.loads(line)
            cut_c = raw["chosen"].rfind("\n\nAssistant:")
            cut_r = raw["rejected"].rfind("\n\nAssistant:")
            prefix = raw["chosen"][:cut_c]
            if prefix != raw["rejected"][:cut_r]:
                skipped["prefix_differs"] += 1
                continue
            chosen = raw["chosen"][cut_c:].removeprefix("\n\nAssistant:").strip()
            rejected = raw["rejected"][cut_r:].removeprefix("\n\nAssistant:").strip()
            prompt = parse_dialogue(prefix)
            if not prompt or prompt[-1]["role"] != "user":
                skipped["unparsable"] += 1
                continue
            if chosen == rejected:
                skipped["same_reply"] += 1
                continue
            prompt_id = int(hashlib.sha256(prefix.encode()).hexdigest()[:12], 16)
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "margin": 0.0,
                    "weight": 1.0,
                    "prompt_id": prompt_id,
                    "comparison_id": n,
                    "judgment_id": n,
                    "round": None,
                    "source": "imported:hh-rlhf-harmless-base",
                    "annotator": None,
                    "chosen_id": f"{n}:chosen",
                    "rejected_id": f"{n}:rejected",
                }
            )
    return rows, skipped


def held_out(model, tokenizer, eval_rows: list[dict], config: RewardModelConfig) -> dict:
    """The one evaluator both sides are scored by (what train_reward_model runs after training)."""
    scorer = RewardScorer(model, tokenizer, max_length=config.max_length)
    return evaluate_reward_model(scorer, eval_rows, batch_size=config.eval_batch_size)


def plain_trl(
    train_rows: list[dict], eval_rows: list[dict], model_path: str, config: RewardModelConfig, max_steps: int
) -> dict:
    """The documented TRL RewardTrainer recipe on the same pairs; returns pairs, seconds, pairs/s, eval."""
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    dataset = Dataset.from_dict(
        {
            "prompt": [r["prompt"] for r in train_rows],
            "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in train_rows],
            "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in train_rows],
        }
    )
    work = tempfile.mkdtemp(prefix="plain-trl-")
    try:
        args = RewardConfig(
            output_dir=work,
            learning_rate=config.learning_rate,
            num_train_epochs=config.num_epochs,
            max_steps=max_steps,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            max_length=config.max_length,
            seed=config.seed,
            activation_checkpointing=config.gradient_checkpointing,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            warmup_steps=config.warmup_ratio,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = RewardTrainer(model=model_path, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)  # as ours: no log lines on stdout
        kept = len(trainer.train_dataset)
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        steps = trainer.state.global_step
        capped = max_steps > 0  # stopped where ours was stopped: a partial epoch, not scored, as ours
        evaluated = (
            held_out(trainer.model, trainer.processing_class, eval_rows, config) if eval_rows else None
        )
        pairs = min(
            steps * config.batch_size * config.gradient_accumulation_steps, kept * int(config.num_epochs)
        )
        return {
            "pairs": pairs,
            "kept": kept,
            "steps": steps,
            "seconds": seconds,
            "pairs_per_s": pairs / seconds,
            "pairs_per_cpu_s": pairs / cpu_seconds,
            "eval": None if capped else evaluated,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_ours(train_rows, eval_rows, model_path: Path, config: RewardModelConfig, max_seconds: float) -> dict:
    """``train_reward_model`` into a throw-away directory, stopped by the hooks after ``max_seconds`` of training.

    Adds ``train.pairs_per_cpu_s``: process CPU time from the first progress call
    (train begin) to the final training log (train end), as plain_trl measures it.
    """
    clock: dict[str, float] = {}

    def on_progress(step: int, total: int) -> None:
        if "start" not in clock:
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

    def on_metrics(step: int, metrics: dict) -> None:
        if "train_runtime" in metrics:  # logged once, as trainer.train() returns
            clock["cpu_end"] = time.process_time()

    def should_stop() -> bool:  # the cap is on training; the evaluation after it always finishes
        training = "start" in clock and "cpu_end" not in clock
        return training and time.perf_counter() - clock["start"] > max_seconds

    out = Path(tempfile.mkdtemp(prefix="rm-hh-")) / "rm"
    try:
        hooks = TrainingHooks(on_progress=on_progress, on_metrics=on_metrics, should_stop=should_stop)
        results = train_reward_model(train_rows, eval_rows, str(model_path), out, config, hooks)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    results["train"]["pairs_per_cpu_s"] = results["train"]["pairs_seen"] / (
        clock["cpu_end"] - clock["cpu_start"]
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="base checkpoint directory")
    parser.add_argument("--data", default=str(HH_PATH), help="HH-RLHF jsonl.gz")
    parser.add_argument("--pairs-jsonl", help="pair rows exported by Tandem, used instead of --data")
    parser.add_argument("--max-pairs", type=int, default=96, help="training pairs used (0: all)")
    parser.add_argument("--max-eval-pairs", type=int, default=64, help="held-out pairs scored (0: all)")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="cap on each run's training time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--group-by-length",
        action="store_true",
        help="ours batches pairs of similar length (its default in the product); plain cannot: batches differ",
    )
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternate ours/plain this many times (medians; noisy shared CPUs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--lock", default=DEFAULT_LOCK, help="flock held while the models train")
    opts = parser.parse_args()

    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)

    model_path = Path(opts.model)
    if model_path == DEFAULT_MODEL and not model_path.exists():
        from training.ml.checkpoints import convert_gguf_checkpoint, smollm2_gguf_path

        print(f"building {model_path} from the bundled GGUF (~20 s) ...", flush=True)
        convert_gguf_checkpoint(smollm2_gguf_path(), model_path)

    if opts.pairs_jsonl:
        rows, skipped = read_snapshot_jsonl(opts.pairs_jsonl), {}
    else:
        rows, skipped = hh_pairs(Path(opts.data))
    train_all, eval_all = split_by_prompt(rows, eval_fraction=0.2, seed=opts.seed)
    assert not {r["prompt_id"] for r in train_all} & {r["prompt_id"] for r in eval_all}
    train_rows = train_all[: opts.max_pairs] if opts.max_pairs else train_all
    eval_rows = eval_all[: opts.max_eval_pairs] if opts.max_eval_pairs else eval_all

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device} ({torch.get_num_threads()} threads), model: {model_path.name}")
    print(
        f"data: {len(rows)} pairs ({skipped or 'from --pairs-jsonl'} skipped), split 80/20 by prompt: "
        f"{len(train_all)} train / {len(eval_all)} held-out"
    )
    subset = len(train_rows) < len(train_all) or len(eval_rows) < len(eval_all)
    batches = "ours length-grouped, plain random" if opts.group_by_length else "random on both sides"
    print(f"batches: {opts.batch_size} pairs, {batches}")
    print(
        f"{'SUBSET' if subset else 'FULL'}: training on {len(train_rows)} pairs x {opts.epochs} epoch(s), "
        f"scoring {len(eval_rows)} held-out pairs; time cap {opts.max_seconds:.0f} s per run"
    )

    config = RewardModelConfig(
        learning_rate=opts.learning_rate,
        num_epochs=opts.epochs,
        batch_size=opts.batch_size,
        max_length=opts.max_length,
        seed=opts.seed,
        group_by_length=opts.group_by_length,
        logging_steps=10,
    )
    import datasets

    datasets.disable_progress_bars()
    rates: dict[str, list[float]] = {"ours": [], "plain": [], "ours_cpu": [], "plain_cpu": []}
    accuracy: dict[str, dict | None] = {}
    max_steps = -1
    with bench_lock(opts.lock, "reward model"):
        for repeat in range(opts.repeats):
            # ABBA order: on a shared machine the load drifts, and the second run of a pair would gain from it.
            order = ["ours", "plain"] if repeat % 2 == 0 else ["plain", "ours"]
            for which in ["ours"] if opts.skip_plain else order:
                scored_rows = eval_rows if repeat == 0 else []
                if which == "ours":
                    ours = run_ours(train_rows, scored_rows, model_path, config, opts.max_seconds)
                    capped = ours["status"] == "cancelled"
                    max_steps = ours["steps"] if capped else -1
                    t = ours["train"]
                    run = {
                        "pairs": t["pairs_seen"],
                        "seconds": t["runtime_s"],
                        "pairs_per_s": t["pairs_per_s"],
                        "pairs_per_cpu_s": t["pairs_per_cpu_s"],
                        "eval": ours["eval"],
                    }
                    detail = (
                        f"{ours['steps']}/{ours['total_steps']} steps, "
                        f"{t['pairs_dropped_too_long']} pairs over {opts.max_length} tokens left out"
                        + (" [STOPPED BY --max-seconds: partial epoch]" if capped else "")
                    )
                else:
                    run = plain_trl(train_rows, scored_rows, str(model_path), config, max_steps=max_steps)
                    detail = f"{run['steps']} steps"
                rates[which].append(run["pairs_per_s"])
                rates[f"{which}_cpu"].append(run["pairs_per_cpu_s"])
                if repeat == 0:
                    accuracy[which] = run["eval"]
                print(
                    f"[{repeat + 1}/{opts.repeats}] {which + ':':<6} {run['pairs']} pairs in {run['seconds']:.1f} s"
                    f" = {run['pairs_per_s']:.2f} pairs/s ({run['pairs_per_cpu_s']:.2f} per CPU-s), {detail}",
                    flush=True,
                )

    for side, e in accuracy.items():
        if e is None:
            print(f"{side:<5} held-out: not scored (training stopped by --max-seconds)")
            continue
        print(
            f"{side:<5} held-out: accuracy {e['accuracy']:.3f} [{e['accuracy_lower']:.3f}, {e['accuracy_upper']:.3f}] "
            f"on {e['pairs']} pairs ({e['prompts']} prompts), mean margin {e['mean_margin']:+.3f}, "
            f"loss {e['loss']:.4f} (ln 2 = 0.6931), learned={e['learned']}"
        )
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    print(f"ours training throughput: {med['ours']:.2f} pairs/s, {med['ours_cpu']:.2f} pairs/CPU-s (medians)")
    if "plain" in med:
        print(
            f"plain TRL throughput:     {med['plain']:.2f} pairs/s, {med['plain_cpu']:.2f} pairs/CPU-s (medians)"
        )
        for label, a, b in (("wall-clock", "plain", "ours"), ("CPU-time", "plain_cpu", "ours_cpu")):
            ratio = med[a] / med[b]
            verdict = "within target" if ratio <= 1.05 else "OVER the 5% target"
            print(
                f"overhead ratio plain/ours ({label}) = {ratio:.3f} ({(ratio - 1) * 100:+.1f}%; <= 1.05: {verdict})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

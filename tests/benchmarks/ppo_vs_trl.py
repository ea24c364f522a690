"""Benchmark: Tandem's PPO against TRL 1.12's PPOTrainer, same models, prompts, reward model, settings.

    .venv/bin/python tests/benchmarks/ppo_vs_trl.py [--updates 20] [--seeds 0 1 2] [--threads 1]

TRL removed PPOTrainer after 1.12, so the baseline needs trl==1.12.0, never a project
dependency. The script makes a throwaway venv (``/tmp/tandem-trl112-venv``) that sees this
project's venv through a ``.pth`` file (same torch and transformers, no 1 GB download) and
holds only ``trl==1.12.0`` itself, then re-runs itself there; both trainers run in that one
process, one after the other.

Setup: the tiny two-layer Llama with the SmolLM2 tokenizer, its output head made "peaked"
(32 tokens carry most of the probability, as in a trained model; a uniform 49k-token
policy cannot be moved by any reward in a few updates). Reward and value models: the same
random-headed sequence classifier built from the tiny Llama. Both trainers: rollout batch
16, 2 minibatches of 8, 4 PPO epochs, 16 response tokens, temperature 0.7, lr 1e-4 with
linear decay, kl_coef 0.05 (k1), EOS truncation, float32, no gradient checkpointing, no
reward normalisation (TRL has none).

Printed: episodes/s of the training loop (rollouts + updates; model loading excluded), and
the gain in mean raw reward-model score of the final policy over the initial one, both
measured with one shared evaluation (128 samples at temperature 0.7), per seed and
averaged over seeds (single runs are noisy: a random reward head gives scores with std ~2), plus
the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRL_VENV = Path(os.environ.get("TANDEM_TRL112_VENV", "/tmp/tandem-trl112-venv"))
TRL_VERSION = "1.12.0"
PROMPT_WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


def ensure_trl_venv() -> Path:
    """Create the baseline venv once: this project's packages plus trl==1.12.0 shadowing the newer trl."""
    python = TRL_VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True
        )
        if check.stdout.strip() == TRL_VERSION:
            return python
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    main_site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Appended after the venv's own site-packages, so trl 1.12 installed here wins over the project's trl.
    (Path(site) / "_tandem_project.pth").write_text(main_site + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", f"trl=={TRL_VERSION}"], check=True
    )
    return python


def build_models(work: Path):
    """Peaked tiny policy and a random-headed reward model (also the value model's start)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from training.ml.checkpoints import (
        atomic_directory,
        build_tiny_checkpoint,
        load_gguf_tokenizer,
        smollm2_gguf_path,
    )

    tokenizer_dir = ROOT / "tests" / "artifacts" / "smollm2-tokenizer"
    if not tokenizer_dir.exists():
        tokenizer = load_gguf_tokenizer(smollm2_gguf_path())
        with atomic_directory(tokenizer_dir) as tmp:
            tokenizer.save_pretrained(tmp)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tiny = ROOT / "tests" / "artifacts" / "tiny-llama-v1"
    if not tiny.exists():
        build_tiny_checkpoint(tokenizer, tiny)

    policy_dir, reward_dir = work / "policy", work / "reward"
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny, tie_word_embeddings=False)
    with torch.no_grad():
        policy.lm_head.weight.copy_(policy.get_input_embeddings().weight)
        policy.lm_head.weight[100:132] = 0.6 * torch.randn(32, policy.config.hidden_size)
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    with torch.no_grad():
        reward.score.weight.normal_(0, 1.0)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(reward_dir)
    return policy_dir, reward_dir, tokenizer


def evaluate(
    policy, ref_policy, reward_model, tokenizer, prompts, *, seed: int, samples_per_prompt: int = 8
) -> tuple[float, float]:
    """(mean raw reward-model score, mean KL(policy || initial policy) per response) of responses
    sampled from ``policy`` (temperature 0.7, 16 tokens). Scores go through the evaluator's own
    function (``RewardScorer``, the scoring contract); KL is the sampled estimate
    sum_t log pi(y_t) - log pi_ref(y_t) over each response's real tokens, the figure PPO's
    penalty controls, so a gain can be read beside the distance it cost."""
    import torch

    from training.ml.ppo import (
        PPOConfig,
        collect_rollout,
        disable_dropout,
        response_logprobs,
        tokenize_prompts,
    )
    from training.ml.reward import RewardScorer

    disable_dropout(policy)
    disable_dropout(ref_policy)
    config = PPOConfig(response_length=16, temperature=0.7, batch_size=16, mini_batch_size=16)
    prompt_ids = tokenize_prompts(tokenizer, prompts, 128) * samples_per_prompt
    torch.manual_seed(seed)
    rollout = collect_rollout(
        policy,
        prompt_ids,
        config=config,
        tokenizer=tokenizer,
        reward_model=RewardScorer(reward_model, tokenizer),
        reward_fn=None,
        device=torch.device("cpu"),
        conversations=list(prompts) * samples_per_prompt,
    )
    ref_logprobs = response_logprobs(ref_policy, rollout, config.temperature, 16)
    kl = ((rollout.logprobs - ref_logprobs) * rollout.response_mask).sum(1).mean().item()
    return rollout.raw_scores.mean().item(), kl


def run_tandem(policy_dir, reward_dir, prompts, args, work: Path) -> tuple[float, Path]:
    from training.ml.ppo import PPOConfig, PPOHooks, train_ppo

    config = PPOConfig(
        total_episodes=16 * args.updates,
        batch_size=16,
        mini_batch_size=8,
        num_ppo_epochs=4,
        response_length=16,
        temperature=0.7,
        learning_rate=args.lr,
        kl_coef=0.05,
        normalize_reward=False,
        seed=args.seed,
    )
    out = work / "tandem-policy"
    result = train_ppo(
        policy_path=policy_dir,
        reward=str(reward_dir),
        prompts=prompts,
        output_dir=out,
        config=config,
        hooks=PPOHooks(on_log=None),
    )
    loop_seconds = sum(h["time/update_s"] for h in result.history)
    return 16 * args.updates / loop_seconds, out


def run_trl(policy_dir, reward_dir, prompts, args, work: Path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    ids = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for p in prompts
    ]
    dataset = Dataset.from_dict({"input_ids": ids})
    config = PPOConfig(
        output_dir=str(work / "trl-out"),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_mini_batches=2,
        num_ppo_epochs=4,
        total_episodes=16 * args.updates,
        response_length=16,
        temperature=0.7,
        learning_rate=args.lr,
        kl_coef=0.05,
        stop_token="eos",
        local_rollout_forward_batch_size=16,
        num_sample_generations=0,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=True,
    )
    torch.manual_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    ref_policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    value_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return 16 * args.updates / seconds, trainer.policy_model


# Student's t, 97.5% quantile, by degrees of freedom (no scipy in the project); 10+ uses 10's.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_interval(values: list[float]) -> str:
    """Mean over seeds with a 95% t-interval (seeds are the unit of replication)."""
    import statistics

    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:+.3f}"
    half = T_975[min(len(values) - 1, 10)] * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def inside(args) -> None:
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    prompts = [[{"role": "user", "content": f"Tell me about {word}."}] for word in PROMPT_WORDS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        work = Path(tmp)
        policy_dir, reward_dir, tokenizer = build_models(work)
        reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
        reference = AutoModelForCausalLM.from_pretrained(policy_dir)
        initial, _ = evaluate(
            AutoModelForCausalLM.from_pretrained(policy_dir),
            reference,
            reward_model,
            tokenizer,
            prompts,
            seed=1234,
        )
        for seed in args.seeds:
            args.seed = seed
            seed_dir = work / f"seed-{seed}"
            seed_dir.mkdir()
            ours_eps, ours_dir = run_tandem(policy_dir, reward_dir, prompts, args, seed_dir)
            ours_score, ours_kl = evaluate(
                AutoModelForCausalLM.from_pretrained(ours_dir),
                reference,
                reward_model,
                tokenizer,
                prompts,
                seed=1234,
            )
            trl_eps, trl_policy = run_trl(policy_dir, reward_dir, prompts, args, seed_dir)
            trl_score, trl_kl = evaluate(trl_policy, reference, reward_model, tokenizer, prompts, seed=1234)
            rows.append((seed, ours_eps, ours_score - initial, ours_kl, trl_eps, trl_score - initial, trl_kl))
            print(
                f"seed {seed}: tandem {ours_eps:.2f} ep/s gain {ours_score - initial:+.3f} KL {ours_kl:.3f} | "
                f"trl {trl_eps:.2f} ep/s gain {trl_score - initial:+.3f} KL {trl_kl:.3f}",
                flush=True,
            )

    def column(i):
        return [row[i] for row in rows]

    episodes = 16 * args.updates
    print(
        f"\nPPO, tiny Llama (vocab 49152), {episodes} episodes per run, seeds {args.seeds}, "
        f"{args.threads} thread(s); initial mean score {initial:+.3f}; means over seeds with 95% t-intervals"
    )
    print("| trainer | episodes/s | score gain | KL to the initial policy (nats/response) | gain per nat |")
    print("|---|---|---|---|---|")
    for name, eps, gain, kl in (("tandem", 1, 2, 3), ("trl 1.12", 4, 5, 6)):
        per_nat = statistics.mean(g / max(k, 1e-6) for g, k in zip(column(gain), column(kl), strict=True))
        print(
            f"| {name} | {statistics.mean(column(eps)):.2f} | {mean_interval(column(gain))} | "
            f"{mean_interval(column(kl))} | {per_nat:+.2f} |"
        )
    print(f"speed ratio tandem / trl: {statistics.mean(column(1)) / statistics.mean(column(4)):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lock", default="/tmp/bench.lock", help="flock held while both run")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        sys.path.insert(0, str(ROOT))
        inside(args)
        return
    python = ensure_trl_venv()
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    sys.path.insert(0, str(ROOT))
    from tests.benchmarks.bench_lock import bench_lock

    with bench_lock(args.lock, "PPO against TRL"):
        subprocess.run([str(python), __file__, "--inside", *sys.argv[1:]], check=True, env=env, cwd=ROOT)


if __name__ == "__main__":
    main()

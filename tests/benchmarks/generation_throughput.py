"""Generation throughput: batched ``generate_responses`` against one ``model.generate`` per prompt.

Both runs use the same loaded model, prompts, chat template, sampling settings,
EOS and pad tokens, in the same process, interleaved batch by batch; only useful
tokens count (a row's tokens after its EOS, spent while its batch mates finish,
do not). Sampled texts differ between the two (different random streams), so
token totals differ a little; greedy (--greedy) makes them comparable token for token.

    .venv/bin/python tests/benchmarks/generation_throughput.py
    .venv/bin/python tests/benchmarks/generation_throughput.py --model tests/artifacts/tiny-llama-v1 \\
        --prompts 32 --max-new-tokens 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from tests.benchmarks.bench_lock import DEFAULT_LOCK, bench_lock  # noqa: E402
from training.ml.generation import SamplingParams, encode_prompts, generate_responses, load_model  # noqa: E402

DEFAULT_MODEL = ROOT / "tests" / "artifacts" / "smollm2-135m-instruct"  # same path as the test fixture

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a ten-year-old.",
    "What are the pros and cons of working from home? Answer briefly.",
    "Translate 'good morning' into Spanish and German.",
    "Write a short, friendly email inviting a colleague to lunch on Friday.",
    "Why is the sky blue?",
    "List four fruits that are high in vitamin C.",
    "How do I boil an egg?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "What is a prime number? Give an example.",
]


def _ensure_default_model(path: Path) -> None:
    if path == DEFAULT_MODEL and not path.exists():
        from training.ml.checkpoints import convert_gguf_checkpoint, smollm2_gguf_path

        print(f"building {path} from the bundled GGUF (~20 s) ...", flush=True)
        convert_gguf_checkpoint(smollm2_gguf_path(), path)


def _baseline(loaded, requests, params: SamplingParams) -> tuple[int, float]:
    """One ``model.generate`` call per prompt, transformers' own sampler; returns (tokens, seconds)."""
    eos = torch.tensor(loaded.eos_token_ids)
    sampling = {"temperature": params.temperature, "top_p": params.top_p} if params.do_sample else {}
    tokens = 0
    torch.manual_seed(params.seed)
    start = time.perf_counter()
    with torch.inference_mode():
        for request in requests:
            enc = encode_prompts(loaded.tokenizer, [request["conversation"]])
            enc = {k: v.to(loaded.device) for k, v in enc.items()}
            out = loaded.model.generate(
                **enc,
                max_new_tokens=params.max_new_tokens,
                do_sample=params.do_sample,
                top_k=None,
                eos_token_id=list(loaded.eos_token_ids),
                pad_token_id=loaded.tokenizer.pad_token_id,
                use_cache=True,
                **sampling,
            )
            row = out[0, enc["input_ids"].shape[1] :].cpu()
            hits = torch.isin(row, eos).nonzero()
            tokens += int(hits[0]) if len(hits) else row.numel()
    return tokens, time.perf_counter() - start


def _batched(loaded, requests, params: SamplingParams, batch_size: int) -> tuple[int, float]:
    start = time.perf_counter()
    results = generate_responses(loaded, requests, params, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return sum(r["token_count"] for r in results), seconds


def main(argv: list[str] | None = None) -> float:
    """Run both and print tokens/s and their ratio (batched / one-at-a-time); returns the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint directory")
    parser.add_argument(
        "--prompts", type=int, default=16, help="number of prompts (cycled from a fixed list)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--lock", default=DEFAULT_LOCK, help="flock held while it measures")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with bench_lock(args.lock, "generation"):
        return _measure(args)


def _measure(args) -> float:
    _ensure_default_model(args.model)
    params = SamplingParams(
        temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0, do_sample=not args.greedy
    )
    requests = [
        {"key": i, "conversation": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "seed": i}
        for i in range(args.prompts)
    ]
    loaded = load_model(args.model, device=args.device)
    print(
        f"model {args.model.name}  device {loaded.device}  dtype {loaded.model.dtype}  "
        f"threads {torch.get_num_threads()}  prompts {args.prompts}  max_new_tokens {args.max_new_tokens}  "
        f"batch_size {args.batch_size}  {'greedy' if args.greedy else 'sampling T=0.7 top_p=0.9'}",
        flush=True,
    )
    _batched(loaded, requests[:2], SamplingParams(max_new_tokens=4), 2)  # warm-up: first-call overheads

    # Interleave the two, one batch worth of prompts at a time and alternating which goes
    # first, so that load from other processes on the machine falls on both alike.
    by_length = sorted(
        requests, key=lambda r: -len(encode_prompts(loaded.tokenizer, [r["conversation"]])["input_ids"][0])
    )
    base_tokens = batch_tokens = 0
    base_s = batch_s = 0.0
    for n, start in enumerate(range(0, len(by_length), args.batch_size)):
        chunk = by_length[start : start + args.batch_size]
        runs = [("base", _baseline), ("batch", lambda lm, rs, p: _batched(lm, rs, p, args.batch_size))]
        for name, run in runs if n % 2 == 0 else runs[::-1]:
            tokens, seconds = run(loaded, chunk, params)
            if name == "base":
                base_tokens, base_s = base_tokens + tokens, base_s + seconds
            else:
                batch_tokens, batch_s = batch_tokens + tokens, batch_s + seconds
    base_tps, batch_tps = base_tokens / base_s, batch_tokens / batch_s
    print(
        f"one-at-a-time model.generate : {base_tokens:6d} tokens in {base_s:7.2f} s = {base_tps:8.1f} tokens/s"
    )
    print(
        f"generate_responses (batched) : {batch_tokens:6d} tokens in {batch_s:7.2f} s = {batch_tps:8.1f} tokens/s"
    )
    ratio = batch_tps / base_tps
    print(f"ratio batched / one-at-a-time: {ratio:.2f}x")
    return ratio


if __name__ == "__main__":
    sys.exit(0 if main() >= 1.0 else 1)

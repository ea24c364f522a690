"""Candidate generation for an annotation round: chat prompts in, sampled responses out.

Nothing here imports Django. The Celery task loads the prompts still missing a
response, calls :func:`generate_responses`, and writes each batch of results as
``on_batch`` delivers it, so a re-run after a crash only sends what is left.

Reproducibility guarantee
-------------------------
Every request samples from its own random stream, seeded from
``(params.seed, request["seed"])``. The draw for a request therefore does not
depend on which other requests share its batch, on its position in the batch,
on ``batch_size``, or on the device the random numbers are drawn for (they are
drawn on the CPU). What can still differ is the model's arithmetic: a batch pads
prompts to a common length, and different batch shapes, devices, dtypes or
kernel versions can change logits in the last bits, which can occasionally flip
a sampled (or greedy) token. Same model, same device, same dtype, same request
set and ``batch_size``: identical output, run after run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from training.ml.checkpoints import CheckpointNotFound, ensure_distinct_pad_token, is_complete_checkpoint

FinishReason = Literal["eos", "length"]
Result = dict[str, Any]
OnBatch = Callable[[list[Result], int, int], None]

DEFAULT_BATCH_SIZE = 8
BACKENDS = ("transformers",)


class GenerationError(RuntimeError):
    """Generation could not run; the message says why in words an admin can act on."""


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled. Stored with each response, so keep it JSON-friendly (``asdict``)."""

    temperature: float = field(
        default=0.7,
        metadata={
            "help": "Softmax temperature (> 0) applied to the logits when sampling; ignored when greedy."
        },
    )
    top_p: float = field(
        default=0.9,
        metadata={
            "help": "Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p (0, 1]."
        },
    )
    max_new_tokens: int = field(
        default=256,
        metadata={
            "help": "Hard cap on response length in tokens; a response cut here has finish_reason 'length'."
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Round-level seed, mixed with each request's own seed to seed that request's stream."
        },
    )
    do_sample: bool = field(
        default=True,
        metadata={"help": "Sample (True) or take the most likely token at every step (False, greedy)."},
    )

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 when sampling (got {self.temperature}); use do_sample=False."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict, for ``Response.generation_params``."""
        return dataclasses.asdict(self)


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, ready to generate on ``device``. Reusable across calls."""

    model: Any
    tokenizer: Any
    device: torch.device
    eos_token_ids: tuple[int, ...]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"Device {device} was requested but this machine has no CUDA GPU.")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a CUDA GPU that supports it, float16 on an older GPU, float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _check_model_path(model_dir: str | os.PathLike) -> str:
    path = Path(model_dir)
    if path.exists():
        if not is_complete_checkpoint(path):
            raise CheckpointNotFound(f"{path} is not a complete checkpoint (config.json and weights).")
        return str(path)
    # Not on disk: a hub id ("org/name") may still load where a hub is reachable; a path-like
    # name that does not exist is a missing checkpoint, said plainly.
    if isinstance(model_dir, os.PathLike) or path.is_absolute() or str(model_dir).startswith((".", "~")):
        raise CheckpointNotFound(f"No checkpoint at {path}.")
    return str(model_dir)


def load_model(
    model_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a ``save_pretrained`` directory (or hub id) for generation, in eval mode on ``device``.

    The tokenizer must have a chat template (:class:`GenerationError` otherwise) and
    gets a pad token distinct from EOS. Raises :class:`CheckpointNotFound` when the
    path holds no checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = _check_model_path(model_dir)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as exc:
        raise CheckpointNotFound(f"Could not load a checkpoint from {name}: {exc}") from exc
    if not tokenizer.chat_template:
        raise GenerationError(
            f"The tokenizer of {name} has no chat template, so conversations cannot be turned into "
            "prompts. Use an instruct/chat checkpoint or add a chat_template to its tokenizer."
        )
    ensure_distinct_pad_token(tokenizer)
    if tokenizer.pad_token_id >= model.get_input_embeddings().num_embeddings:  # pragma: no cover
        model.resize_token_embeddings(len(tokenizer))
    eos = model.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id} | set(
        eos if isinstance(eos, list) else [eos] if eos is not None else []
    )
    eos_ids.discard(None)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, eos_token_ids=tuple(sorted(eos_ids)))


def encode_prompts(tokenizer, conversations: Sequence[list[dict[str, str]]]) -> dict[str, torch.Tensor]:
    """Apply the chat template (with the assistant turn opened) and left-pad into one batch.

    Returns ``input_ids`` and ``attention_mask``, both (batch, prompt_len); padding sits
    on the left so that every row's last position is its last prompt token, which is
    where generation continues.
    """
    texts = [_prompt_text(tokenizer, conversation) for conversation in conversations]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _prompt_text(tokenizer, conversation: list[dict[str, str]]) -> str:
    if not tokenizer.chat_template:
        raise GenerationError(
            "The tokenizer has no chat template, so conversations cannot be turned into prompts."
        )
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def request_seed(round_seed: int, seed: int) -> int:
    """The 63-bit seed of one request's random stream, mixed from the round seed and its own seed."""
    digest = hashlib.sha256(f"{int(round_seed)}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: for each row of ``probs`` (batch, n), zeros allowed, the position where
    ``u`` (batch,) in [0, 1) of the row's total falls."""
    cdf = probs.cumsum(dim=-1)
    chosen = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    # Rounding can put u * total at the very top of the CDF: fall back to the last live position.
    last_live = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(chosen, last_live)


class PerRequestSampler:
    """Logits processor that samples each row from its own ``torch.Generator``.

    ``transformers`` samples a whole batch from the global RNG, so a response would
    depend on its batch mates. This processor draws the token itself (temperature,
    top-p, then inverse-CDF with one uniform number per row from that row's CPU
    generator) and returns scores that are ``-inf`` except at the drawn token, so
    the greedy step of ``generate`` picks exactly that token.
    """

    # Top-p looks at the most likely tokens first: when they already reach top_p (for ~9 in 10 of
    # SmolLM2's steps at temperature 1), the nucleus lies among them and the 49k-token sort is
    # skipped; the sort was ~70 of the ~100 ms the sampler took per step for a batch of 16 on one
    # CPU thread (6% of round generation). Same nucleus, same draw either way.
    CANDIDATES = 4096

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (batch, vocab) float32 logits -> (batch, vocab) one-hot in log space."""
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        u = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(probs.device)  # (batch,)
        chosen = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
        full = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
        if self.top_p < 1.0 and probs.shape[-1] > self.CANDIDATES:
            top_probs, top_ids = probs.topk(self.CANDIDATES, dim=-1)  # (batch, k), most likely first
            full = top_probs.sum(dim=-1) < self.top_p  # rows whose nucleus reaches past the candidates
            fits = ~full
            if fits.any():
                kept = top_probs[fits] * ((top_probs[fits].cumsum(dim=-1) - top_probs[fits]) < self.top_p)
                ids, by_id = top_ids[fits].sort(dim=-1)  # vocabulary order, as the full CDF runs
                chosen[fits] = ids.gather(-1, _draw(kept.gather(-1, by_id), u[fits]).unsqueeze(-1)).squeeze(
                    -1
                )
        if full.any():
            rows = probs[full]
            if self.top_p < 1.0:
                sorted_probs, order = rows.sort(dim=-1, descending=True)
                # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
                drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= self.top_p
                rows = rows.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
            chosen[full] = _draw(rows, u[full])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen.unsqueeze(-1), 0.0)


def response_text(tokenizer, token_ids) -> str:
    """A response's text as Tandem stores, shows and scores it: the tokens before EOS, decoded
    without special tokens, surrounding whitespace stripped. PPO decodes its samples with this
    too, so the reward model scores them exactly as it scored the stored responses."""
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def generate_batch(loaded: LoadedModel, requests: Sequence[dict], params: SamplingParams) -> list[Result]:
    """Generate one response per request in a single left-padded batch (no retry, no progress).

    Returns one ``{"key", "text", "token_count", "finish_reason"}`` per request, in order.
    ``token_count`` counts generated tokens, not the closing EOS; ``text`` is decoded
    without special tokens and stripped of surrounding whitespace.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    tokenizer = loaded.tokenizer
    enc = encode_prompts(tokenizer, [r["conversation"] for r in requests])
    input_ids = enc["input_ids"].to(loaded.device)  # (B, T)
    attention_mask = enc["attention_mask"].to(loaded.device)  # (B, T)
    processors = LogitsProcessorList()
    if params.do_sample:
        seeds = [request_seed(params.seed, r.get("seed", 0)) for r in requests]
        processors.append(PerRequestSampler(seeds, params.temperature, params.top_p))
    config = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=False,  # PerRequestSampler draws the tokens; generate only takes its argmax
        num_beams=1,
        eos_token_id=list(loaded.eos_token_ids),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=processors,
        )
    generated = output[:, input_ids.shape[1] :].cpu()  # (B, new_len), pad after a row's EOS
    eos = torch.tensor(loaded.eos_token_ids)
    results = []
    for request, row in zip(requests, generated, strict=True):
        is_eos = torch.isin(row, eos).nonzero()
        if len(is_eos):
            tokens, finish = row[: int(is_eos[0])], "eos"
        else:
            tokens, finish = row, "length"
        results.append(
            {
                "key": request["key"],
                "text": response_text(tokenizer, tokens),
                "token_count": int(tokens.numel()),
                "finish_reason": finish,
            }
        )
    return results


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _validate(requests: Sequence[dict]) -> None:
    seen: set[Hashable] = set()
    for i, request in enumerate(requests):
        missing = {"key", "conversation"} - request.keys()
        if missing:
            raise ValueError(f"Request {i} lacks {sorted(missing)}.")
        if request["key"] in seen:
            raise ValueError(f"Request key {request['key']!r} appears twice.")
        seen.add(request["key"])
        conversation = request["conversation"]
        if not conversation or not all({"role", "content"} <= m.keys() for m in conversation):
            raise ValueError(
                f"Request {request['key']!r}: conversation must be a non-empty list of {{role, content}}."
            )


def generate_responses(
    model_dir: str | os.PathLike | LoadedModel,
    requests: Sequence[dict],
    params: SamplingParams | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
    should_stop: Callable[[], bool] | None = None,
    backend: str = "transformers",
) -> list[Result]:
    """Generate one response per request, in batches, and return them in request order.

    ``model_dir`` is a checkpoint directory (or hub id), or a :class:`LoadedModel` from
    :func:`load_model` to reuse a model already in memory (``device`` is then ignored).
    Each request is ``{"key": hashable, "conversation": [{"role", "content"}, ...],
    "seed": int}`` (``seed`` defaults to 0; keys must be unique). Requests are sorted
    by prompt length, longest first, so batches carry little padding and an
    out-of-memory error shows up on the first batch.

    After each batch, ``on_batch(results, done, total)`` receives that batch's results
    (``done`` counts results delivered so far, of ``total``): persist them there.
    ``should_stop()`` is asked before each batch; when it returns True, generation
    stops and the results so far are returned (fewer than requested).

    Returns a list of ``{"key", "text", "token_count", "finish_reason": "eos" | "length"}``.
    On CUDA out-of-memory the batch is retried at half the size, down to one request;
    after that :class:`GenerationError` is raised. See the module docstring for what
    the seed guarantees.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown generation backend {backend!r}; available: {', '.join(BACKENDS)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    params = params or SamplingParams()
    _validate(requests)
    if not requests:
        return []
    loaded = model_dir if isinstance(model_dir, LoadedModel) else load_model(model_dir, device=device)

    texts = [_prompt_text(loaded.tokenizer, r["conversation"]) for r in requests]
    lengths = [len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    pending = sorted(range(len(requests)), key=lambda i: -lengths[i])  # request indices
    by_key: dict[Hashable, Result] = {}
    size = batch_size
    while pending:
        if should_stop is not None and should_stop():
            break
        batch = pending[:size]
        try:
            results = generate_batch(loaded, [requests[i] for i in batch], params)
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not _is_oom(exc):
                raise
            if loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            if size == 1:
                raise GenerationError(
                    f"Out of {loaded.device.type.upper()} memory generating a single response "
                    f"({lengths[batch[0]]} prompt tokens + up to {params.max_new_tokens} new). "
                    "Lower max_new_tokens, shorten the prompt, or use a larger GPU."
                ) from exc
            size //= 2
            continue
        pending = pending[len(batch) :]
        for result in results:
            by_key[result["key"]] = result
        if on_batch is not None:
            on_batch(results, len(by_key), len(requests))
    return [by_key[r["key"]] for r in requests if r["key"] in by_key]

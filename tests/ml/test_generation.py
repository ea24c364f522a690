"""Candidate generation: batching, padding, seeds, stop reasons, errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from training.ml import generation
from training.ml.checkpoints import CheckpointNotFound
from training.ml.generation import (
    GenerationError,
    SamplingParams,
    encode_prompts,
    generate_responses,
    load_model,
    resolve_device,
)

PROMPTS = [
    "Hi",
    "Write a haiku about autumn leaves falling into a quiet river.",
    "What is 2 + 2?",
    "Explain, in two sentences, why the sky is blue during the day and red at sunset.",
    "Name a colour.",
    "Tell me a joke about a cat.",
]


def _requests(prompts=PROMPTS, seed_offset=0):
    return [
        {"key": f"p{i}", "conversation": [{"role": "user", "content": text}], "seed": i + seed_offset}
        for i, text in enumerate(prompts)
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's matmuls are too small to gain from threads, and on a busy machine two
    # torch threads waiting on each other every op make a sub-second test take tens of seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint, device="cpu")


SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
GREEDY = SamplingParams(do_sample=False, max_new_tokens=8)


def test_it_returns_one_result_per_request_in_request_order(tiny):
    requests = _requests()
    results = generate_responses(tiny, requests, SAMPLED, batch_size=4)
    assert [r["key"] for r in results] == [r["key"] for r in requests]
    for result in results:
        assert set(result) == {"key", "text", "token_count", "finish_reason"}
        assert 0 <= result["token_count"] <= SAMPLED.max_new_tokens
        assert result["finish_reason"] in ("eos", "length")
    assert len({r["text"] for r in results}) == len(results)  # different seeds, different text


def test_it_loads_from_a_path(tiny_checkpoint):
    results = generate_responses(tiny_checkpoint, _requests()[:2], SAMPLED, device="cpu")
    assert len(results) == 2


def test_it_left_pads_with_a_pad_token_distinct_from_eos(tiny):
    tokenizer = tiny.tokenizer
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    conversations = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": PROMPTS[3]}]]
    enc = encode_prompts(tokenizer, conversations)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    short = int(mask[0].sum())
    assert short < ids.shape[1]
    assert mask[0, : ids.shape[1] - short].eq(0).all()  # padding on the left ...
    assert ids[0, : ids.shape[1] - short].eq(tokenizer.pad_token_id).all()
    assert mask[:, -1].eq(1).all()  # ... so every row ends on its own last prompt token
    assert tokenizer.decode(ids[0, -short:]).endswith("<|im_start|>assistant\n")


def test_it_gives_the_same_text_whatever_the_batch_composition(tiny):
    requests = _requests()
    for params in (SAMPLED, GREEDY):
        alone = generate_responses(tiny, requests, params, batch_size=1)
        batched = generate_responses(tiny, requests, params, batch_size=4)
        reversed_subset = generate_responses(tiny, requests[::-2], params, batch_size=3)
        assert [r["text"] for r in batched] == [r["text"] for r in alone]
        assert [r["text"] for r in reversed_subset] == [r["text"] for r in alone[::-2]]


def test_it_reproduces_a_sample_from_its_seeds_and_changes_with_them(tiny):
    requests = _requests()
    first = generate_responses(tiny, requests, SAMPLED)
    again = generate_responses(tiny, requests, SAMPLED)
    other_round = generate_responses(tiny, requests, dataclasses.replace(SAMPLED, seed=8))
    other_request_seeds = generate_responses(tiny, _requests(seed_offset=100), SAMPLED)
    assert first == again
    texts = [r["text"] for r in first]
    assert all(a != b for a, b in zip(texts, [r["text"] for r in other_round], strict=True))
    assert all(a != b for a, b in zip(texts, [r["text"] for r in other_request_seeds], strict=True))


def test_it_stops_at_eos_or_at_the_length_limit(tiny):
    requests = _requests()[:3]
    # The random tiny model, greedy, always emits "\n" (id 198) first; call that its EOS.
    newline_is_eos = dataclasses.replace(tiny, eos_token_ids=(*tiny.eos_token_ids, 198))
    stopped = generate_responses(newline_is_eos, requests, GREEDY)
    assert {(r["finish_reason"], r["token_count"], r["text"]) for r in stopped} == {("eos", 0, "")}

    cut = generate_responses(tiny, requests, GREEDY)
    assert {(r["finish_reason"], r["token_count"]) for r in cut} == {("length", GREEDY.max_new_tokens)}


def test_it_reports_each_batch_with_progress(tiny):
    calls = []
    generate_responses(
        tiny,
        _requests(),
        SAMPLED,
        batch_size=4,
        on_batch=lambda results, done, total: calls.append(([r["key"] for r in results], done, total)),
    )
    assert [(len(keys), done, total) for keys, done, total in calls] == [(4, 4, 6), (2, 6, 6)]
    assert sorted(k for keys, _, _ in calls for k in keys) == sorted(r["key"] for r in _requests())


def test_it_sends_the_longest_prompts_first(tiny):
    calls = []
    generate_responses(tiny, _requests(), SAMPLED, batch_size=2, on_batch=lambda r, *_: calls.append(r))
    assert {r["key"] for r in calls[0]} == {"p1", "p3"}  # the two long prompts share the first batch


def test_it_stops_between_batches_when_asked(tiny):
    calls = []
    results = generate_responses(
        tiny,
        _requests(),
        SAMPLED,
        batch_size=2,
        on_batch=lambda r, *_: calls.append(r),
        should_stop=lambda: len(calls) == 2,
    )
    assert len(results) == 4 and len(calls) == 2


def test_it_halves_the_batch_on_out_of_memory(tiny, monkeypatch):
    expected = generate_responses(tiny, _requests(), SAMPLED, batch_size=8)
    real = generation.generate_batch
    sizes = []

    def small_gpu(loaded, batch, params):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(loaded, batch, params)

    monkeypatch.setattr(generation, "generate_batch", small_gpu)
    results = generate_responses(tiny, _requests(), SAMPLED, batch_size=8)
    assert sizes == [6, 4, 2, 2, 2]
    assert results == expected


def test_it_gives_up_in_plain_words_when_one_request_does_not_fit(tiny, monkeypatch):
    def no_memory(loaded, batch, params):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(generation, "generate_batch", no_memory)
    with pytest.raises(GenerationError, match="memory generating a single response"):
        generate_responses(tiny, _requests(), SAMPLED, batch_size=4)


def test_it_passes_other_runtime_errors_through(tiny, monkeypatch):
    def broken(loaded, batch, params):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(generation, "generate_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        generate_responses(tiny, _requests(), SAMPLED)


def test_it_says_when_the_checkpoint_is_missing(tmp_path):
    with pytest.raises(CheckpointNotFound):
        generate_responses(tmp_path / "no-such-checkpoint", _requests(), SAMPLED)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="not a complete checkpoint"):
        generate_responses(tmp_path / "empty", _requests(), SAMPLED)


def test_it_refuses_a_tokenizer_without_chat_template(tiny_checkpoint, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_checkpoint, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config_path = plain / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(GenerationError, match="no chat template"):
        generate_responses(plain, _requests(), SAMPLED)


def test_it_rejects_bad_requests_and_params(tiny):
    with pytest.raises(ValueError, match="appears twice"):
        generate_responses(tiny, _requests()[:1] * 2, SAMPLED)
    with pytest.raises(ValueError, match="conversation"):
        generate_responses(tiny, [{"key": 1, "conversation": []}], SAMPLED)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert generate_responses(tiny, [], SAMPLED) == []


def test_it_picks_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GenerationError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.slow
def test_it_writes_english_with_smollm2(smollm2_checkpoint):
    prompts = [
        "What is the capital of France? Answer in one sentence.",
        "Give me one tip for sleeping better.",
        "Write a short greeting for a new colleague.",
    ]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=48, seed=0)
    results = generate_responses(smollm2_checkpoint, _requests(prompts), params, device="cpu", batch_size=3)
    assert len(results) == 3
    english = {"the", "a", "to", "and", "is", "of", "you", "your", "i", "for", "in", "welcome", "paris"}
    for result in results:
        words = result["text"].lower().replace(".", " ").replace(",", " ").split()
        assert words, result
        assert english & set(words), result
        assert result["finish_reason"] in ("eos", "length")
        assert 0 < result["token_count"] <= params.max_new_tokens
        if result["finish_reason"] == "length":
            assert result["token_count"] == params.max_new_tokens
    assert any(r["finish_reason"] == "eos" for r in results)  # a one-sentence answer ends by itself


@pytest.mark.parametrize("temperature, spread", [(1.0, 3.0), (0.7, 8.0), (1.3, 0.5)])
def test_the_sampler_draws_the_same_tokens_with_or_without_the_full_sort(temperature, spread):
    """The nucleus taken from the top candidates is the nucleus of the full sort: every draw is
    the same token, for peaked logits and for flat ones (where the full sort is still used)."""
    from training.ml.generation import PerRequestSampler

    seeds = list(range(16))
    fast = PerRequestSampler(seeds, temperature, 0.95)
    full = PerRequestSampler(seeds, temperature, 0.95)
    full.CANDIDATES = 10**9  # always the full sort
    logits = torch.Generator().manual_seed(7)
    ids = torch.zeros(16, 3, dtype=torch.long)
    used_full_sort = 0
    for _ in range(40):
        scores = torch.randn(16, 49152, generator=logits) * spread
        scores[:8] += torch.randn(8, 49152, generator=logits) * spread * 3  # half the rows peaked
        probs = torch.softmax(scores / temperature, dim=-1)
        used_full_sort += int((probs.topk(fast.CANDIDATES).values.sum(-1) < 0.95).sum())
        assert torch.equal(fast(ids, scores).argmax(-1), full(ids, scores).argmax(-1))
    if spread < 1:
        assert used_full_sort > 0  # flat rows went through the fallback, and agreed

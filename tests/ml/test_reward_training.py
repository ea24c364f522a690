"""Bradley-Terry reward-model training on a tiny random Llama (training.ml.reward)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest

from training.ml.reward import (
    RESULTS_FILE,
    RewardModelConfig,
    RewardScorer,
    TrainingHooks,
    evaluate_reward_model,
    load_reward_model,
    main,
    score_responses,
    to_trl_dataset,
    train_reward_model,
)

WORDS = "the a river stone cloud green quick slow paper window table music light orange seven under over maybe".split()
MAGIC = "thanks"  # the synthetic annotators always prefer the response that says it


def synthetic_pairs(n_prompts: int, seed: int, per_prompt: int = 2) -> list[dict]:
    """Pair rows where the chosen response contains MAGIC and the rejected one does not."""
    rng = random.Random(seed)
    rows = []
    for p in range(n_prompts):
        prompt = [{"role": "user", "content": f"Say something about {' '.join(rng.sample(WORDS, 2))}."}]
        for k in range(per_prompt):
            chosen = rng.choices(WORDS, k=rng.randint(4, 9))
            chosen.insert(rng.randint(0, len(chosen)), MAGIC)
            rejected = rng.choices(WORDS, k=rng.randint(4, 9))
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": " ".join(chosen),
                    "rejected": " ".join(rejected),
                    "margin": 0.0,
                    "weight": 1.0,
                    "prompt_id": seed * 10_000 + p,
                    "comparison_id": seed * 10_000 + p * 10 + k,
                    "judgment_id": seed * 10_000 + p * 10 + k,
                    "round": 1 + k % 2,
                    "source": "simulated",
                    "annotator": None,
                    "chosen_id": "1",
                    "rejected_id": "2",
                }
            )
    return rows


# A random 2-layer, 64-wide model learns the rule in ~2 epochs of 100 pairs at this rate.
TINY_CONFIG = RewardModelConfig(
    learning_rate=1e-3, num_epochs=2, batch_size=8, warmup_ratio=0.0, logging_steps=1
)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


# --- no training ------------------------------------------------------------------------------


def test_pairs_become_trl_conversational_rows_with_margin_and_weight():
    rows = synthetic_pairs(2, seed=0)
    rows[0]["margin"], rows[0]["weight"] = 1.0, 0.5
    ds = to_trl_dataset(rows, use_margin=True, use_weights=True)
    assert ds[0]["prompt"] == rows[0]["prompt"]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": rows[0]["chosen"]}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": rows[0]["rejected"]}]
    # Weights are rescaled to mean 1 over the dataset: 0.5, 1, 1, 1 -> mean 0.875.
    assert ds[0]["margin"] == 1.0
    assert ds["weight"] == pytest.approx([0.5 / 0.875, 1 / 0.875, 1 / 0.875, 1 / 0.875])
    assert set(to_trl_dataset(rows, use_margin=False).column_names) == {"prompt", "chosen", "rejected"}


def test_the_weighted_loss_matches_a_hand_computed_loss_with_margins():
    import torch

    from training.ml.reward import normalized_weights, weighted_preference_loss

    # Two rankings: one of K=3 (3 pairs, weight 1/3 each) and one pairwise (1 pair, weight 1).
    rows = [{"weight": 1 / 3}] * 3 + [{"weight": 1.0}]
    weights = normalized_weights(rows)  # mean of (1/3, 1/3, 1/3, 1) is 0.5
    assert weights == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    diff = torch.tensor([2.0, 0.0, -1.0, 1.0])
    margin = torch.tensor([1.0, 0.0, 0.0, 0.5])

    def nll(x):
        return math.log1p(math.exp(-x))

    # Textbook: each ranking counts once -> mean over rankings of the mean over its pairs.
    by_hand = 0.5 * ((nll(2.0 - 1.0) + nll(0.0) + nll(-1.0)) / 3 + nll(1.0 - 0.5))
    loss = weighted_preference_loss(diff, torch.tensor(weights), margin)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_per_ranking_weights_survive_batching_when_every_ranking_has_the_same_k():
    """The old loss divided by each micro-batch's sum of weights: with one K for every ranking,
    every pair weighs the same, and a batch of one ranking's pairs weighed like any other. With a
    dataset-wide constant, two batches of different rankings add up to the whole-dataset loss."""
    import torch

    from training.ml.reward import normalized_weights, weighted_preference_loss

    rows = [{"weight": 1 / 6}] * 6 + [{"weight": 1.0}]  # a 4-wise ranking, then a pairwise one
    weights = torch.tensor(normalized_weights(rows))
    diff = torch.linspace(-1, 2, 7)
    whole = weighted_preference_loss(diff, weights)
    halves = (
        weighted_preference_loss(diff[:4], weights[:4]) * 4
        + weighted_preference_loss(diff[4:], weights[4:]) * 3
    ) / 7
    assert halves.item() == pytest.approx(whole.item(), rel=1e-6)
    nll = -torch.nn.functional.logsigmoid(diff)
    assert whole.item() == pytest.approx(0.5 * (nll[:6].mean() + nll[6]).item(), rel=1e-6)


def test_the_config_is_documented_and_refuses_unknown_fields():
    for f in dataclasses.fields(RewardModelConfig):
        assert f.metadata.get("help"), f.name
    assert RewardModelConfig.from_dict({"learning_rate": 0.1}).learning_rate == 0.1
    with pytest.raises(ValueError, match="learnig_rate"):
        RewardModelConfig.from_dict({"learnig_rate": 0.1})


def test_a_loaded_reward_model_has_one_label_no_dropout_and_a_distinct_pad(tiny_checkpoint):
    model, tokenizer = load_reward_model(tiny_checkpoint)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert all(v == 0.0 for k, v in vars(model.config).items() if "dropout" in k and isinstance(v, float))


def test_an_untrained_model_has_not_learned(tiny_checkpoint):
    scorer = RewardScorer(*load_reward_model(tiny_checkpoint))
    result = evaluate_reward_model(scorer, synthetic_pairs(10, seed=5))
    assert result["pairs"] == 20
    assert abs(result["loss"] - math.log(2)) < 0.02  # a fresh head outputs ~0 for everything
    assert result["learned"] is False
    assert set(result["by_round"]) == {"1", "2"} and set(result["by_source"]) == {"simulated"}


def test_scores_do_not_depend_on_batching_or_padding(tiny_checkpoint):
    scorer = RewardScorer(*load_reward_model(tiny_checkpoint))
    rows = synthetic_pairs(6, seed=7, per_prompt=1)
    conversations, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    one_by_one = scorer.score(conversations, responses, batch_size=1)
    batched = scorer.score(conversations, responses, batch_size=6)
    assert batched == pytest.approx(one_by_one, abs=1e-5)


# --- training ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_it_learns_which_response_annotators_prefer_and_saves_a_usable_model(tiny_checkpoint, tmp_path):
    metrics, progress = [], []
    hooks = TrainingHooks(
        on_metrics=lambda s, m: metrics.append((s, m)), on_progress=lambda s, t: progress.append((s, t))
    )
    held_out = synthetic_pairs(30, seed=2)
    out = tmp_path / "rm"

    results = train_reward_model(
        synthetic_pairs(50, seed=1),
        held_out,
        tiny_checkpoint,
        out,
        TINY_CONFIG,
        hooks,
        metadata={"sha256": "abc"},
    )

    assert results["status"] == "completed" and results["model_dir"] == str(out)
    assert results["eval"]["accuracy"] >= 0.9
    assert results["eval"]["learned"] is True
    assert results["eval"]["loss"] < 0.4
    assert results["eval"]["by_round"]["1"]["accuracy"] >= 0.9
    assert results["train"]["pairs"] == 100 and results["train"]["pairs_seen"] == 200
    assert progress[0] == (0, results["total_steps"]) and progress[-1] == (results["total_steps"],) * 2
    step_metrics = [m for _, m in metrics if "accuracy" in m]
    assert {"loss", "accuracy", "margin"} <= set(step_metrics[0])
    assert step_metrics[-1]["accuracy"] > step_metrics[0]["accuracy"] or step_metrics[-1]["accuracy"] == 1.0

    # The transformer weights moved (not only the new head).
    before, after = _weights(tiny_checkpoint), _weights(out)
    name = next(k for k in after if "layers.0.self_attn.q_proj" in k)
    assert (after[name] - before[name]).abs().max() > 1e-4
    assert "score.weight" in after and after["score.weight"].shape[0] == 1

    record = json.loads((out / RESULTS_FILE).read_text())
    assert (
        record["metadata"] == {"sha256": "abc"} and record["eval"]["accuracy"] == results["eval"]["accuracy"]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert not (out / "training_args.bin").exists()  # no pickles in a published directory
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # other workers can read it

    # The saved model scores like the one just trained, through the reusable scorer.
    r = held_out[0]
    chosen, rejected = score_responses(out, [r["prompt"], r["prompt"]], [r["chosen"], r["rejected"]])
    assert chosen > rejected


@pytest.mark.slow
def test_should_stop_cancels_training_within_a_step_and_saves_nothing(tiny_checkpoint, tmp_path):
    seen = []

    def should_stop():
        return len(seen) >= 3

    hooks = TrainingHooks(on_progress=lambda step, total: seen.append(step), should_stop=should_stop)
    config = dataclasses.replace(TINY_CONFIG, num_epochs=5)
    results = train_reward_model(
        synthetic_pairs(20, seed=1),
        synthetic_pairs(4, seed=2),
        tiny_checkpoint,
        tmp_path / "rm",
        config,
        hooks,
    )
    assert results["status"] == "cancelled"
    assert results["steps"] == 2 < results["total_steps"] == 25
    assert results["model_dir"] is None and results["eval"] is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_interrupted_save_leaves_nothing_at_the_final_path(tiny_checkpoint, tmp_path, monkeypatch):
    from transformers import Trainer

    real_save = Trainer.save_model

    def save_then_crash(self, output_dir=None, *args, **kwargs):
        real_save(self, output_dir, *args, **kwargs)  # every file is written, the rename has not happened
        raise OSError("disk full")

    monkeypatch.setattr(Trainer, "save_model", save_then_crash)
    config = dataclasses.replace(TINY_CONFIG, max_steps=1)
    with pytest.raises(OSError, match="disk full"):
        train_reward_model(
            synthetic_pairs(4, seed=1), synthetic_pairs(2, seed=2), tiny_checkpoint, tmp_path / "rm", config
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_per_ranking_weights_and_margins_train_through_the_command_line(tiny_checkpoint, tmp_path):
    from training.ml.pairs import write_snapshot_jsonl

    rows = synthetic_pairs(6, seed=1)
    for i, r in enumerate(rows):
        r["weight"], r["margin"] = (0.5 if i % 2 else 1.0), (1.0 if i % 3 == 0 else 0.0)
    write_snapshot_jsonl(rows, tmp_path / "train.jsonl")
    run = {
        "train_pairs": str(tmp_path / "train.jsonl"),
        "eval_pairs": None,
        "base_checkpoint": str(tiny_checkpoint),
        "out_dir": str(tmp_path / "rm"),
        "reward": {"max_steps": 2, "batch_size": 4, "eval_fraction": 0.34, "learning_rate": 1e-3},
        "results_path": str(tmp_path / "results.json"),
        "metrics_path": str(tmp_path / "metrics.jsonl"),
    }
    (tmp_path / "run.json").write_text(json.dumps(run))

    assert main(["--config", str(tmp_path / "run.json")]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 2
    assert results["train"]["pairs"] + results["eval"]["pairs"] == len(rows)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [x["metrics"]["loss"] for x in lines if "metrics" in x and "loss" in x["metrics"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert {"step": 2, "total": 2} in lines


def test_only_the_top_layers_and_the_head_train_when_asked(tiny_checkpoint):
    from training.ml.checkpoints import train_top_layers_only
    from training.ml.ppo import PPOConfig, load_models

    model, _ = load_reward_model(tiny_checkpoint)  # two layers
    everything = sum(p.numel() for p in model.parameters())
    left = train_top_layers_only(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert 0 < left < everything
    assert any(".layers.1." in n for n in trainable) and "score.weight" in trainable
    assert not any(".layers.0." in n or "embed_tokens" in n for n in trainable)
    assert train_top_layers_only(load_reward_model(tiny_checkpoint)[0], None) == everything

    _tok, policy, _ref, value, _rm, _fn = load_models(
        tiny_checkpoint, lambda *a: [0.0], PPOConfig(trainable_layers=1, batch_size=4, mini_batch_size=4)
    )
    for m in (policy, value):
        frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
        assert any(".layers.0." in n for n in frozen) and not any(".layers.1." in n for n in frozen)

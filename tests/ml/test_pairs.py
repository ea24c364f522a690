"""Judgments -> preference pairs, snapshot hash and split (training.ml.pairs)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random

import pytest

from training.ml.pairs import (
    PairOptions,
    comparison_agreement,
    judgments_to_pairs,
    passes_gold,
    read_snapshot_jsonl,
    snapshot_metadata,
    snapshot_sha256,
    split_by_prompt,
    write_snapshot_jsonl,
)

PROMPT = [{"role": "user", "content": "Name a fruit."}]
RESPONSES = {"12": "Apple.", "14": "A rock.", "15": "Banana.", "16": "Cherry."}
_ids = itertools.count(1)


def judgment(ranking, **fields):
    base = {
        "judgment_id": next(_ids),
        "comparison_id": 100,
        "annotator": "ann-a",
        "round": 1,
        "source": "human",
        "prompt_id": 7,
        "prompt": PROMPT,
        "responses": {rid: RESPONSES[rid] for group in ranking for rid in group},
        "ranking": ranking,
        "strength": None,
        "both_bad": False,
        "is_gold": False,
        "gold_ranking": None,
        "created_at": "2026-01-05T10:00:00+00:00",
    }
    base.update(fields)
    return base


def pair_ids(rows):
    return sorted((r["chosen_id"], r["rejected_id"]) for r in rows)


# --- pairwise ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("strength", "margin"), [("much", 1.0), ("slight", 0.5), (None, 0.0)])
def test_it_turns_a_pairwise_judgment_into_one_pair_with_the_strength_as_margin(strength, margin):
    j = judgment([["12"], ["14"]], strength=strength)
    [row] = judgments_to_pairs([j])
    assert row["prompt"] == PROMPT
    assert (row["chosen"], row["rejected"]) == ("Apple.", "A rock.")
    assert (row["chosen_id"], row["rejected_id"]) == ("12", "14")
    assert row["margin"] == margin
    assert row["weight"] == 1.0
    assert row["judgment_id"] == j["judgment_id"]
    assert (row["prompt_id"], row["comparison_id"], row["round"], row["source"], row["annotator"]) == (
        7,
        100,
        1,
        "human",
        "ann-a",
    )


def test_it_uses_a_configured_margin_map():
    options = PairOptions(margins={"much": 2.0, "slight": 0.25, None: 0.1})
    rows = judgments_to_pairs(
        [judgment([["12"], ["14"]], strength="much"), judgment([["15"], ["14"]], comparison_id=101)], options
    )
    assert sorted(r["margin"] for r in rows) == [0.1, 2.0]


def test_it_rejects_an_unknown_strength():
    with pytest.raises(ValueError, match="strength"):
        judgments_to_pairs([judgment([["12"], ["14"]], strength="enormous")])


def test_it_rejects_a_ranking_naming_an_unknown_response():
    j = judgment([["12"], ["14"]])
    j["ranking"] = [["12"], ["99"]]
    with pytest.raises(ValueError, match="unknown response"):
        judgments_to_pairs([j])


def test_a_tie_yields_no_pair():
    assert judgments_to_pairs([judgment([["12", "14"]])]) == []


def test_both_bad_yields_no_pair_by_default_and_a_pair_when_kept():
    j = judgment([["12"], ["14"]], both_bad=True, strength="slight")
    assert judgments_to_pairs([j]) == []
    [row] = judgments_to_pairs([j], PairOptions(keep_both_bad=True))
    assert (row["chosen_id"], row["rejected_id"], row["margin"]) == ("12", "14", 0.5)


# --- K-wise -----------------------------------------------------------------------------------


def test_a_k_wise_ranking_yields_every_pair_across_groups_with_the_default_margin():
    j = judgment([["12"], ["15"], ["16"], ["14"]], strength="much")  # strength is ignored for K-wise
    rows = judgments_to_pairs([j])
    assert len(rows) == 6  # C(4, 2)
    assert pair_ids(rows) == sorted(
        [("12", "15"), ("12", "16"), ("12", "14"), ("15", "16"), ("15", "14"), ("16", "14")]
    )
    assert {r["margin"] for r in rows} == {0.0}


def test_a_k_wise_ranking_with_a_tie_yields_pairs_across_groups_only():
    rows = judgments_to_pairs([judgment([["12"], ["15", "16"], ["14"]])])
    assert len(rows) == 1 * 2 + 1 * 1 + 2 * 1  # 5: every pair except 15 vs 16
    assert ("15", "16") not in pair_ids(rows) and ("16", "15") not in pair_ids(rows)
    assert pair_ids(rows) == sorted([("12", "15"), ("12", "16"), ("12", "14"), ("15", "14"), ("16", "14")])


def test_per_ranking_weighting_makes_each_ranking_count_once():
    options = PairOptions(weighting="per_ranking")
    rows = judgments_to_pairs(
        [judgment([["12"], ["15"], ["14"]]), judgment([["12"], ["14"]], comparison_id=101)], options
    )
    weights_by_comparison = {}
    for r in rows:
        weights_by_comparison.setdefault(r["comparison_id"], []).append(r["weight"])
    assert sum(weights_by_comparison[100]) == pytest.approx(1.0)
    assert weights_by_comparison[100] == [pytest.approx(1 / 3)] * 3
    assert weights_by_comparison[101] == [1.0]


# --- several annotators -------------------------------------------------------------------------


def three_annotators(rankings):
    return [
        judgment(ranking, annotator=name, strength="much")
        for name, ranking in zip(["ann-a", "ann-b", "ann-c"], rankings, strict=False)
    ]


def test_every_judgment_is_its_own_pair_by_default():
    js = three_annotators([[["12"], ["14"]], [["12"], ["14"]], [["14"], ["12"]]])
    rows = judgments_to_pairs(js)
    assert len(rows) == 3
    assert sorted(r["annotator"] for r in rows) == ["ann-a", "ann-b", "ann-c"]
    assert pair_ids(rows) == [("12", "14"), ("12", "14"), ("14", "12")]


def test_majority_aggregation_keeps_the_majority_verdict_once():
    js = three_annotators([[["12"], ["14"]], [["12"], ["14"]], [["14"], ["12"]]])
    js[1]["strength"] = "slight"
    [row] = judgments_to_pairs(js, PairOptions(aggregate="majority"))
    assert (row["chosen_id"], row["rejected_id"]) == ("12", "14")
    assert row["judgment_id"] == [js[0]["judgment_id"], js[1]["judgment_id"]]
    assert row["annotator"] == ["ann-a", "ann-b"]
    assert row["margin"] == pytest.approx(0.75)  # mean of much (1.0) and slight (0.5)


def test_majority_aggregation_drops_an_exact_split_and_a_majority_tie():
    split = three_annotators([[["12"], ["14"]], [["14"], ["12"]]])
    assert judgments_to_pairs(split, PairOptions(aggregate="majority")) == []
    tie = three_annotators([[["12", "14"]], [["12", "14"]], [["12"], ["14"]]])
    assert judgments_to_pairs(tie, PairOptions(aggregate="majority")) == []


def test_majority_aggregation_of_k_wise_rankings_votes_per_pair_of_responses():
    js = three_annotators([[["12"], ["15"], ["14"]], [["15"], ["12"], ["14"]], [["12"], ["15"], ["14"]]])
    rows = judgments_to_pairs(js, PairOptions(aggregate="majority"))
    assert pair_ids(rows) == [("12", "14"), ("12", "15"), ("15", "14")]
    by_pair = {(r["chosen_id"], r["rejected_id"]): r for r in rows}
    assert len(by_pair[("12", "15")]["judgment_id"]) == 2
    assert len(by_pair[("12", "14")]["judgment_id"]) == 3


def test_low_agreement_comparisons_are_dropped():
    agreeing = three_annotators([[["12"], ["14"]]] * 3)
    disputed = [
        dict(j, comparison_id=101, prompt_id=8)
        for j in three_annotators([[["12"], ["14"]], [["14"], ["12"]], [["12", "14"]]])
    ]
    assert comparison_agreement(agreeing) == 1.0
    assert comparison_agreement(disputed) == pytest.approx(1 / 3)
    rows = judgments_to_pairs(agreeing + disputed, PairOptions(min_agreement=0.6))
    assert {r["comparison_id"] for r in rows} == {100}
    assert len(rows) == 3


# --- gold -------------------------------------------------------------------------------------


def test_passing_gold_means_agreeing_on_every_pair_gold_orders():
    gold = [["12"], ["15", "16"], ["14"]]
    assert passes_gold([["12"], ["16"], ["15"], ["14"]], gold)  # gold ties 15/16: free
    assert not passes_gold([["12"], ["15"], ["14"], ["16"]], gold)  # 16 below 14
    assert not passes_gold([["12", "15"], ["16"], ["14"]], gold)  # ties a pair gold orders


def test_annotators_who_fail_gold_are_dropped_and_gold_items_stay_out_of_training():
    gold = [["12"], ["14"]]

    def gold_j(annotator, ranking):
        return judgment(
            ranking, annotator=annotator, comparison_id=900, prompt_id=90, is_gold=True, gold_ranking=gold
        )

    judgments = [
        gold_j("good", [["12"], ["14"]]),
        gold_j("bad", [["14"], ["12"]]),
        gold_j("new", [["12"], ["14"]]),
        judgment([["15"], ["16"]], annotator="good", comparison_id=1),
        judgment([["15"], ["16"]], annotator="bad", comparison_id=1),
        judgment([["15"], ["16"]], annotator="unseen", comparison_id=1),  # no gold judgment: kept
        judgment([["15"], ["16"]], annotator=None, source="imported:hh", comparison_id=2),
    ]
    rows = judgments_to_pairs(judgments, PairOptions(min_gold_accuracy=0.8))
    assert sorted(r["annotator"] or "-" for r in rows) == ["-", "good", "unseen"]
    assert 900 not in {r["comparison_id"] for r in rows}

    with_gold = judgments_to_pairs(judgments, PairOptions(min_gold_accuracy=0.8, include_gold=True))
    assert sorted(r["annotator"] for r in with_gold if r["comparison_id"] == 900) == ["good", "new"]

    unfiltered = judgments_to_pairs(judgments)
    assert "bad" in {r["annotator"] for r in unfiltered}


def test_annotators_with_too_few_gold_judgments_are_not_judged():
    gold = [["12"], ["14"]]
    judgments = [
        judgment([["14"], ["12"]], annotator="once", comparison_id=900, is_gold=True, gold_ranking=gold),
        judgment([["15"], ["16"]], annotator="once", comparison_id=1),
    ]
    assert judgments_to_pairs(judgments, PairOptions(min_gold_accuracy=0.5, min_gold_judgments=2))
    assert not judgments_to_pairs(judgments, PairOptions(min_gold_accuracy=0.5, min_gold_judgments=1))


# --- snapshot ---------------------------------------------------------------------------------


def some_rows():
    js = [
        judgment([["12"], ["15", "16"], ["14"]]),
        judgment([["12"], ["14"]], comparison_id=101, prompt_id=8, strength="much"),
        judgment([["16"], ["15"]], comparison_id=102, prompt_id=9, annotator="ann-b", round=2),
    ]
    return judgments_to_pairs(js)


def test_the_snapshot_hash_ignores_input_order():
    rows = some_rows()
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    reordered_keys = [dict(reversed(list(r.items()))) for r in shuffled]
    assert snapshot_sha256(rows) == snapshot_sha256(shuffled) == snapshot_sha256(reordered_keys)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.update(margin=0.25),
        lambda r: r.update(chosen=r["chosen"] + " "),
        lambda r: r.update(prompt=[{"role": "user", "content": "Name a vegetable."}]),
        lambda r: r.update(round=None),
        lambda r: r.update(source="simulated"),
        lambda r: r.update(annotator="ann-z"),
        lambda r: r.update(weight=0.5),
        lambda r: r.update(judgment_id=10_000),
    ],
)
def test_any_changed_field_changes_the_snapshot_hash(change):
    rows = some_rows()
    changed = [dict(r) for r in rows]
    change(changed[2])
    assert snapshot_sha256(changed) != snapshot_sha256(rows)


def test_a_dropped_or_duplicated_row_changes_the_snapshot_hash():
    rows = some_rows()
    assert snapshot_sha256(rows[1:]) != snapshot_sha256(rows)
    assert snapshot_sha256(rows + rows[:1]) != snapshot_sha256(rows)


def test_the_snapshot_file_round_trips_and_hashes_to_the_snapshot_hash(tmp_path):
    rows = some_rows()
    path = tmp_path / "snap" / "pairs.jsonl"
    digest = write_snapshot_jsonl(list(reversed(rows)), path)
    assert digest == snapshot_sha256(rows) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_snapshot_jsonl(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["pairs.jsonl"]  # no temp file left


def test_snapshot_metadata_records_counts_and_the_weighting_convention():
    rows = some_rows()
    meta = snapshot_metadata(rows, PairOptions(weighting="per_ranking"))
    assert meta["sha256"] == snapshot_sha256(rows)
    assert (meta["pairs"], meta["prompts"], meta["comparisons"], meta["judgments"]) == (7, 3, 3, 3)
    assert meta["loss_weighting"] == "per_ranking"
    assert meta["pairs_by_round"] == {"1": 6, "2": 1}
    assert meta["options"]["margins"] == {"much": 1.0, "slight": 0.5, "null": 0.0}


def test_options_are_a_documented_dataclass():
    for f in dataclasses.fields(PairOptions):
        assert f.metadata.get("help"), f.name


# --- split ------------------------------------------------------------------------------------


def many_prompt_rows(n_prompts=40):
    js = []
    for p in range(n_prompts):
        for a in ("ann-a", "ann-b"):
            js.append(judgment([["12"], ["15"], ["14"]], prompt_id=p, comparison_id=1000 + p, annotator=a))
    return judgments_to_pairs(js)


def test_split_by_prompt_keeps_each_prompt_on_one_side_and_is_deterministic():
    rows = many_prompt_rows()
    train, held_out = split_by_prompt(rows, eval_fraction=0.25, seed=1)
    train_prompts = {r["prompt_id"] for r in train}
    eval_prompts = {r["prompt_id"] for r in held_out}
    assert not train_prompts & eval_prompts
    assert len(eval_prompts) == 10 and len(train) + len(held_out) == len(rows)
    shuffled = list(rows)
    random.Random(0).shuffle(shuffled)
    again_train, again_eval = split_by_prompt(shuffled, eval_fraction=0.25, seed=1)
    assert {r["prompt_id"] for r in again_eval} == eval_prompts
    _, other_seed = split_by_prompt(rows, eval_fraction=0.25, seed=2)
    assert {r["prompt_id"] for r in other_seed} != eval_prompts


def test_split_by_prompt_holds_out_at_least_one_prompt_and_never_all():
    rows = many_prompt_rows(2)
    train, held_out = split_by_prompt(rows, eval_fraction=0.01, seed=0)
    assert len({r["prompt_id"] for r in held_out}) == 1 and train
    assert split_by_prompt(rows, eval_fraction=0.0)[1] == []

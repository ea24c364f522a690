"""Agreement: Krippendorff's alpha against published values, pairwise agreement, left-pick rate."""

from __future__ import annotations

import math

import pytest

from training.ml.agreement import annotator_agreement, krippendorff_alpha, left_pick_rate, reliability_matrix

_ = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C:
# 4 observers x 12 units, values 1-5, with missing values.
PAPER_EXAMPLE = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]
# Same paper, example A: binary data, two observers, no missing values (alpha = 0.095).
BINARY_EXAMPLE = [[0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]]
# Random 4 x 20 matrix; reference values from the `krippendorff` PyPI package (0.8.x).
RANDOM_EXAMPLE = [
    [4, 0, _, 2, _, 1, 1, 0, 3, _, 0, _, 0, 0, 3, 0, 3, 1, 2, 4],
    [_, 2, 1, 1, 4, 2, 0, 4, 4, 4, _, 4, 3, _, 4, 3, 3, 1, _, 4],
    [0, 2, _, _, 0, 1, 0, 3, _, 3, _, _, _, 0, _, 2, 2, _, 4, 2],
    [4, 4, _, 0, 1, _, 2, _, 3, 4, 0, _, _, 3, 1, _, 2, 0, _, 4],
]


@pytest.mark.parametrize(
    ("data", "level", "expected"),
    [
        (PAPER_EXAMPLE, "nominal", 0.743),
        (PAPER_EXAMPLE, "ordinal", 0.815),
        (PAPER_EXAMPLE, "interval", 0.849),
        (BINARY_EXAMPLE, "nominal", 0.095),
    ],
)
def test_it_matches_krippendorffs_worked_examples(data, level, expected):
    assert krippendorff_alpha(data, level=level) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(
    ("level", "expected"),
    [("nominal", 0.045909849749582676), ("ordinal", 0.18105211132734067), ("interval", 0.18441558441558437)],
)
def test_it_matches_the_reference_package(level, expected):
    assert krippendorff_alpha(RANDOM_EXAMPLE, level=level) == pytest.approx(expected, abs=1e-12)


def test_it_treats_nan_as_missing_and_accepts_labels():
    with_nan = [[math.nan if v is None else v for v in row] for row in PAPER_EXAMPLE]
    assert krippendorff_alpha(with_nan) == pytest.approx(krippendorff_alpha(PAPER_EXAMPLE))
    labels = {1: "a", 2: "b", 3: "tie", 4: "both_bad", 5: "skip"}
    as_labels = [[labels.get(v) for v in row] for row in PAPER_EXAMPLE]
    assert krippendorff_alpha(as_labels) == pytest.approx(0.743, abs=5e-4)


def test_it_gives_one_for_perfect_agreement_and_none_when_undefined():
    assert krippendorff_alpha([["a", "b", "a", _], ["a", "b", "a", "b"]]) == 1.0
    assert krippendorff_alpha([["a", "a", "a"], ["a", "a", _]]) is None  # no variation at all
    assert krippendorff_alpha([["a", _], [_, "b"]]) is None  # nothing pairable
    assert krippendorff_alpha([]) is None
    systematic = krippendorff_alpha([["a", "b", "a", "b"], ["b", "a", "b", "a"]])
    assert systematic < 0


def test_it_builds_the_matrix_from_judgment_triples():
    triples = [
        (unit, f"coder{c}", value)
        for c, row in enumerate(PAPER_EXAMPLE)
        for unit, value in enumerate(row)
        if value is not None
    ]
    matrix, annotators, items = reliability_matrix(reversed(triples))
    assert sorted(annotators) == ["coder0", "coder1", "coder2", "coder3"]
    assert sorted(items) == list(range(12))
    assert krippendorff_alpha(matrix) == pytest.approx(0.743, abs=5e-4)
    with pytest.raises(ValueError, match="twice"):
        reliability_matrix([(1, "x", "a"), (1, "x", "b")])


def test_it_rejects_ragged_matrices_and_unknown_levels():
    with pytest.raises(ValueError, match="one entry per item"):
        krippendorff_alpha([[1, 2], [1]])
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(PAPER_EXAMPLE, level="ratio")


def test_it_scores_each_annotator_against_the_others():
    ratings = [
        ("q1", "ann", "a"),
        ("q1", "bob", "a"),
        ("q1", "cat", "b"),
        ("q2", "ann", "b"),
        ("q2", "bob", "b"),
        ("q3", "ann", "a"),
        ("q3", "cat", "b"),
        ("q4", "dan", "a"),  # nobody else saw q4
    ]
    agreement = annotator_agreement(ratings)
    # ann: q1 vs bob (=), vs cat (≠); q2 vs bob (=); q3 vs cat (≠) -> 2 of 4
    assert agreement["ann"] == {"agreement": 0.5, "pairs": 4, "items": 3}
    assert agreement["bob"] == {"agreement": 2 / 3, "pairs": 3, "items": 2}
    assert agreement["cat"] == {"agreement": 0.0, "pairs": 3, "items": 2}
    assert agreement["dan"] == {"agreement": None, "pairs": 0, "items": 0}
    with pytest.raises(ValueError, match="twice"):
        annotator_agreement([("q1", "ann", "a"), ("q1", "ann", "b")])


def test_it_measures_the_left_pick_rate_against_chance():
    unbiased = left_pick_rate([(0, 2)] * 50 + [(1, 2)] * 50)
    assert unbiased["rate"] == 0.5 and unbiased["expected"] == 0.5 and unbiased["n"] == 100
    assert unbiased["lower"] < 0.5 < unbiased["upper"]

    biased = left_pick_rate([(0, 2)] * 80 + [(1, 2)] * 20)
    assert biased["rate"] == 0.8
    assert biased["lower"] > biased["expected"]  # chance lies outside the interval: position bias

    mixed = left_pick_rate([(0, 2), (2, 4), (1, 3), (0, 4)])
    assert mixed["rate"] == 0.5
    assert mixed["expected"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 3 + 1 / 4) / 4)

    assert left_pick_rate([])["rate"] is None
    with pytest.raises(ValueError, match="Invalid pick"):
        left_pick_rate([(2, 2)])
    with pytest.raises(ValueError, match="Invalid pick"):
        left_pick_rate([(0, 1)])

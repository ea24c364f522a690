"""Annotator agreement and position bias: Krippendorff's alpha, pairwise agreement, left-pick rate.

Pure Python/numpy, no Django. Ratings come either as a reliability matrix
(annotators × items, ``None`` or NaN where an annotator did not rate an item) or
as ``(item, annotator, value)`` triples, the shape judgments are stored in;
:func:`reliability_matrix` turns the second into the first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Literal

import numpy as np

from training.ml.leaderboard import win_rate_interval

Level = Literal["nominal", "ordinal", "interval"]


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def reliability_matrix(
    ratings: Iterable[tuple[Hashable, Hashable, Any]],
) -> tuple[list[list[Any]], list[Hashable], list[Hashable]]:
    """``(item, annotator, value)`` triples as (matrix, annotators, items).

    ``matrix[a][i]`` is annotator ``annotators[a]``'s value for ``items[i]``, or None.
    Annotators and items keep their first-seen order. A repeated (item, annotator)
    raises ``ValueError``: one judgment per annotator per item.
    """
    cells: dict[tuple[Hashable, Hashable], Any] = {}
    annotators: dict[Hashable, None] = {}
    items: dict[Hashable, None] = {}
    for item, annotator, value in ratings:
        if (item, annotator) in cells:
            raise ValueError(f"Annotator {annotator!r} rated item {item!r} twice.")
        cells[item, annotator] = value
        annotators.setdefault(annotator)
        items.setdefault(item)
    matrix = [[cells.get((item, annotator)) for item in items] for annotator in annotators]
    return matrix, list(annotators), list(items)


def _coincidences(data: Sequence[Sequence[Any]], values: list[Any]) -> np.ndarray:
    """Coincidence matrix o (V, V): each pairable item adds its ordered value pairs / (m_u - 1)."""
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    n_items = len(data[0]) if data else 0
    for u in range(n_items):
        present = [index[row[u]] for row in data if not _is_missing(row[u])]
        m = len(present)
        if m < 2:
            continue  # an item rated once has nothing to agree with
        counts = np.bincount(present, minlength=len(values)).astype(np.float64)
        o += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    return o


def _distances(values: list[Any], n_c: np.ndarray, level: Level) -> np.ndarray:
    """Squared difference δ² (V, V) between values for the given level of measurement."""
    size = len(values)
    if level == "nominal":
        return 1.0 - np.eye(size)
    if level == "interval":
        x = np.asarray(values, dtype=np.float64)
        return (x[:, None] - x[None, :]) ** 2
    # ordinal: δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k) / 2)², values in rank order.
    cum = np.concatenate([[0.0], np.cumsum(n_c)])
    lo = np.minimum.outer(np.arange(size), np.arange(size))
    hi = np.maximum.outer(np.arange(size), np.arange(size))
    return (cum[hi + 1] - cum[lo] - (n_c[:, None] + n_c[None, :]) / 2) ** 2


def krippendorff_alpha(data: Sequence[Sequence[Any]], *, level: Level = "nominal") -> float | None:
    """Krippendorff's alpha for a reliability matrix (annotators × items) with missing values.

    ``data[a][i]`` is annotator a's value for item i, ``None`` (or NaN) when missing.
    Values are any hashables for ``"nominal"``; sortable for ``"ordinal"`` (their sort
    order is the scale); numbers for ``"interval"``. Items rated by fewer than two
    annotators are left out, as the method prescribes. Follows Krippendorff (2011),
    "Computing Krippendorff's Alpha-Reliability": α = 1 − (n − 1) Σ o_ck δ²_ck /
    Σ n_c n_k δ²_ck over the coincidence matrix o.

    Returns alpha (1 = perfect agreement, 0 = chance, negative = systematic
    disagreement), or None when it is undefined: fewer than two pairable values, or
    every pairable value identical (no variation to agree on).
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"Unknown level {level!r}; use 'nominal', 'ordinal' or 'interval'.")
    rows = [list(row) for row in data]
    if rows and len({len(row) for row in rows}) != 1:
        raise ValueError("Every annotator's row must have one entry per item (None where missing).")
    values = {v for row in rows for v in row if not _is_missing(v)}
    if level == "nominal":
        ordered = sorted(values, key=repr)
    else:
        ordered = sorted(values)
    o = _coincidences(rows, ordered)
    n_c = o.sum(axis=1)  # (V,)
    n = n_c.sum()
    if n < 2:
        return None
    delta = _distances(ordered, n_c, level)
    expected = (np.outer(n_c, n_c) * delta).sum()
    if expected == 0:
        return None
    return float(1.0 - (n - 1) * (o * delta).sum() / expected)


def annotator_agreement(ratings: Iterable[tuple[Hashable, Hashable, Any]]) -> dict[Hashable, dict[str, Any]]:
    """Each annotator's pairwise percent agreement with the others on the items they share.

    ``ratings`` are ``(item, annotator, value)`` triples. For every item, each pair of
    annotators who both rated it is one comparison; an annotator's agreement is the
    share of their comparisons in which the two values are equal. Returns
    ``{annotator: {"agreement": float | None, "pairs": int, "items": int}}`` where
    ``pairs`` counts comparisons, ``items`` the items shared with at least one other
    annotator, and ``agreement`` is None when there is nothing to compare.
    """
    by_item: dict[Hashable, dict[Hashable, Any]] = defaultdict(dict)
    for item, annotator, value in ratings:
        if annotator in by_item[item]:
            raise ValueError(f"Annotator {annotator!r} rated item {item!r} twice.")
        by_item[item][annotator] = value
    agree: dict[Hashable, int] = defaultdict(int)
    pairs: dict[Hashable, int] = defaultdict(int)
    items: dict[Hashable, int] = defaultdict(int)
    everyone: dict[Hashable, None] = {}
    for answers in by_item.values():
        present = [(a, v) for a, v in answers.items() if not _is_missing(v)]
        for annotator, _ in present:
            everyone.setdefault(annotator)
        if len(present) < 2:
            continue
        for annotator, value in present:
            items[annotator] += 1
            for other, other_value in present:
                if other != annotator:
                    pairs[annotator] += 1
                    agree[annotator] += value == other_value
    return {
        a: {"agreement": agree[a] / pairs[a] if pairs[a] else None, "pairs": pairs[a], "items": items[a]}
        for a in everyone
    }


def left_pick_rate(
    picks: Iterable[tuple[int, int]], *, confidence: float = 0.95
) -> dict[str, float | int | None]:
    """How often the first-shown (left) response was chosen, against what chance predicts.

    ``picks`` are ``(position_chosen, n_positions)``, positions counted from 0 = left
    (first shown); leave ties and "both bad" out. Returns ``{"rate", "expected",
    "lower", "upper", "n"}``: the observed share of picks at position 0, the share an
    annotator with no position bias would give (mean of 1 / n_positions), and a
    Wilson interval for the rate. ``expected`` outside [lower, upper] suggests
    position bias. Rates are None when there are no picks.
    """
    picks = list(picks)
    for position, n_positions in picks:
        if n_positions < 2 or not 0 <= position < n_positions:
            raise ValueError(
                f"Invalid pick {(position, n_positions)}: need 0 <= position < n_positions, n >= 2."
            )
    n = len(picks)
    if n == 0:
        return {"rate": None, "expected": None, "lower": None, "upper": None, "n": 0}
    left = sum(position == 0 for position, _ in picks)
    interval = win_rate_interval(left, n - left, confidence=confidence)
    return {
        "rate": interval["win_rate"],
        "expected": sum(1 / n_positions for _, n_positions in picks) / n,
        "lower": interval["lower"],
        "upper": interval["upper"],
        "n": n,
    }

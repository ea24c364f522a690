"""Confidence intervals for shares whose observations come in correlated clusters.

A held-out pair of a reward model and a vote of the leaderboard are not independent draws:
the C(K, 2) pairs of one K-wise ranking share a prompt and an annotator, and three
annotators' votes on one comparison share its two responses. A binomial (Wilson) interval
over such observations is too narrow: with three votes per comparison a nominal 95%
interval covered the truth 86% of the time. Resampling whole clusters (the comparison,
or the prompt) keeps what they share together, so the interval is as wide as the data.

Pure numpy, no Django.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist

import numpy as np

DEFAULT_RESAMPLES = 4000


def wilson_interval(successes: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a share ``successes / n`` (successes may be fractional: half-wins)."""
    if n <= 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def clustered_share_interval(
    values: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """Mean of ``values`` (each in [0, 1]: 1 a win or a correct pair, 0.5 a tie) with an interval
    that resamples whole ``clusters``.

    ``values``: N floats; ``clusters``: N keys (the comparison or prompt each value belongs to),
    None for independent values. The interval is the larger of two: the percentile interval of a
    cluster bootstrap (``resamples`` draws of as many clusters as there are, with replacement,
    each draw's share = sum of its values / number of its values), and the Wilson interval on the
    *effective* sample size N / design effect, where the design effect is the bootstrap variance
    over the binomial variance (at least 1). The Wilson part keeps the interval honest at the
    edges (all wins, few clusters), where a bootstrap collapses to a point.

    Returns ``{"share", "lower", "upper", "n", "clusters", "effective_n"}``; with N = 0 the share
    and bounds are None.
    """
    n = len(values)
    if clusters is not None and len(clusters) != n:
        raise ValueError("values and clusters must have the same length")
    if n == 0:
        return {"share": None, "lower": None, "upper": None, "n": 0, "clusters": 0, "effective_n": 0.0}
    x = np.asarray(values, dtype=np.float64)
    if clusters is None:
        index = np.arange(n)
    else:
        keys: dict[Hashable, int] = {}
        index = np.array([keys.setdefault(c, len(keys)) for c in clusters])
    n_clusters = int(index.max()) + 1
    sums = np.bincount(index, weights=x, minlength=n_clusters)  # (C,)
    counts = np.bincount(index, minlength=n_clusters).astype(np.float64)  # (C,)
    share = float(x.mean())

    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=resamples)  # (R, C)
    boot = (draws @ sums) / np.maximum(draws @ counts, 1.0)  # (R,)
    alpha = 1.0 - confidence
    lower, upper = np.quantile(boot, [alpha / 2, 1 - alpha / 2])

    binomial_var = share * (1 - share) / n
    design_effect = float(boot.var() / binomial_var) if binomial_var > 0 else 1.0
    effective_n = n / max(1.0, design_effect)
    w_lower, w_upper = wilson_interval(share * effective_n, effective_n, confidence=confidence)
    return {
        "share": share,
        "lower": float(min(lower, w_lower)),
        "upper": float(max(upper, w_upper)),
        "n": n,
        "clusters": n_clusters,
        "effective_n": float(effective_n),
    }

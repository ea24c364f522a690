"""Judgments -> Bradley-Terry preference pairs, and the snapshot that pins them.

A judgment is a plain dict (see :func:`judgments_to_pairs`); a pair row is a plain
dict that TRL's ``RewardTrainer`` reads once ``chosen``/``rejected`` are wrapped as
assistant turns (``training.ml.reward`` does that).

Rules, in the order they are applied:

1. Annotators whose gold accuracy is below ``PairOptions.min_gold_accuracy`` lose
   all their judgments. A judgment *passes* a gold item when, for every pair of
   responses that ``gold_ranking`` orders (they sit in different groups), the
   judgment puts the gold winner in a strictly better group. Pairs that gold ties
   are free. Annotators with fewer than ``min_gold_judgments`` gold judgments, and
   imported judgments (annotator ``None``), are never dropped by this rule.
2. Gold judgments are left out of training pairs unless ``include_gold``: gold items
   are quality probes shown to many annotators, so keeping them would weigh a few
   prompts many times over, and their answer was written by the project, not
   elicited from annotators.
3. "Both bad" judgments yield no pair unless ``keep_both_bad``.
4. Comparisons whose agreement is below ``min_agreement`` are dropped (see
   :func:`comparison_agreement`).
5. Every remaining judgment yields its own pairs (``aggregate="none"``), or each
   comparison yields one pair per majority verdict (``aggregate="majority"``).

A ranking is a list of groups of response ids, best first; every response of a
better group beats every response of a worse group, responses of one group are
tied and yield no pair. A K-wise ranking with groups of sizes n_1..n_g yields
sum_{i<j} n_i * n_j pairs (C(K, 2) without ties).

Loss weighting. TRL's ``RewardTrainer`` averages the loss over pairs, so a ranking
of K responses counts C(K, 2) times as much as a pairwise judgment
(``weighting="per_pair"``, the default). The textbook loss (InstructGPT) averages
over the pairs of one ranking first, so every ranking counts once
(``weighting="per_ranking"``): each pair then carries ``weight = 1/n``, n being the
number of pairs its ranking (or, aggregated, its comparison) yields, and
``training.ml.reward`` minimises ``sum(w * loss) / sum(w)``. Either way the
convention is recorded by :func:`snapshot_metadata`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SNAPSHOT_FORMAT = "tandem-preference-pairs/1"

DEFAULT_MARGINS: dict[str | None, float] = {"much": 1.0, "slight": 0.5, None: 0.0}

LOSS_WEIGHTING_CONVENTIONS = {
    "per_pair": "every pair weighs the same (TRL RewardTrainer); a K-wise ranking counts C(K,2) times",
    "per_ranking": "pairs carry weight 1/n (n pairs from one ranking), so every ranking counts once (textbook)",
}


@dataclass(frozen=True)
class PairOptions:
    """How judgments become pairs. The defaults keep every judgment as its own pair."""

    margins: dict[str | None, float] = field(
        default_factory=lambda: dict(DEFAULT_MARGINS),
        metadata={
            "help": "Margin m of the loss -log sigmoid(r_w - r_l - m) for each strength. Pairs from K-wise "
            "rankings (more than one pair per judgment) get margins[None]."
        },
    )
    keep_both_bad: bool = field(
        default=False,
        metadata={"help": "Derive pairs from judgments marked 'both bad' (their ranking still orders them)."},
    )
    include_gold: bool = field(
        default=False,
        metadata={"help": "Derive pairs from judgments on gold comparisons (quality probes)."},
    )
    aggregate: Literal["none", "majority"] = field(
        default="none",
        metadata={
            "help": "'none': every judgment is its own pair. 'majority': per comparison and pair of responses, "
            "the plurality of the verdicts (a>b, b>a, tie) wins; a tie verdict or an exact split yields no pair."
        },
    )
    min_gold_accuracy: float | None = field(
        default=None,
        metadata={
            "help": "Drop every judgment of annotators whose share of passed gold items is below this."
        },
    )
    min_gold_judgments: int = field(
        default=1,
        metadata={
            "help": "Annotators with fewer gold judgments than this are not judged by min_gold_accuracy."
        },
    )
    min_agreement: float | None = field(
        default=None,
        metadata={"help": "Drop comparisons whose agreement (comparison_agreement) is below this."},
    )
    weighting: Literal["per_pair", "per_ranking"] = field(
        default="per_pair",
        metadata={
            "help": "Loss-weighting convention written into each pair's `weight` (see module docstring)."
        },
    )

    def __post_init__(self):
        if self.aggregate not in ("none", "majority"):
            raise ValueError(f"aggregate must be 'none' or 'majority', not {self.aggregate!r}")
        if self.weighting not in LOSS_WEIGHTING_CONVENTIONS:
            raise ValueError(f"weighting must be one of {sorted(LOSS_WEIGHTING_CONVENTIONS)}")
        if None not in self.margins:
            raise ValueError("margins needs a value for None (unknown strength, K-wise pairs)")

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready data (the None strength becomes the key "null")."""
        data = asdict(self)
        data["margins"] = {("null" if k is None else k): v for k, v in self.margins.items()}
        return data


# --- rankings -------------------------------------------------------------------------------


def ranking_pairs(ranking: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
    """Every (better, worse) pair of response ids across the groups of ``ranking``, best group first."""
    pairs = []
    seen: set[str] = set()
    for i, better_group in enumerate(ranking):
        for rid in better_group:
            if rid in seen:
                raise ValueError(f"response {rid!r} appears twice in ranking {ranking!r}")
            seen.add(rid)
        for worse_group in ranking[i + 1 :]:
            pairs.extend((str(b), str(w)) for b in better_group for w in worse_group)
    return pairs


def _rank_of(ranking: Sequence[Sequence[str]]) -> dict[str, int]:
    return {str(rid): i for i, group in enumerate(ranking) for rid in group}


def passes_gold(ranking: Sequence[Sequence[str]], gold_ranking: Sequence[Sequence[str]]) -> bool:
    """True when ``ranking`` puts the winner above the loser for every pair ``gold_ranking`` orders."""
    rank = _rank_of(ranking)
    for better, worse in ranking_pairs(gold_ranking):
        if better not in rank or worse not in rank or not rank[better] < rank[worse]:
            return False
    return True


def _verdict(rank: dict[str, int], a: str, b: str) -> str:
    if rank[a] < rank[b]:
        return "a"
    if rank[b] < rank[a]:
        return "b"
    return "tie"


def comparison_agreement(judgments: Sequence[dict]) -> float:
    """Agreement of several judgments of one comparison, in [1/3, 1].

    For each unordered pair of responses, the share of judgments that give the most
    common verdict (a better, b better, tie); the comparison's agreement is the mean
    over its response pairs. One judgment agrees with itself (1.0).
    """
    if len(judgments) <= 1:
        return 1.0
    ranks = [_rank_of(j["ranking"]) for j in judgments]
    ids = sorted(set().union(*ranks))
    shares = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            votes = Counter(_verdict(r, a, b) for r in ranks if a in r and b in r)
            if votes:
                shares.append(max(votes.values()) / sum(votes.values()))
    return sum(shares) / len(shares) if shares else 1.0


def gold_accuracy_by_annotator(judgments: Iterable[dict]) -> dict[str, tuple[int, int]]:
    """{annotator: (gold judgments passed, gold judgments seen)} over judgments with a gold ranking."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for j in judgments:
        if j.get("is_gold") and j.get("gold_ranking") is not None and j.get("annotator") is not None:
            tally[j["annotator"]][0] += passes_gold(j["ranking"], j["gold_ranking"])
            tally[j["annotator"]][1] += 1
    return {a: (p, n) for a, (p, n) in tally.items()}


# --- judgments -> pairs ---------------------------------------------------------------------


def _margin(judgment: dict, n_pairs: int, options: PairOptions) -> float:
    if n_pairs != 1:  # the 4-point strength only describes a single pairwise choice
        return float(options.margins[None])
    strength = judgment.get("strength")
    if strength not in options.margins:
        raise ValueError(f"judgment {judgment.get('judgment_id')}: unknown strength {strength!r}")
    return float(options.margins[strength])


def _pair_row(j: dict, better: str, worse: str, margin: float, weight: float, **override) -> dict:
    responses = j["responses"]
    for rid in (better, worse):
        if rid not in responses:
            raise ValueError(f"judgment {j.get('judgment_id')}: ranking names unknown response {rid!r}")
    row = {
        "prompt": j["prompt"],
        "chosen": responses[better],
        "rejected": responses[worse],
        "margin": margin,
        "weight": weight,
        "prompt_id": j["prompt_id"],
        "comparison_id": j["comparison_id"],
        "judgment_id": j["judgment_id"],
        "round": j.get("round"),
        "source": j["source"],
        "annotator": j.get("annotator"),
        "chosen_id": better,
        "rejected_id": worse,
    }
    row.update(override)
    return row


def _judgment_pairs(j: dict, options: PairOptions) -> list[dict]:
    pairs = ranking_pairs(j["ranking"])
    if not pairs:
        return []
    margin = _margin(j, len(pairs), options)
    weight = 1.0 if options.weighting == "per_pair" else 1.0 / len(pairs)
    return [_pair_row(j, b, w, margin, weight) for b, w in pairs]


def _annotator_key(annotator: str | None) -> tuple[bool, str]:
    return (annotator is None, annotator or "")


def _majority_pairs(judgments: list[dict], options: PairOptions) -> list[dict]:
    """One pair per (response pair) whose plurality verdict names a winner."""
    ranks = [_rank_of(j["ranking"]) for j in judgments]
    ids = sorted(set().union(*ranks))
    winners = []  # (better, worse, supporting judgments)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            votes: dict[str, list[dict]] = defaultdict(list)
            for j, r in zip(judgments, ranks, strict=True):
                if a in r and b in r:
                    votes[_verdict(r, a, b)].append(j)
            if not votes:
                continue
            counts = sorted((len(v) for v in votes.values()), reverse=True)
            top = max(votes, key=lambda k: len(votes[k]))
            if (len(counts) > 1 and counts[0] == counts[1]) or top == "tie":
                continue  # exact split, or the majority calls it a tie
            better, worse = (a, b) if top == "a" else (b, a)
            winners.append((better, worse, votes[top]))
    rows = []
    for better, worse, support in winners:
        margins = [_margin(j, len(ranking_pairs(j["ranking"])), options) for j in support]
        sources = sorted({j["source"] for j in support})
        weight = 1.0 if options.weighting == "per_pair" else 1.0 / len(winners)
        rows.append(
            _pair_row(
                support[0],
                better,
                worse,
                sum(margins) / len(margins),
                weight,
                judgment_id=sorted(j["judgment_id"] for j in support),
                annotator=sorted((j.get("annotator") for j in support), key=_annotator_key),
                source=sources[0] if len(sources) == 1 else "mixed",
            )
        )
    return rows


def judgments_to_pairs(judgments: Iterable[dict], options: PairOptions | None = None) -> list[dict]:
    """Preference pairs from judgments, in canonical order.

    Each judgment is a dict with ``judgment_id, comparison_id, annotator (str | None),
    round, source, prompt_id, prompt (list of {role, content}), responses ({str id: text}),
    ranking (groups of str ids, best first), strength (None | "slight" | "much"),
    both_bad, is_gold, gold_ranking, created_at``.

    Each pair row is ``{prompt, chosen, rejected, margin, weight, prompt_id,
    comparison_id, judgment_id, round, source, annotator, chosen_id, rejected_id}``;
    with ``aggregate="majority"`` ``judgment_id`` and ``annotator`` are sorted lists
    of the judgments that voted for the winner, ``margin`` is the mean of their
    margins, and ``source`` is "mixed" when they differ.
    """
    options = options or PairOptions()
    judgments = list(judgments)

    if options.min_gold_accuracy is not None:
        dropped = {
            a
            for a, (passed, seen) in gold_accuracy_by_annotator(judgments).items()
            if seen >= options.min_gold_judgments and passed / seen < options.min_gold_accuracy
        }
        judgments = [j for j in judgments if j.get("annotator") is None or j["annotator"] not in dropped]
    if not options.include_gold:
        judgments = [j for j in judgments if not j.get("is_gold")]
    if not options.keep_both_bad:
        judgments = [j for j in judgments if not j.get("both_bad")]

    by_comparison: dict[Any, list[dict]] = defaultdict(list)
    for j in judgments:
        by_comparison[j["comparison_id"]].append(j)

    rows: list[dict] = []
    for group in by_comparison.values():
        group.sort(key=lambda j: j["judgment_id"])
        if options.min_agreement is not None and comparison_agreement(group) < options.min_agreement:
            continue
        if options.aggregate == "majority":
            rows.extend(_majority_pairs(group, options))
        else:
            for j in group:
                rows.extend(_judgment_pairs(j, options))
    return canonical_rows(rows)


# --- snapshot -------------------------------------------------------------------------------


def canonical_json(row: dict) -> str:
    """One row as compact JSON with sorted keys (the unit of the snapshot hash)."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_rows(rows: Iterable[dict]) -> list[dict]:
    """``rows`` in the canonical order: by prompt, comparison, then the row's canonical JSON."""
    keyed = [((str(r["prompt_id"]), str(r["comparison_id"]), canonical_json(r)), r) for r in rows]
    keyed.sort(key=lambda kr: kr[0])
    return [r for _, r in keyed]


def snapshot_lines(rows: Iterable[dict]) -> list[str]:
    """The canonical JSON lines of ``rows`` in canonical order (what the snapshot file holds)."""
    return [canonical_json(r) for r in canonical_rows(rows)]


def snapshot_sha256(rows: Iterable[dict]) -> str:
    """sha256 hex digest of the snapshot file's bytes: the same rows in any order give the same hash."""
    digest = hashlib.sha256()
    for line in snapshot_lines(rows):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def write_snapshot_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> str:
    """Write ``rows`` as canonical JSON lines to ``path`` atomically; return their sha256.

    The file's own sha256 equals :func:`snapshot_sha256` of the rows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            for line in snapshot_lines(rows):
                data = line.encode("utf-8") + b"\n"
                digest.update(data)
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def read_snapshot_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a snapshot file written by :func:`write_snapshot_jsonl`."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def snapshot_metadata(rows: Sequence[dict], options: PairOptions | None = None) -> dict[str, Any]:
    """What a training run records about its input: hash, counts, options, loss-weighting convention."""
    options = options or PairOptions()
    rows = list(rows)
    judgment_ids = set()
    for r in rows:
        ids = r["judgment_id"] if isinstance(r["judgment_id"], list) else [r["judgment_id"]]
        judgment_ids.update(ids)
    return {
        "format": SNAPSHOT_FORMAT,
        "sha256": snapshot_sha256(rows),
        "pairs": len(rows),
        "prompts": len({r["prompt_id"] for r in rows}),
        "comparisons": len({r["comparison_id"] for r in rows}),
        "judgments": len(judgment_ids),
        "pairs_by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "pairs_by_round": {str(k): v for k, v in sorted(Counter(r["round"] for r in rows).items(), key=str)},
        "loss_weighting": options.weighting,
        "loss_weighting_meaning": LOSS_WEIGHTING_CONVENTIONS[options.weighting],
        "options": options.to_json(),
    }


# --- splits ---------------------------------------------------------------------------------


def _prompt_order_key(prompt_id: Any, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()


def split_by_prompt(
    rows: Sequence[dict], eval_fraction: float, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows with no prompt in both, deterministic for a given seed.

    Prompts are ordered by sha256(seed, prompt_id) and the first
    round(n_prompts * eval_fraction) go to eval (at least one when the fraction is
    positive and there are two prompts or more, never all of them). Ordering by a hash
    rather than a shuffle keeps a prompt on the same side as the data grow, so the
    eval split of round N+1 mostly repeats that of round N.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError("eval_fraction must be in [0, 1)")
    prompts = sorted({r["prompt_id"] for r in rows}, key=lambda p: _prompt_order_key(p, seed))
    n_eval = round(len(prompts) * eval_fraction)
    if eval_fraction > 0 and len(prompts) >= 2:
        n_eval = min(max(n_eval, 1), len(prompts) - 1)
    eval_prompts = set(prompts[:n_eval])
    train = [r for r in rows if r["prompt_id"] not in eval_prompts]
    held_out = [r for r in rows if r["prompt_id"] in eval_prompts]
    return train, held_out

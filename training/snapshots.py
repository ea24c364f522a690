"""Judgments out of the database as plain dicts, filtered, and pinned as preference snapshots.

``training.ml.pairs`` does the maths (ranking -> pairs, agreement, canonical hash);
this module is its Django side:

* :func:`judgments_filtered` selects a project's judgments by round, checkpoint,
  annotator, date, agreement and source, in a stable order (prompt, comparison, id);
* :func:`judgment_rows` streams them as the dicts ``judgments_to_pairs`` reads, with
  a pseudonymous annotator id instead of the user (:func:`annotator_pseudonym`);
* :func:`pair_rows` streams pairs comparison by comparison, so an export of a million
  judgments never holds them all (exports use it);
* :func:`snapshot_build` stores the canonical pairs a run trains on under
  ``ARTIFACTS_DIR/snapshots/<sha256>.jsonl`` and returns the ``PreferenceSnapshot``.

Imported judgments (``source="imported:<name>"``, no annotator) are rows like any
other; ``include_imported=False`` leaves them out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, QuerySet

from annotation.models import AnnotatorProfile, ComparisonItem, Judgment, Project
from training.ml.pairs import (
    LOSS_WEIGHTING_CONVENTIONS,
    SNAPSHOT_FORMAT,
    PairOptions,
    comparison_agreement,
    gold_accuracy_by_annotator,
    judgments_to_pairs,
    snapshot_metadata,
    snapshot_sha256,
    write_snapshot_jsonl,
)
from training.models import PreferenceSnapshot

CHUNK_SIZE = 2000
PSEUDONYM_LENGTH = 16  # hex characters of the HMAC: 64 bits, no collisions at any realistic team size
IMPORTED_PREFIX = "imported:"


# --- pseudonyms -----------------------------------------------------------------------------


def annotator_pseudonym(project_id: int, user_id: int | None) -> str | None:
    """A stable id for an annotator within one project, from which the user cannot be read back.

    HMAC-SHA256 keyed by ``SECRET_KEY`` over project and user id, truncated: the same
    person has the same id in every export of a project, different ids in different
    projects (so datasets of two projects cannot be joined on people), and rotating
    ``SECRET_KEY`` changes every id. Imported judgments have no annotator (``None``).
    """
    if user_id is None:
        return None
    return _pseudonym(settings.SECRET_KEY, project_id, user_id)


@functools.lru_cache(maxsize=4096)
def _pseudonym(secret: str, project_id: int, user_id: int) -> str:
    message = f"tandem-annotator:{project_id}:{user_id}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return "a-" + digest[:PSEUDONYM_LENGTH]


# --- filters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgmentFilters:
    """Which judgments of a project go into a snapshot or an export (JSON-ready as ``to_json``)."""

    rounds: tuple[int, ...] = field(default=(), metadata={"help": "Round numbers; empty means all."})
    checkpoints: tuple[int, ...] = field(
        default=(), metadata={"help": "Checkpoint versions: comparisons with a response of one of them."}
    )
    annotators: tuple[int, ...] = field(default=(), metadata={"help": "User ids; empty means everyone."})
    date_from: date | None = field(default=None, metadata={"help": "Judged on or after this day."})
    date_to: date | None = field(default=None, metadata={"help": "Judged on or before this day."})
    min_agreement: float | None = field(
        default=None,
        metadata={"help": "Drop comparisons whose agreement among the selected judgments is below this."},
    )
    include_imported: bool = field(default=True, metadata={"help": "Include imported preference data."})
    exclude_flagged_annotators: bool = field(
        default=True, metadata={"help": "Leave out annotators an admin excluded from snapshots."}
    )

    @classmethod
    def from_json(cls, data: dict | None) -> JudgmentFilters:
        """Filters from a dict as stored in ``Export.filters`` (unknown keys are ignored)."""
        data = dict(data or {})

        def ints(key):
            values = data.get(key) or ()
            if isinstance(values, str | int):
                values = [values]
            return tuple(sorted({int(v) for v in values}))

        def day(key):
            value = data.get(key)
            if value in (None, ""):
                return None
            return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])

        min_agreement = data.get("min_agreement")
        return cls(
            rounds=ints("rounds"),
            checkpoints=ints("checkpoints"),
            annotators=ints("annotators"),
            date_from=day("date_from"),
            date_to=day("date_to"),
            min_agreement=None if min_agreement in (None, "") else float(min_agreement),
            include_imported=bool(data.get("include_imported", True)),
            exclude_flagged_annotators=bool(data.get("exclude_flagged_annotators", True)),
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("rounds", "checkpoints", "annotators"):
            data[key] = list(data[key])
        for key in ("date_from", "date_to"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


def judgments_filtered(
    project: Project,
    *,
    rounds: Iterable[int] = (),
    checkpoints: Iterable[int] = (),
    annotators: Iterable[int] = (),
    date_from: date | None = None,
    date_to: date | None = None,
    min_agreement: float | None = None,
    include_imported: bool = True,
    exclude_flagged_annotators: bool = True,
) -> QuerySet[Judgment]:
    """The project's judgments that pass the filters, ordered by prompt, comparison and id.

    ``rounds`` are round numbers, ``checkpoints`` checkpoint versions (a judgment passes
    when its comparison shows a response of one of them), ``annotators`` user ids
    (imported judgments have none, so naming annotators leaves imported data out).
    Dates compare the day the judgment was recorded, both ends included.
    ``min_agreement`` drops comparisons whose agreement among the judgments selected by
    the other filters (``training.ml.pairs.comparison_agreement``) is below it; a
    comparison with one judgment agrees with itself.
    """
    qs = Judgment.objects.filter(comparison__prompt__project=project)
    if rounds := list(rounds):
        qs = qs.filter(comparison__round__number__in=rounds, comparison__round__project=project)
    if checkpoints := list(checkpoints):
        shown = ComparisonItem.objects.filter(
            comparison=OuterRef("comparison"),
            response__checkpoint__version__in=checkpoints,
            response__checkpoint__project=project,
        )
        qs = qs.filter(Exists(shown))
    if annotators := list(annotators):
        qs = qs.filter(annotator_id__in=annotators)
    if date_from is not None:
        qs = qs.filter(created_at__date__gte=date_from)
    if date_to is not None:
        qs = qs.filter(created_at__date__lte=date_to)
    if not include_imported:
        qs = qs.exclude(source__startswith=IMPORTED_PREFIX)
    if exclude_flagged_annotators:
        flagged = AnnotatorProfile.objects.filter(user=OuterRef("annotator"), excluded_from_snapshots=True)
        qs = qs.exclude(Exists(flagged))
    qs = qs.order_by("comparison__prompt_id", "comparison_id", "id")
    if min_agreement is not None:
        low = _low_agreement_comparisons(qs, min_agreement)
        if low:
            qs = qs.exclude(comparison_id__in=low)
    return qs


def judgments_for(project: Project, filters: JudgmentFilters | dict | None) -> QuerySet[Judgment]:
    """:func:`judgments_filtered` with the filters as a :class:`JudgmentFilters` or its JSON."""
    if not isinstance(filters, JudgmentFilters):
        filters = JudgmentFilters.from_json(filters)
    return judgments_filtered(
        project,
        rounds=filters.rounds,
        checkpoints=filters.checkpoints,
        annotators=filters.annotators,
        date_from=filters.date_from,
        date_to=filters.date_to,
        min_agreement=filters.min_agreement,
        include_imported=filters.include_imported,
        exclude_flagged_annotators=filters.exclude_flagged_annotators,
    )


def _low_agreement_comparisons(qs: QuerySet[Judgment], min_agreement: float) -> list[int]:
    """Ids of comparisons (with two judgments or more) whose agreement is below ``min_agreement``."""
    multi = (
        qs.filter(comparison__judgment_count__gte=2)
        .values_list("comparison_id", "ranking")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    low = []
    for comparison_id, group in itertools.groupby(multi, key=lambda row: row[0]):
        judged = [{"ranking": _str_ranking(ranking)} for _, ranking in group]
        if comparison_agreement(judged) < min_agreement:
            low.append(comparison_id)
    return low


# --- rows -----------------------------------------------------------------------------------


def _str_ranking(ranking) -> list[list[str]]:
    return [[str(rid) for rid in group] for group in (ranking or [])]


JUDGMENT_FIELDS = (
    "id",
    "comparison_id",
    "annotator_id",
    "source",
    "ranking",
    "strength",
    "is_tie",
    "both_bad",
    "rationale",
    "criteria",
    "order_shown",
    "time_spent_ms",
    "created_at",
    "comparison__prompt_id",
    "comparison__prompt__project_id",
    "comparison__prompt__conversation",
    "comparison__round__number",
    "comparison__is_gold",
    "comparison__gold_ranking",
)


def _items_of(comparison_ids: set[int]) -> dict[int, list[tuple]]:
    """{comparison id: [(response id, position, text, checkpoint version), ...] by position}."""
    items: dict[int, list[tuple]] = {}
    rows = (
        ComparisonItem.objects.filter(comparison_id__in=comparison_ids)
        .order_by("comparison_id", "position")
        .values_list(
            "comparison_id", "response_id", "position", "response__text", "response__checkpoint__version"
        )
    )
    for comparison_id, *item in rows:
        items.setdefault(comparison_id, []).append(tuple(item))
    return items


def _row(values: tuple, items: list[tuple]) -> dict[str, Any]:
    (jid, cid, annotator_id, source, ranking, strength, is_tie, both_bad, rationale, criteria, order_shown,
     time_spent_ms, created_at, prompt_id, project_id, conversation, round_number, is_gold, gold) = values  # fmt: skip
    return {
        "judgment_id": jid,
        "comparison_id": cid,
        "annotator": annotator_pseudonym(project_id, annotator_id),
        "round": round_number,
        "source": source,
        "prompt_id": prompt_id,
        "prompt": conversation,
        "responses": {str(rid): text for rid, _, text, _ in items},
        "ranking": _str_ranking(ranking),
        "strength": strength,
        "is_tie": is_tie,
        "both_bad": both_bad,
        "is_gold": is_gold,
        "gold_ranking": _str_ranking(gold) if gold is not None else None,
        "created_at": created_at.isoformat(),
        "rationale": rationale,
        "criteria": criteria,
        "order_shown": [str(rid) for rid in (order_shown or [])],
        "time_spent_ms": time_spent_ms,
        "positions": {str(rid): position for rid, position, _, _ in items},
        "checkpoints": {str(rid): version for rid, _, _, version in items},
    }


def judgment_rows(queryset: QuerySet[Judgment], *, chunk_size: int = CHUNK_SIZE) -> Iterator[dict[str, Any]]:
    """Stream ``queryset`` as plain dicts, the shape ``training.ml.pairs.judgments_to_pairs`` reads.

    Keys for pairs: ``judgment_id, comparison_id, annotator, round, source, prompt_id,
    prompt, responses, ranking, strength, both_bad, is_gold, gold_ranking, created_at``
    (ids in rankings and ``responses`` keys are strings; ``round`` is the round number,
    None for imported data; ``annotator`` is :func:`annotator_pseudonym`). Raw extras:
    ``is_tie, rationale, criteria, order_shown, time_spent_ms, positions`` (response id
    -> position in the comparison) and ``checkpoints`` (response id -> checkpoint
    version, None when imported).

    Two queries per ``chunk_size`` judgments (the judgments through a server-side cursor
    on Postgres, then their comparisons' responses), no model instances: memory holds
    one chunk whatever the size of the queryset.
    """
    values = queryset.values_list(*JUDGMENT_FIELDS).iterator(chunk_size=chunk_size)
    while chunk := list(itertools.islice(values, chunk_size)):
        items = _items_of({v[1] for v in chunk})
        for v in chunk:
            yield _row(v, items.get(v[1], []))


def comparison_groups(rows: Iterable[dict]) -> Iterator[list[dict]]:
    """Consecutive rows of one comparison (rows must come ordered by comparison, as from the filters)."""
    for _, group in itertools.groupby(rows, key=lambda r: r["comparison_id"]):
        yield list(group)


# --- pairs, streamed ------------------------------------------------------------------------


@dataclass
class RowStats:
    """What the dataset card and the Export row report, counted while rows stream past."""

    judgments: int = 0
    comparisons: int = 0
    pairs: int = 0
    prompts: int = 0
    multi_judged: int = 0
    agreement_sum: float = 0.0
    by_source: Counter = field(default_factory=Counter)
    by_round: Counter = field(default_factory=Counter)
    dropped_annotators: int = 0
    _last_prompt: Any = None

    def see_comparison(self, group: list[dict]) -> None:
        self.judgments += len(group)
        self.comparisons += 1
        if group[0]["prompt_id"] != self._last_prompt:
            self.prompts += 1  # rows come grouped by prompt, so a change is a new prompt
            self._last_prompt = group[0]["prompt_id"]
        for j in group:
            self.by_source[j["source"]] += 1
            self.by_round["imported" if j["round"] is None else str(j["round"])] += 1
        if len(group) >= 2:
            self.multi_judged += 1
            self.agreement_sum += comparison_agreement(group)

    @property
    def mean_agreement(self) -> float | None:
        return self.agreement_sum / self.multi_judged if self.multi_judged else None

    def to_json(self) -> dict[str, Any]:
        return {
            "judgments": self.judgments,
            "comparisons": self.comparisons,
            "prompts": self.prompts,
            "pairs": self.pairs,
            "comparisons_with_several_judgments": self.multi_judged,
            "mean_agreement": self.mean_agreement,
            "judgments_by_source": dict(sorted(self.by_source.items())),
            "judgments_by_round": dict(sorted(self.by_round.items())),
            "annotators_dropped_for_gold": self.dropped_annotators,
        }


def gold_failing_annotators(queryset: QuerySet[Judgment], options: PairOptions) -> set[str]:
    """Pseudonyms of annotators whose gold accuracy is below ``options.min_gold_accuracy``."""
    if options.min_gold_accuracy is None:
        return set()
    gold = judgment_rows(queryset.filter(comparison__is_gold=True))
    return {
        a
        for a, (passed, seen) in gold_accuracy_by_annotator(gold).items()
        if seen >= options.min_gold_judgments and passed / seen < options.min_gold_accuracy
    }


def pair_rows(
    queryset: QuerySet[Judgment],
    options: PairOptions | None = None,
    *,
    stats: RowStats | None = None,
    on_judgments=None,
) -> Iterator[dict]:
    """Preference pairs of ``queryset``, streamed one comparison at a time.

    The same pairs as ``judgments_to_pairs(judgment_rows(queryset), options)``, in the
    queryset's order (prompt, comparison) and canonical order within a comparison. Every
    rule of ``judgments_to_pairs`` is local to a comparison except the gold-accuracy
    drop, which looks at an annotator's gold judgments across the project: that is done
    first, over the (few) gold judgments. ``on_judgments(n)`` is called with the number
    of judgments read so far.
    """
    options = options or PairOptions()
    stats = stats if stats is not None else RowStats()
    dropped = gold_failing_annotators(queryset, options)
    stats.dropped_annotators = len(dropped)
    local = dataclasses.replace(options, min_gold_accuracy=None)
    for group in comparison_groups(judgment_rows(queryset)):
        stats.see_comparison(group)
        if on_judgments is not None:
            on_judgments(stats.judgments)
        kept = [j for j in group if j["annotator"] is None or j["annotator"] not in dropped]
        if not kept:
            continue
        for pair in judgments_to_pairs(kept, local):
            stats.pairs += 1
            yield pair


# --- snapshots ------------------------------------------------------------------------------


def snapshots_dir() -> Path:
    return Path(settings.ARTIFACTS_DIR) / "snapshots"


def snapshot_options_json(options: PairOptions) -> dict[str, Any]:
    """What ``PreferenceSnapshot.options`` records: the pair options and the loss-weighting convention."""
    return {
        **options.to_json(),
        "format": SNAPSHOT_FORMAT,
        "loss_weighting": options.weighting,
        "loss_weighting_meaning": LOSS_WEIGHTING_CONVENTIONS[options.weighting],
    }


def pair_options(options: PairOptions | dict | None) -> PairOptions:
    """PairOptions from a run's or snapshot's JSON (or as given); unknown keys are ignored."""
    if options is None or isinstance(options, PairOptions):
        return options or PairOptions()
    data = dict(options)
    if "margins" in data:
        data["margins"] = {(None if k in ("null", None) else k): float(v) for k, v in data["margins"].items()}
    names = {f.name for f in dataclasses.fields(PairOptions)}
    return PairOptions(**{k: v for k, v in data.items() if k in names})


def snapshot_build(
    *,
    project: Project,
    filters: JudgmentFilters | dict | None = None,
    options: PairOptions | dict | None = None,
) -> PreferenceSnapshot:
    """The snapshot of the project's judgments that pass ``filters``, as pairs made with ``options``.

    Deterministic: the same judgments and options give the same canonical rows, hence
    the same sha256 and the same ``PreferenceSnapshot`` row (get-or-create by project
    and sha256). The file ``ARTIFACTS_DIR/snapshots/<sha256>.jsonl`` holds the canonical
    JSON lines (``training.ml.pairs.write_snapshot_jsonl``, written atomically); its
    sha256 is the snapshot's. Training loads every pair anyway, so the pairs are built
    in memory here (exports, which must not, use :func:`pair_rows`).
    """
    filters = filters if isinstance(filters, JudgmentFilters) else JudgmentFilters.from_json(filters)
    options = pair_options(options)
    rows = judgments_to_pairs(judgment_rows(judgments_for(project, filters)), options)
    sha = snapshot_sha256(rows)
    path = snapshots_dir() / f"{sha}.jsonl"
    existing = PreferenceSnapshot.objects.filter(project=project, sha256=sha).first()
    if existing is not None and Path(existing.uri).exists():
        return existing
    if not path.exists():
        written = write_snapshot_jsonl(rows, path)
        assert written == sha, "snapshot file hash differs from the rows' hash"
    meta = snapshot_metadata(rows, options)
    defaults = {
        "filters": filters.to_json(),
        "options": snapshot_options_json(options),
        "pair_count": meta["pairs"],
        "judgment_count": meta["judgments"],
        "uri": str(path),
    }
    try:
        with transaction.atomic():
            snapshot, created = PreferenceSnapshot.objects.get_or_create(
                project=project, sha256=sha, defaults=defaults
            )
    except IntegrityError:  # a concurrent build of the same snapshot won the insert
        snapshot, created = PreferenceSnapshot.objects.get(project=project, sha256=sha), False
    if not created and snapshot.uri != str(path):
        snapshot.uri = str(path)
        snapshot.save(update_fields=["uri"])
    return snapshot

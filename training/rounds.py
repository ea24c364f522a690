"""Annotation rounds: open one, fill it with generated responses, build its comparisons.

A round is opened by :func:`round_open`: it freezes which prompts and checkpoints are
in play and how to sample (``Round.config``), and queues the ``generate_round`` task
on the ``gpu`` queue. The task (:func:`round_generate`) asks ``training.ml.generation``
only for the (prompt, checkpoint, sample index) keys that have no response yet and
saves every batch as it arrives, so a crash, a cancel or a killed worker loses at most
one batch and a retry (:func:`round_retry`) continues where it stopped. The unique key
on ``Response`` makes a second writer of the same key a no-op.

When every response exists, :func:`comparisons_build` turns them into comparisons and
the round becomes ``open``. Both happen under a row lock on the round, once.

Several GPU workers: with ``chunks > 1`` the round's prompts are split into that many
chunks, each a child run of the round's run and its own task. Each chunk, once its
own responses are saved, checks under the round's lock whether all responses of the
round exist; the last one to finish builds the comparisons and opens the round. The
round's own run (``Round.generation_run``) is then bookkeeping: its status and
progress follow its chunks.

Comparisons
-----------
- Pairwise, one checkpoint: the distinct samples of a prompt in sample order, paired
  off (0-1, 2-3, ...); each response sits in at most one comparison.
- Pairwise, several checkpoints: one comparison per prompt and pair of checkpoints
  (newest first), made of the lowest-index samples of the two that differ.
- K-wise: the distinct responses of a prompt, interleaved across checkpoints
  (sample 0 of each checkpoint, then sample 1, ...), in groups of exactly K; a
  remainder smaller than K is not used.
- Identical responses (same text once whitespace is normalised) are never in the
  same comparison: the later duplicate is dropped before pairing.

Gold answers
------------
``RoundConfig.gold_answers`` maps a prompt id to the response expected to win, named
by checkpoint version and/or sample index: ``{"12": {"checkpoint": 3}}`` (whatever
checkpoint v3 wrote for prompt 12 should beat the others) or ``{"12": {"sample_index":
1}}`` (set after reading the responses, then run :func:`comparisons_build` again). A
comparison qualifies when the answer picks some but not all of its responses; its
``gold_ranking`` is then ``[[winners], [the others]]``. ``gold_share`` of the round's
comparisons (rounded, at most the qualifying ones, never one that already has
judgments) are marked gold, picked with the round's seed.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from annotation.models import Comparison, ComparisonItem, Project, Prompt, Response, Round
from annotation.rendering import markdown_to_safe_html
from training.models import Checkpoint, TrainingRun
from training.round_config import MAX_SAMPLES_PER_CHECKPOINT, RoundConfig  # noqa: F401  (where callers look)
from training.run_configs import settings_problems
from training.runs import QueueUnavailable, RunReporter, enqueue, run_retry

log = logging.getLogger(__name__)

# Request seeds are prompt_id * SEED_STRIDE + sample_index, so samples per checkpoint stay below it.
SEED_STRIDE = 1024
# --- opening ------------------------------------------------------------------


def prompts_select(
    *,
    project: Project,
    split: str | None = None,
    tag: str | None = None,
    count: int | None = None,
    seed: int = 0,
) -> list[int]:
    """Ids of ``project``'s prompts of ``split`` carrying ``tag``, a seeded sample of ``count`` of them."""
    rows = Prompt.objects.filter(project=project).order_by("pk")
    if split:
        rows = rows.filter(split=split)
    # Tags are a JSON list; filtering in Python works on SQLite and Postgres alike.
    ids = [pk for pk, tags in rows.values_list("pk", "tags") if tag is None or tag in (tags or [])]
    if count is not None and count < len(ids):
        ids = sorted(random.Random(seed).sample(ids, count))
    return ids


def round_open(
    *,
    project: Project,
    checkpoints: Iterable[Checkpoint],
    config: RoundConfig | Mapping[str, Any] | None = None,
    created_by=None,
    start: bool = True,
) -> Round:
    """Open ``project``'s next round and queue its generation (after the transaction commits).

    ``config`` is a :class:`RoundConfig` or a mapping of its fields. Raises
    ``ValidationError`` keyed by field (``checkpoints``, ``samples_per_checkpoint``,
    ``prompts``, ``gold_answers``, ...) and ``QueueUnavailable`` when the broker cannot
    be reached, in which case the round and its runs are deleted again. With
    ``start=False`` nothing is queued: the caller runs the round's run in-process.
    """
    cfg = config if isinstance(config, RoundConfig) else RoundConfig.from_mapping(config)
    errors = cfg.errors()
    # The same bounds as every launched run (training.run_configs): 10^7 new tokens or 10^6
    # chunks would hold the workers for hours.
    for key, message in settings_problems("RoundConfig", dataclasses.asdict(cfg), own_checks=False).items():
        errors.setdefault(key, []).append(message)
    checkpoints = list({c.pk: c for c in checkpoints}.values())
    checkpoints.sort(key=lambda c: -c.version)  # newest first: it leads every pair
    if not checkpoints:
        errors.setdefault("checkpoints", []).append("Choose at least one checkpoint.")
    foreign = [c for c in checkpoints if c.project_id != project.pk]
    if foreign:
        errors.setdefault("checkpoints", []).append(
            f"Checkpoint {', '.join(str(c) for c in foreign)} belongs to another project."
        )
    if not start and cfg.chunks != 1:
        errors.setdefault("chunks", []).append("A round generated in-process runs as one chunk.")
    if errors:
        raise ValidationError(errors)

    samples = cfg.samples_per_checkpoint or _default_samples(project, len(checkpoints))
    _check_mode(project, len(checkpoints), samples)
    prompt_ids = prompts_select(
        project=project, split=cfg.split, tag=cfg.tag, count=cfg.prompt_count, seed=cfg.seed
    )
    if not prompt_ids:
        raise ValidationError({"prompts": "No prompt matches this split and tag; import prompts first."})
    gold_answers = _clean_gold_answers(cfg.gold_answers, prompt_ids, checkpoints, samples)
    stored = {
        **dataclasses.asdict(cfg),
        "samples_per_checkpoint": samples,
        "gold_answers": gold_answers,
        "prompt_ids": prompt_ids,
    }

    with transaction.atomic():
        # Numbering takes the project's row lock, so two admins opening rounds get 1 and 2.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        number = (project.rounds.aggregate(n=Max("number"))["n"] or 0) + 1
        round = Round.objects.create(project=project, number=number, config=stored)
        round.checkpoints.set(checkpoints)
        chunks = _split(prompt_ids, cfg.chunks)
        run = TrainingRun.objects.create(
            project=project,
            kind=TrainingRun.Kind.GENERATE,
            config={"round_id": round.pk, "chunks": len(chunks)},
            created_by=created_by,
            # A chunked round's own run is never executed: it follows its chunks.
            **(
                {"status": TrainingRun.Status.RUNNING, "started_at": timezone.now()}
                if len(chunks) > 1
                else {}
            ),
        )
        round.generation_run = run
        round.save(update_fields=["generation_run"])
        to_send = [run]
        if len(chunks) > 1:
            to_send = [
                TrainingRun.objects.create(
                    project=project,
                    kind=TrainingRun.Kind.GENERATE,
                    parent=run,
                    created_by=created_by,
                    config={"round_id": round.pk, "prompt_ids": chunk, "chunk": i + 1, "chunks": len(chunks)},
                )
                for i, chunk in enumerate(chunks)
            ]
        if start:
            # Deleting the round cascades to its responses; the runs go with the parent.
            round_pk, run_pk = round.pk, run.pk

            def cleanup():
                Round.objects.filter(pk=round_pk).delete()
                TrainingRun.objects.filter(pk=run_pk).delete()

            for each in to_send:
                enqueue(each, cleanup=cleanup)
    return round


def _default_samples(project: Project, n_checkpoints: int) -> int:
    if n_checkpoints == 1:
        return project.k
    return -(-project.k // n_checkpoints)  # enough responses for one K-response comparison


def _check_mode(project: Project, n_checkpoints: int, samples: int) -> None:
    if project.comparison_mode == Project.Mode.PAIRWISE and n_checkpoints == 1 and samples < 2:
        raise ValidationError(
            {
                "samples_per_checkpoint": "With one checkpoint, a pairwise round needs at least 2 responses per prompt."
            }
        )
    if project.comparison_mode == Project.Mode.KWISE and n_checkpoints * samples < project.k:
        raise ValidationError(
            {
                "samples_per_checkpoint": f"This project ranks {project.k} responses at a time, but "
                f"{n_checkpoints} checkpoint(s) x {samples} response(s) give only {n_checkpoints * samples}."
            }
        )


def _clean_gold_answers(answers: dict, prompt_ids: list[int], checkpoints, samples: int) -> dict:
    if not answers:
        return {}
    chosen, versions = set(prompt_ids), {c.version for c in checkpoints}
    cleaned, problems = {}, []
    for key, answer in answers.items():
        try:
            prompt_id = int(key)
        except (TypeError, ValueError):
            problems.append(f"{key!r} is not a prompt id.")
            continue
        if prompt_id not in chosen:
            problems.append(f"Prompt {prompt_id} is not in this round.")
            continue
        if not isinstance(answer, dict) or not answer or set(answer) - {"checkpoint", "sample_index"}:
            problems.append(
                f'Prompt {prompt_id}: give {{"checkpoint": version}} and/or {{"sample_index": i}}.'
            )
            continue
        if "checkpoint" in answer and answer["checkpoint"] not in versions:
            problems.append(f"Prompt {prompt_id}: checkpoint v{answer['checkpoint']} is not in this round.")
            continue
        if "sample_index" in answer and not (
            isinstance(answer["sample_index"], int) and 0 <= answer["sample_index"] < samples
        ):
            problems.append(f"Prompt {prompt_id}: sample index must be between 0 and {samples - 1}.")
            continue
        cleaned[str(prompt_id)] = answer
    if problems:
        raise ValidationError({"gold_answers": problems})
    return cleaned


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


DEMO_ROUND = RoundConfig(
    split=Prompt.Split.TRAIN, prompt_count=12, temperature=0.8, top_p=0.95, max_new_tokens=96, seed=0
)


def demo_round_open(*, project: Project, checkpoint: Checkpoint) -> Round | None:
    """Round 1 of the demo: the bundled model answers a dozen demo prompts, K samples each.

    Sized to fill within minutes on two CPU cores (12 prompts x 2 samples x at most 96
    tokens). Returns None when the project already has a round.
    """
    if project.rounds.exists():
        return None
    return round_open(project=project, checkpoints=[checkpoint], config=DEMO_ROUND)


# --- generating ---------------------------------------------------------------


@dataclass
class _Plan:
    """What one run must generate: its prompts, the round's checkpoints, what is still missing."""

    prompts: dict[int, list]  # prompt id -> conversation
    checkpoints: list[Checkpoint]
    samples: int
    present: dict[tuple[int, int], int]  # (prompt id, checkpoint id) -> samples already saved

    def missing(self, checkpoint: Checkpoint, saved: set[tuple[int, int, int]]) -> list[tuple[int, int]]:
        return [
            (prompt_id, s)
            for prompt_id in self.prompts
            for s in range(self.samples)
            if (prompt_id, checkpoint.pk, s) not in saved
        ]

    @property
    def units_done(self) -> int:
        return sum(1 for n in self.present.values() if n >= self.samples)

    @property
    def units_total(self) -> int:
        return len(self.prompts) * len(self.checkpoints)


def _round_prompt_ids(round: Round) -> list[int]:
    """The round's prompts that still exist (a prompt deleted since takes its responses along)."""
    ids = round.config.get("prompt_ids", [])
    return list(Prompt.objects.filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))


def _expected_responses(round: Round):
    checkpoints = list(round.checkpoints.order_by("-version"))
    samples = round.config["samples_per_checkpoint"]
    prompt_ids = _round_prompt_ids(round)
    rows = Response.objects.filter(
        round=round, prompt_id__in=prompt_ids, checkpoint__in=checkpoints, sample_index__lt=samples
    )
    return rows, len(prompt_ids) * len(checkpoints) * samples


def sampling_params(config: Mapping[str, Any]):
    """The ``SamplingParams`` of a stored round config (temperature 0 means greedy)."""
    from training.ml.generation import SamplingParams

    greedy = not config["temperature"] > 0
    return SamplingParams(
        temperature=1.0 if greedy else float(config["temperature"]),
        top_p=float(config["top_p"]),
        max_new_tokens=int(config["max_new_tokens"]),
        seed=int(config["seed"]),
        do_sample=not greedy,
    )


def round_generate(*, reporter: RunReporter, on_progress: Callable[[int, int], None] | None = None) -> None:
    """Fill the responses this run is responsible for, then open the round if it is complete.

    Run inside ``training.runs.running``: an exception fails the run, ``RunCancelled``
    cancels it; :func:`training.runs.generation_settle` then carries that over to the round.
    ``on_progress(done, total)`` (optional) hears the same progress as the run row:
    prompts answered by a checkpoint, done of total.
    """
    from training.ml.generation import generate_responses, load_model

    run = reporter.run
    round = Round.objects.select_related("project").get(pk=run.config["round_id"])
    if run.children.exists():
        # A chunked round's own run, queued again through run_retry: send its chunks instead.
        reporter.stage("Queueing the unfinished chunks again.")
        _chunks_requeue(run)
        return
    if round.status in (Round.Status.OPEN, Round.Status.CLOSED):
        reporter.stage(f"Round is already {round.status}; nothing to generate.")
        return

    plan = _plan(round, run.config.get("prompt_ids"))
    params = sampling_params(round.config)
    saved = set(
        Response.objects.filter(
            round=round, prompt_id__in=list(plan.prompts), checkpoint__in=plan.checkpoints
        ).values_list("prompt_id", "checkpoint_id", "sample_index")
    )

    def report(stage: str | None = None, *, force: bool = False) -> None:
        done, total = plan.units_done, plan.units_total
        reporter.progress(done, total, stage=stage, force=force)
        if on_progress is not None:
            on_progress(done, total)

    report(f"{plan.units_done} of {plan.units_total} prompts answered", force=True)
    parent_progress = _ParentProgress(run)
    for position, checkpoint in enumerate(plan.checkpoints, start=1):
        missing = plan.missing(checkpoint, saved)
        if not missing:
            continue
        reporter.stage(
            f"Loading checkpoint v{checkpoint.version} ({position} of {len(plan.checkpoints)}) from {checkpoint.uri}"
        )
        loaded = load_model(checkpoint.uri, device=round.config.get("device"))
        reporter.stage(
            f"Generating {len(missing)} responses with v{checkpoint.version} on {loaded.device} "
            f"(batch {round.config.get('batch_size', 8)}, up to {params.max_new_tokens} tokens)"
        )
        requests = [
            {
                "key": (prompt_id, s),
                "conversation": plan.prompts[prompt_id],
                "seed": prompt_id * SEED_STRIDE + s,
            }
            for prompt_id, s in missing
        ]
        base_params = {
            **params.to_dict(),
            "checkpoint_version": checkpoint.version,
            "device": str(loaded.device),
        }

        def on_batch(results, done, total, checkpoint=checkpoint, base_params=base_params):
            texts = [r["text"].replace("\x00", "") for r in results]  # Postgres text cannot hold NUL
            rows = [
                Response(
                    round=round,
                    prompt_id=r["key"][0],
                    checkpoint=checkpoint,
                    sample_index=r["key"][1],
                    text=text,
                    html=markdown_to_safe_html(text),  # here, once, not on every annotator's page
                    token_count=r["token_count"],
                    finish_reason=r["finish_reason"],
                    generation_params={
                        **base_params,
                        "request_seed": r["key"][0] * SEED_STRIDE + r["key"][1],
                    },
                )
                for r, text in zip(results, texts, strict=True)
            ]
            Response.objects.bulk_create(rows, ignore_conflicts=True)
            for r in results:
                key = (r["key"][0], checkpoint.pk, r["key"][1])
                if key not in saved:
                    saved.add(key)
                    plan.present[(key[0], key[1])] += 1
            report(f"{plan.units_done} of {plan.units_total} prompts answered (v{checkpoint.version})")
            parent_progress.maybe_update()

        generate_responses(
            loaded,
            requests,
            params,
            batch_size=int(round.config.get("batch_size", 8)),
            on_batch=on_batch,
            should_stop=reporter.should_stop,
        )
        del loaded
        _free_memory()
        reporter.raise_if_cancelled()
    report(force=True)
    parent_progress.maybe_update(force=True)
    built = round_complete_if_ready(round)
    if built is not None:
        run.outputs = {**run.outputs, "comparisons": built.created, "gold": built.gold}
        reporter.stage(
            f"Round {round.number} is open: {built.created} comparisons ({built.gold} gold, "
            f"{built.identical_dropped} identical responses left out)."
        )
    else:
        reporter.stage("This chunk is done; the round opens when every chunk is.")


def _plan(round: Round, prompt_ids: list[int] | None) -> _Plan:
    ids = _round_prompt_ids(round)
    if prompt_ids is not None:
        wanted = set(prompt_ids)
        ids = [pk for pk in ids if pk in wanted]
    prompts = dict(Prompt.objects.filter(pk__in=ids).order_by("pk").values_list("pk", "conversation"))
    checkpoints = list(round.checkpoints.order_by("-version"))
    samples = round.config["samples_per_checkpoint"]
    present: dict[tuple[int, int], int] = defaultdict(int)
    for prompt_id, checkpoint_id in Response.objects.filter(
        round=round, prompt_id__in=ids, checkpoint__in=checkpoints, sample_index__lt=samples
    ).values_list("prompt_id", "checkpoint_id"):
        present[(prompt_id, checkpoint_id)] += 1
    return _Plan(prompts=prompts, checkpoints=checkpoints, samples=samples, present=present)


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class _ParentProgress:
    """A chunk keeps its round's run up to date: the sum of its chunks' progress, every few seconds."""

    def __init__(self, run: TrainingRun, interval: float = 5.0):
        self.parent_id = run.parent_id
        self.interval = interval
        self._last = 0.0

    def maybe_update(self, *, force: bool = False) -> None:
        if self.parent_id is None or (not force and time.monotonic() - self._last < self.interval):
            return
        self._last = time.monotonic()
        sums = TrainingRun.objects.filter(parent_id=self.parent_id).aggregate(
            done=Sum("progress_done"), total=Sum("progress_total")
        )
        TrainingRun.objects.filter(pk=self.parent_id).update(
            progress_done=min(sums["done"] or 0, sums["total"] or 0),
            progress_total=sums["total"] or 0,
            heartbeat_at=timezone.now(),
        )


def round_complete_if_ready(round: Round) -> BuildResult | None:
    """Build the comparisons and open the round once every response exists (once, under its lock)."""
    with transaction.atomic():
        round = Round.objects.select_for_update().get(pk=round.pk)
        if round.status != Round.Status.GENERATING:
            return None
        rows, expected = _expected_responses(round)
        if rows.count() < expected:
            return None
        built = comparisons_build(round)
        round.status, round.opened_at, round.error = Round.Status.OPEN, timezone.now(), ""
        round.save(update_fields=["status", "opened_at", "error"])
        if round.generation_run_id:
            TrainingRun.objects.filter(pk=round.generation_run_id).update(
                outputs={"comparisons": built.created, "gold": built.gold}
            )
    return built


def _chunks_requeue(parent: TrainingRun) -> None:
    for child in parent.children.exclude(status=TrainingRun.Status.SUCCEEDED):
        if child.status in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
            run_retry(child)
        else:
            # Queued, or running on a worker that may have died: a second delivery is a
            # no-op unless the first is gone or stale (run_claim decides).
            enqueue(child, cleanup=lambda: None)


def round_retry(*, round: Round) -> Round:
    """Generate a failed round again; it continues where it stopped (saved responses stay).

    Call it outside a transaction so a broker that cannot be reached is reported at
    once: the round is then failed again with that reason and ``QueueUnavailable``
    is raised.
    """
    round.refresh_from_db()
    if round.status != Round.Status.FAILED:
        raise ValidationError(
            {"status": f"Round {round.number} is {round.status}; only a failed round can be retried."}
        )
    run = round.generation_run
    if run is None:  # the run row was deleted; start a fresh one
        run = TrainingRun.objects.create(
            project=round.project,
            kind=TrainingRun.Kind.GENERATE,
            config={"round_id": round.pk, "chunks": 1},
            status=TrainingRun.Status.FAILED,
        )
        Round.objects.filter(pk=round.pk).update(generation_run=run)
    Round.objects.filter(pk=round.pk, status=Round.Status.FAILED).update(
        status=Round.Status.GENERATING, error=""
    )
    try:
        if run.children.exists():
            TrainingRun.objects.filter(pk=run.pk).update(
                status=TrainingRun.Status.RUNNING, error="", finished_at=None, cancel_requested=False
            )
            _chunks_requeue(run)
        elif run.status in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
            run_retry(run)
        else:
            if run.status == TrainingRun.Status.SUCCEEDED:
                TrainingRun.objects.filter(pk=run.pk).update(
                    status=TrainingRun.Status.QUEUED, finished_at=None
                )
            enqueue(run, cleanup=lambda: None)
    except QueueUnavailable as exc:
        Round.objects.filter(pk=round.pk).update(status=Round.Status.FAILED, error=str(exc))
        raise
    round.refresh_from_db()
    return round


# --- comparisons ----------------------------------------------------------------


@dataclass
class BuildResult:
    created: int = 0
    gold: int = 0
    identical_dropped: int = 0


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _distinct(responses: Iterable[Response]) -> tuple[list[Response], int]:
    seen, kept, dropped = set(), [], 0
    for response in responses:
        key = _normalised(response.text)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(response)
    return kept, dropped


def _groups_for_prompt(
    mode: str, k: int, checkpoints: list[Checkpoint], by_checkpoint: dict[int, list[Response]]
) -> tuple[list[list[Response]], int]:
    """The response groups one prompt's comparisons are made of, and how many duplicates were left out."""
    if mode == Project.Mode.PAIRWISE and len(checkpoints) > 1:
        groups, dropped = [], 0
        for a, b in itertools.combinations(checkpoints, 2):
            candidates = [
                (x, y)
                for x, y in itertools.product(by_checkpoint.get(a.pk, []), by_checkpoint.get(b.pk, []))
                if _normalised(x.text) != _normalised(y.text)
            ]
            candidates.sort(
                key=lambda pair: (max(pair[0].sample_index, pair[1].sample_index), pair[0].sample_index)
            )
            if candidates:
                groups.append(list(candidates[0]))
            elif by_checkpoint.get(a.pk) and by_checkpoint.get(b.pk):
                dropped += 1
        return groups, dropped
    size = 2 if mode == Project.Mode.PAIRWISE else k
    interleaved = [
        r
        for column in itertools.zip_longest(*(by_checkpoint.get(c.pk, []) for c in checkpoints))
        for r in column
        if r is not None
    ]
    distinct, dropped = _distinct(interleaved)
    return [distinct[i : i + size] for i in range(0, len(distinct) - size + 1, size)], dropped


def comparisons_build(round: Round) -> BuildResult:
    """Create the round's comparisons from its responses; running it again creates none twice.

    See the module docstring for how responses are grouped and how gold is marked.
    """
    result = BuildResult()
    with transaction.atomic():
        round = Round.objects.select_for_update().select_related("project").get(pk=round.pk)
        project = round.project
        checkpoints = list(round.checkpoints.order_by("-version"))
        rows, _ = _expected_responses(round)
        by_prompt: dict[int, dict[int, list[Response]]] = defaultdict(lambda: defaultdict(list))
        for response in rows.order_by("prompt_id", "sample_index"):
            by_prompt[response.prompt_id][response.checkpoint_id].append(response)

        existing = _existing_groups(round)
        new: list[tuple[int, list[Response]]] = []
        for prompt_id in sorted(by_prompt):
            groups, dropped = _groups_for_prompt(
                project.comparison_mode, project.k, checkpoints, by_prompt[prompt_id]
            )
            result.identical_dropped += dropped
            for group in groups:
                ids = frozenset(r.pk for r in group)
                if ids not in existing:
                    existing.add(ids)
                    new.append((prompt_id, group))
        comparisons = Comparison.objects.bulk_create(
            [Comparison(round=round, prompt_id=prompt_id, source="generated") for prompt_id, _ in new]
        )
        ComparisonItem.objects.bulk_create(
            ComparisonItem(comparison=comparison, response=response, position=position)
            for comparison, (_, group) in zip(comparisons, new, strict=True)
            for position, response in enumerate(group)
        )
        result.created = len(comparisons)
        result.gold = _gold_mark(round, checkpoints)
    return result


def _existing_groups(round: Round) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = defaultdict(set)
    for comparison_id, response_id in ComparisonItem.objects.filter(comparison__round=round).values_list(
        "comparison_id", "response_id"
    ):
        groups[comparison_id].add(response_id)
    return {frozenset(ids) for ids in groups.values()}


def _gold_mark(round: Round, checkpoints: list[Checkpoint]) -> int:
    """Mark ``gold_share`` of the round's comparisons gold where an answer decides them; the gold count."""
    comparisons = Comparison.objects.filter(round=round)
    share = float(round.config.get("gold_share") or 0)
    answers = round.config.get("gold_answers") or {}
    already = comparisons.filter(is_gold=True).count()
    wanted = int(share * comparisons.count() + 0.5)  # rounded half up; ``round`` is the round here
    if wanted <= already or not answers:
        return already
    version_of = {c.pk: c.version for c in checkpoints}
    candidates = []
    for comparison in (
        comparisons.filter(is_gold=False, judgment_count=0, prompt_id__in=[int(p) for p in answers])
        .prefetch_related("items__response")
        .order_by("pk")
    ):
        answer = answers[str(comparison.prompt_id)]
        responses = [item.response for item in comparison.items.all()]
        winners = [r.pk for r in responses if _matches(answer, r, version_of)]
        losers = [r.pk for r in responses if r.pk not in winners]
        if winners and losers:
            candidates.append((comparison, [winners, losers]))
    chosen = random.Random(round.config.get("seed", 0)).sample(
        candidates, min(wanted - already, len(candidates))
    )
    for comparison, ranking in chosen:
        comparison.is_gold, comparison.gold_ranking = True, ranking
        comparison.save(update_fields=["is_gold", "gold_ranking"])
    return already + len(chosen)


def _matches(answer: dict, response: Response, version_of: dict[int, int]) -> bool:
    if "checkpoint" in answer and version_of.get(response.checkpoint_id) != answer["checkpoint"]:
        return False
    return not ("sample_index" in answer and response.sample_index != answer["sample_index"])

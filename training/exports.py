"""Preference datasets for researchers: a zip with the data and a dataset card, streamed to disk.

Formats (``Export.Format``), each a zip under ``ARTIFACTS_DIR/exports/`` holding
``README.md`` (the dataset card, Hugging Face front matter) and:

* ``trl_jsonl`` — ``data/train.jsonl``, TRL's *standard* preference form:
  ``{"prompt": str, "chosen": str, "rejected": str, "margin": float}``. No chat
  template is applied: the prompt is the conversation as an HH-RLHF transcript,
  ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"`` (a system turn
  reads ``"System: ..."``), and each reply starts with one space, so ``prompt + chosen``
  is the whole dialogue exactly as Anthropic's HH-RLHF files write it. A model with a
  chat template should use the conversational form instead.
* ``trl_conversational`` — ``data/train.jsonl``, TRL's *conversational* form: ``prompt``
  a list of ``{role, content}``, ``chosen``/``rejected`` one assistant message each,
  ``margin``; TRL applies the tokenizer's chat template.
* ``parquet`` — ``data/train.parquet``, the conversational columns, row groups
  written as rows stream.
* ``hf_dataset`` — ``dataset/``, the conversational columns as a ``datasets`` directory
  (``load_from_disk``).
* ``judgments`` — ``data/judgments.jsonl``, one row per judgment with everything it
  recorded (see :func:`judgment_export_row`).
* ``prompts_openrlhf`` — ``data/prompts.jsonl``: ``{"input": transcript, "messages":
  [...], ...}``; OpenRLHF reads it with ``--input_key messages --apply_chat_template``
  (or ``--input_key input`` for a model without a template).
* ``prompts_verl`` — ``data/train.parquet`` in verl's RL format: ``data_source``,
  ``prompt`` (messages), ``ability``, ``reward_model {style, ground_truth}``, ``extra_info``.

Pairs come from ``training.ml.pairs`` with its default options (every judgment its own
pairs, ties and "both bad" give none, gold items left out, strength as margin),
read comparison by comparison (``training.snapshots.pair_rows``), so memory stays
flat whatever the number of judgments. ``margin`` is TRL ``RewardTrainer``'s margin
column; other trainers ignore it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from django.utils.text import slugify

from annotation.models import Comparison, Judgment, Project, Prompt, Response
from training.ml.pairs import DEFAULT_MARGINS, LOSS_WEIGHTING_CONVENTIONS, PairOptions
from training.models import Export
from training.runs import QUEUE_DOWN, send_on_commit
from training.snapshots import (
    CHUNK_SIZE,
    IMPORTED_PREFIX,
    JudgmentFilters,
    RowStats,
    annotator_pseudonym,
    comparison_groups,
    judgment_rows,
    judgments_for,
    pair_rows,
)

log = logging.getLogger(__name__)

Fmt = Export.Format
PARQUET_ROW_GROUP = 5000
PROGRESS_INTERVAL = 1.0  # seconds between progress writes to the Export row
COPY_CHUNK = 1024 * 1024
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same content gives the same zip and sha256

ROLE_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant"}
PAIR_FORMATS = (Fmt.TRL_JSONL, Fmt.TRL_CONVERSATIONAL, Fmt.PARQUET, Fmt.HF_DATASET)
PROMPT_FORMATS = (Fmt.PROMPTS_OPENRLHF, Fmt.PROMPTS_VERL)


# --- row shapes -----------------------------------------------------------------------------


def messages(conversation: Iterable[dict]) -> list[dict[str, str]]:
    """The turns as ``{role, content}`` only (what chat templates and Parquet schemas expect)."""
    return [{"role": str(t.get("role", "")), "content": str(t.get("content", ""))} for t in conversation]


def prompt_text(conversation: Iterable[dict]) -> str:
    """The conversation as an HH-RLHF transcript ending with the cue for the assistant's reply."""
    turns = "".join(
        f"\n\n{ROLE_LABELS.get(t.get('role'), str(t.get('role', '')).title())}: {t.get('content', '')}"
        for t in conversation
    )
    return turns + "\n\nAssistant:"


def trl_text_row(pair: dict) -> dict[str, Any]:
    return {
        "prompt": prompt_text(pair["prompt"]),
        "chosen": " " + pair["chosen"],
        "rejected": " " + pair["rejected"],
        "margin": float(pair["margin"]),
    }


def trl_conversational_row(pair: dict) -> dict[str, Any]:
    return {
        "prompt": messages(pair["prompt"]),
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
        "margin": float(pair["margin"]),
    }


def judgment_export_row(j: dict) -> dict[str, Any]:
    """One judgment for the raw export: the full ranking and everything the annotator saw and said."""
    return {
        "judgment_id": j["judgment_id"],
        "comparison_id": j["comparison_id"],
        "prompt_id": j["prompt_id"],
        "round": j["round"],
        "source": j["source"],
        "annotator": j["annotator"],
        "prompt": messages(j["prompt"]),
        "responses": [
            {"id": rid, "position": j["positions"][rid], "checkpoint": j["checkpoints"][rid], "text": text}
            for rid, text in sorted(j["responses"].items(), key=lambda kv: j["positions"][kv[0]])
        ],
        "ranking": j["ranking"],
        "strength": j["strength"],
        "is_tie": j["is_tie"],
        "both_bad": j["both_bad"],
        "rationale": j["rationale"],
        "criteria": j["criteria"],
        "order_shown": j["order_shown"],
        "time_spent_ms": j["time_spent_ms"],
        "is_gold": j["is_gold"],
        "gold_ranking": j["gold_ranking"],
        "created_at": j["created_at"],
    }


def openrlhf_row(prompt: Prompt) -> dict[str, Any]:
    return {
        "input": prompt_text(prompt.conversation),
        "messages": messages(prompt.conversation),
        "prompt_id": prompt.pk,
        "split": prompt.split,
        "source": prompt.source,
        "tags": list(prompt.tags or []),
    }


def verl_row(prompt: Prompt, project: Project) -> dict[str, Any]:
    return {
        "data_source": f"tandem/{slugify(project.name) or project.pk}",
        "prompt": messages(prompt.conversation),
        "ability": "alignment",
        # Scored by the reward model, so there is no reference answer to check against.
        "reward_model": {"style": "model", "ground_truth": ""},
        "extra_info": {
            "split": prompt.split,
            "index": prompt.pk,
            "source": prompt.source,
            "tags": [str(t) for t in (prompt.tags or [])],
        },
    }


def _parquet_schemas():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    pairs = pa.schema(
        [
            ("prompt", pa.list_(message)),
            ("chosen", pa.list_(message)),
            ("rejected", pa.list_(message)),
            ("margin", pa.float64()),
        ]
    )
    verl = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(message)),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [
                        ("split", pa.string()),
                        ("index", pa.int64()),
                        ("source", pa.string()),
                        ("tags", pa.list_(pa.string())),
                    ]
                ),
            ),
        ]
    )
    return pairs, verl


# --- streamed writers -----------------------------------------------------------------------


def write_jsonl(rows: Iterable[dict], path: Path) -> int:
    """Write ``rows`` one JSON object a line; return how many (the file is buffered, memory flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False))
            fh.write("\n")
            n += 1
    return n


def write_parquet(rows: Iterable[dict], path: Path, schema, *, row_group: int = PARQUET_ROW_GROUP) -> int:
    """Write ``rows`` to Parquet ``row_group`` rows at a time; return how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    batch: list[dict] = []
    with pq.ParquetWriter(path, schema) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) >= row_group:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n += len(batch)
                batch = []
        if batch or n == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    return n


def write_hf_dataset(parquet_path: Path, out_dir: Path, work_dir: Path) -> None:
    """A ``datasets`` directory (``save_to_disk``) from a Parquet file, through an on-disk Arrow cache."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.table import InMemoryTable

    if pq.ParquetFile(parquet_path).metadata.num_rows == 0:
        # The Parquet builder refuses an empty file; one explicit (empty) shard keeps it loadable.
        Dataset(InMemoryTable(pq.read_table(parquet_path))).save_to_disk(str(out_dir), num_shards=1)
        return
    dataset = Dataset.from_parquet(
        str(parquet_path), cache_dir=str(work_dir / "hf-cache"), keep_in_memory=False
    )
    dataset.save_to_disk(str(out_dir))


# --- the export -----------------------------------------------------------------------------


def exports_dir() -> Path:
    return Path(settings.ARTIFACTS_DIR) / "exports"


def export_filename(export: Export) -> str:
    return f"{slugify(export.project.name) or 'project'}-{export.format.replace('_', '-')}-{export.pk}.zip"


def annotator_ids(project: Project, names: Iterable[str], *, usernames_allowed: bool) -> list[int]:
    """User ids for an annotator filter, from the pseudonyms the project's data show.

    Researchers filter by pseudonym only, so a filter never links a pseudonym to a person (nor
    says which accounts exist); admins, who can see both, may also give usernames. Raises
    ValueError naming what matched no annotator of the project.
    """
    wanted = sorted({name.strip() for name in names if name.strip()})
    if not wanted:
        return []
    judged = (
        Judgment.objects.filter(comparison__round__project=project, annotator__isnull=False)
        .values_list("annotator_id", flat=True)
        .distinct()
    )
    by_pseudonym = {annotator_pseudonym(project.pk, uid): uid for uid in judged}
    found = {name: by_pseudonym[name] for name in wanted if name in by_pseudonym}
    if usernames_allowed and (rest := [name for name in wanted if name not in found]):
        found |= dict(get_user_model().objects.filter(username__in=rest).values_list("username", "pk"))
    if missing := [name for name in wanted if name not in found]:
        what = (
            "annotator id or username" if usernames_allowed else "annotator id (as the exported data show it)"
        )
        raise ValueError(f"No {what} {', '.join(missing)} in {project.name}.")
    return sorted(set(found.values()))


def normalise_filters(data: dict | None) -> dict[str, Any]:
    """Export filters as stored: the judgment filters' JSON (raises ValueError on bad values)."""
    return JudgmentFilters.from_json(data).to_json()


def export_create(
    *, project: Project, format: str, filters: dict | None = None, licence: str = "", created_by=None
) -> Export:
    """Record an export and queue ``training.tasks.export_build`` for it (after the transaction commits).

    Raises ValueError for an unknown format or bad filters, ``QueueUnavailable`` when the
    broker cannot be reached (the export is then marked failed, with that reason).
    """
    if format not in Fmt.values:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(Fmt.values)}")
    export = Export.objects.create(
        project=project,
        format=format,
        filters=normalise_filters(filters),
        licence=licence.strip(),
        created_by=created_by,
    )
    export_enqueue(export)
    return export


def export_enqueue(export: Export) -> None:
    """Queue ``training.tasks.export_build`` for ``export``; an unreachable broker fails it, with that reason."""

    def unreachable() -> str:
        message = QUEUE_DOWN.format(what="the export was not")
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.FAILED, error=message, finished_at=timezone.now()
        )
        return message

    send_on_commit("training.tasks.export_build", export.pk, unreachable=unreachable)


def export_claim(export_id: int) -> Export | None:
    """Mark a queued export running (a conditional UPDATE, so a duplicate delivery does nothing)."""
    claimed = Export.objects.filter(pk=export_id, status=Export.Status.QUEUED).update(
        status=Export.Status.RUNNING, error="", progress_done=0
    )
    return Export.objects.select_related("project").get(pk=export_id) if claimed else None


class _Progress:
    """Writes ``progress_done`` to the Export row at most once a ``PROGRESS_INTERVAL``."""

    def __init__(self, export: Export, callback: Callable[[int, int], None] | None):
        self.export = export
        self.callback = callback
        self.last = 0.0

    def total(self, n: int) -> None:
        self.export.progress_total = n
        Export.objects.filter(pk=self.export.pk).update(progress_total=n, progress_done=0)
        if self.callback:
            self.callback(0, n)

    def __call__(self, done: int) -> None:
        done = min(done, self.export.progress_total)
        if self.callback:
            self.callback(done, self.export.progress_total)
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            Export.objects.filter(pk=self.export.pk).update(progress_done=done)


@dataclass
class Built:
    rows: int
    stats: dict[str, Any]
    files: list[str]  # paths inside the archive, data only


def _counted(rows: Iterator[dict], progress: _Progress) -> Iterator[dict]:
    for n, row in enumerate(rows, 1):
        if n % 500 == 0:
            progress(n)
        yield row


def prompts_filtered(project: Project, filters: JudgmentFilters) -> QuerySet[Prompt]:
    """The project's prompts for RL: narrowed by rounds, checkpoints and imported data only.

    Annotator, date and agreement filters describe judgments, and an RL prompt set wants
    prompts whether or not anyone has judged them yet, so they do not apply here.
    """
    qs = Prompt.objects.filter(project=project)
    if filters.rounds:
        qs = qs.filter(
            Exists(Comparison.objects.filter(prompt=OuterRef("pk"), round__number__in=filters.rounds))
        )
    if filters.checkpoints:
        qs = qs.filter(
            Exists(
                Response.objects.filter(
                    prompt=OuterRef("pk"),
                    checkpoint__version__in=filters.checkpoints,
                    checkpoint__project=project,
                )
            )
        )
    if not filters.include_imported:
        qs = qs.exclude(source__startswith=IMPORTED_PREFIX)
    return qs.order_by("id")


def _build_data(export: Export, build_dir: Path, progress: _Progress) -> Built:
    project, fmt = export.project, export.format
    filters = JudgmentFilters.from_json(export.filters)
    pairs_schema, verl_schema = _parquet_schemas()

    if fmt in PROMPT_FORMATS:
        qs = prompts_filtered(project, filters)
        progress.total(qs.count())
        prompts = _counted(qs.iterator(chunk_size=CHUNK_SIZE), progress)
        if fmt == Fmt.PROMPTS_OPENRLHF:
            n = write_jsonl((openrlhf_row(p) for p in prompts), build_dir / "data" / "prompts.jsonl")
            files = ["data/prompts.jsonl"]
        else:
            n = write_parquet(
                (verl_row(p, project) for p in prompts), build_dir / "data" / "train.parquet", verl_schema
            )
            files = ["data/train.parquet"]
        return Built(rows=n, stats={"prompts": n}, files=files)

    judgments = judgments_for(project, filters)
    progress.total(judgments.count())
    stats = RowStats()

    if fmt == Fmt.JUDGMENTS:

        def rows():
            for group in comparison_groups(judgment_rows(judgments)):
                stats.see_comparison(group)
                progress(stats.judgments)
                yield from (judgment_export_row(j) for j in group)

        n = write_jsonl(rows(), build_dir / "data" / "judgments.jsonl")
        return Built(rows=n, stats=stats.to_json(), files=["data/judgments.jsonl"])

    pairs = pair_rows(judgments, PairOptions(), stats=stats, on_judgments=progress)
    if fmt == Fmt.TRL_JSONL:
        n = write_jsonl(map(trl_text_row, pairs), build_dir / "data" / "train.jsonl")
        files = ["data/train.jsonl"]
    elif fmt == Fmt.TRL_CONVERSATIONAL:
        n = write_jsonl(map(trl_conversational_row, pairs), build_dir / "data" / "train.jsonl")
        files = ["data/train.jsonl"]
    elif fmt == Fmt.PARQUET:
        n = write_parquet(
            map(trl_conversational_row, pairs), build_dir / "data" / "train.parquet", pairs_schema
        )
        files = ["data/train.parquet"]
    elif fmt == Fmt.HF_DATASET:
        work = build_dir.parent / f"{build_dir.name}-work"
        try:
            staged = work / "train.parquet"
            n = write_parquet(map(trl_conversational_row, pairs), staged, pairs_schema)
            write_hf_dataset(staged, build_dir / "dataset", work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        files = sorted(
            str(p.relative_to(build_dir)) for p in (build_dir / "dataset").rglob("*") if p.is_file()
        )
    else:  # pragma: no cover - Export.Format and this function change together
        raise ValueError(f"unknown format {fmt!r}")
    return Built(rows=n, stats=stats.to_json(), files=files)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_dir(src: Path, dest: Path) -> None:
    """Zip ``src`` into ``dest`` with sorted names and fixed dates (same content, same bytes)."""
    with zipfile.ZipFile(dest, "w", allowZip64=True) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            name = str(path.relative_to(src))
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            # Parquet and Arrow are compressed already; deflate would only cost time.
            info.compress_type = (
                zipfile.ZIP_STORED if path.suffix in (".parquet", ".arrow") else zipfile.ZIP_DEFLATED
            )
            with open(path, "rb") as fh, zf.open(info, "w", force_zip64=True) as out:
                shutil.copyfileobj(fh, out, COPY_CHUNK)


def export_run(export: Export, *, on_progress: Callable[[int, int], None] | None = None) -> Export:
    """Build the export's zip (data and dataset card), then record rows, sha256 and the file.

    Works in a scratch folder beside the final file and renames the zip into place
    only when complete. A failure marks the export failed with a readable reason (and
    leaves no file); it is not raised, so the caller reads ``export.status``.
    """
    out_dir = exports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir / f".build-{export.pk}-{uuid.uuid4().hex[:8]}"
    build_dir = scratch / "archive"
    progress = _Progress(export, on_progress)
    Export.objects.filter(pk=export.pk).update(status=Export.Status.RUNNING, error="")
    try:
        build_dir.mkdir(parents=True)
        built = _build_data(export, build_dir, progress)
        hashes = {name: file_sha256(build_dir / name) for name in built.files}
        card = dataset_card(export, built, hashes)
        (build_dir / "README.md").write_text(card, encoding="utf-8")
        staged = scratch / "export.zip"
        _zip_dir(build_dir, staged)
        final = out_dir / export_filename(export)
        os.replace(staged, final)
        export.status = Export.Status.SUCCEEDED
        export.rows = built.rows
        export.sha256 = file_sha256(final)
        export.uri = str(final)
        export.progress_done = export.progress_total
        export.finished_at = timezone.now()
        export.error = ""
    except Exception as exc:
        log.exception("export %s failed", export.pk)
        export.status = Export.Status.FAILED
        export.error = f"{type(exc).__name__}: {exc}"[:2000]
        export.finished_at = timezone.now()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    export.save(
        update_fields=[
            "status",
            "rows",
            "sha256",
            "uri",
            "progress_done",
            "progress_total",
            "finished_at",
            "error",
        ]
    )
    return export


def export_build_by_id(export_id: int) -> Export | None:
    """What the Celery task does: claim the queued export and build it (None if not queued)."""
    export = export_claim(export_id)
    return export_run(export) if export is not None else None


def export_file(export: Export) -> Path | None:
    """The export's zip when it is ready and still on disk (and inside the exports folder)."""
    if export.status != Export.Status.SUCCEEDED or not export.uri:
        return None
    path = Path(export.uri)
    try:
        path.resolve().relative_to(exports_dir().resolve())
    except ValueError:
        return None
    return path if path.is_file() else None


# --- dataset card ---------------------------------------------------------------------------

COLUMNS = {
    Fmt.TRL_JSONL: [
        ("prompt", "string: the conversation as an HH-RLHF transcript ending with `\\n\\nAssistant:`"),
        ("chosen", "string: the preferred reply, with one leading space"),
        ("rejected", "string: the other reply, with one leading space"),
        ("margin", "float: the strength of the preference (see below)"),
    ],
    Fmt.TRL_CONVERSATIONAL: [
        ("prompt", "list of {role, content}: the conversation up to the reply"),
        ("chosen", "list with one {role: assistant, content}: the preferred reply"),
        ("rejected", "list with one {role: assistant, content}: the other reply"),
        ("margin", "float: the strength of the preference (see below)"),
    ],
    Fmt.JUDGMENTS: [
        ("judgment_id, comparison_id, prompt_id", "ids in Tandem"),
        ("round", "round number (null for imported data)"),
        ("source", '"human", "simulated" or "imported:<name>"'),
        ("annotator", "pseudonymous annotator id, stable within this project (null for imported data)"),
        ("prompt", "list of {role, content}"),
        ("responses", "list of {id, position, checkpoint (version, null if imported), text}"),
        ("ranking", "groups of response ids, best first; a group of two or more is a tie"),
        ("strength", 'null, "slight" or "much" (pairwise 4-point scale)'),
        ("is_tie, both_bad", "booleans as the annotator marked them"),
        ("rationale, criteria", "the annotator's words and per-criterion ratings"),
        ("order_shown", "response ids left to right as shown"),
        ("time_spent_ms", "time on task in milliseconds"),
        ("is_gold, gold_ranking", "quality-probe items and their expected answer"),
        ("created_at", "when the judgment was recorded (ISO 8601)"),
    ],
    Fmt.PROMPTS_OPENRLHF: [
        ("input", "string: the conversation as an HH-RLHF transcript (`--input_key input`)"),
        ("messages", "list of {role, content} (`--input_key messages --apply_chat_template`)"),
        ("prompt_id, split, source, tags", "from Tandem"),
    ],
    Fmt.PROMPTS_VERL: [
        ("data_source", "string: tandem/<project>"),
        ("prompt", "list of {role, content}"),
        ("ability", 'string: "alignment"'),
        ("reward_model", '{style: "model", ground_truth: ""}: scored by a reward model'),
        ("extra_info", "{split, index (prompt id), source, tags}"),
    ],
}
COLUMNS[Fmt.PARQUET] = COLUMNS[Fmt.TRL_CONVERSATIONAL]
COLUMNS[Fmt.HF_DATASET] = COLUMNS[Fmt.TRL_CONVERSATIONAL]

LOADING = {
    Fmt.TRL_JSONL: 'load_dataset("json", data_files="data/train.jsonl", split="train")',
    Fmt.TRL_CONVERSATIONAL: 'load_dataset("json", data_files="data/train.jsonl", split="train")',
    Fmt.PARQUET: 'load_dataset("parquet", data_files="data/train.parquet", split="train")',
    Fmt.HF_DATASET: 'load_from_disk("dataset")',
    Fmt.JUDGMENTS: 'load_dataset("json", data_files="data/judgments.jsonl", split="train")',
    Fmt.PROMPTS_OPENRLHF: 'load_dataset("json", data_files="data/prompts.jsonl", split="train")',
    Fmt.PROMPTS_VERL: 'load_dataset("parquet", data_files="data/train.parquet", split="train")',
}


def _filters_for_card(export: Export) -> dict[str, Any]:
    filters = dict(export.filters)
    # User ids would identify people across projects; the card names annotators as the data do.
    filters["annotators"] = [
        annotator_pseudonym(export.project_id, uid) for uid in filters.get("annotators", [])
    ]
    return filters


_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+-.!|~>"} | {"<": "&lt;", "&": "&amp;"})


def markdown_text(text: str) -> str:
    """``text`` shown literally in a markdown body (one line, no link, image, HTML or heading):
    project names and licences are typed by people, and the card is rendered on the Hub."""
    return " ".join(text.split()).translate(_MARKDOWN_SPECIAL)


def dataset_card(export: Export, built: Built, hashes: dict[str, str]) -> str:
    """README.md for the archive: Hugging Face front matter, counts, filters, how pairs were made."""
    fmt = export.format
    licence = export.licence or "other"
    front = ["---", f"license: {json.dumps(licence)}", "tags: [tandem, rlhf, preference]"]
    if fmt != Fmt.HF_DATASET:
        front += [
            "configs:",
            "- config_name: default",
            "  data_files:",
            "  - split: train",
            f"    path: {built.files[0]}",
        ]
    front.append("---")
    stats = built.stats
    lines = [
        *front,
        "",
        f"# {markdown_text(export.project.name)}: {export.get_format_display()}",
        "",
        f"Exported from Tandem, project **{markdown_text(export.project.name)}**, format `{fmt}`.",
        "",
        f"**Licence:** {markdown_text(export.licence) or 'not set (ask the project admin before sharing)'}",
        "",
        "## Counts",
        "",
        f"- rows in the data file: {built.rows}",
    ]
    for key, value in stats.items():
        if key != "mean_agreement" and not isinstance(value, dict):
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    for key in ("judgments_by_source", "judgments_by_round"):
        if stats.get(key):
            lines.append(
                f"- {key.replace('_', ' ')}: " + ", ".join(f"{k}: {v}" for k, v in stats[key].items())
            )
    if fmt not in PROMPT_FORMATS:
        agreement = stats.get("mean_agreement")
        lines += [
            "",
            "## Agreement",
            "",
            "Per comparison judged more than once: for each pair of its responses, the share of judgments "
            "giving the most common verdict (this one better, that one better, tie), averaged over its pairs.",
            "",
            f"- comparisons judged more than once: {stats.get('comparisons_with_several_judgments', 0)}",
            f"- mean agreement: {'n/a' if agreement is None else f'{agreement:.3f}'}",
        ]
    lines += [
        "",
        "## Filters",
        "",
        "```json",
        json.dumps(_filters_for_card(export), indent=2, sort_keys=True),
        "```",
    ]
    if fmt in PROMPT_FORMATS:
        lines += [
            "",
            "Prompt exports apply the round, checkpoint and imported-data filters; the others describe "
            "judgments and do not apply to prompts.",
        ]
    if fmt in PAIR_FORMATS:
        options = PairOptions()
        margins = ", ".join(
            f"{'unknown' if k is None else k}: {v}" for k, v in sorted(DEFAULT_MARGINS.items(), key=str)
        )
        lines += [
            "",
            "## How pairs were derived",
            "",
            "- A ranking (groups of responses, best first) gives one (chosen, rejected) pair for every "
            "response of a better group against every response of a worse group: a K-wise ranking without "
            "ties gives K(K-1)/2 pairs.",
            "- Responses in one group are tied and give no pair; a judgment marked *both bad* gives none.",
            "- Gold (quality-probe) items are left out; every other judgment is its own pairs (no "
            "majority vote), so a comparison judged by three annotators appears three times.",
            f"- `margin` from the pairwise strength: {margins}; pairs from K-wise rankings get the "
            "unknown-strength margin.",
            f"- Loss weighting: every pair weighs the same ({LOSS_WEIGHTING_CONVENTIONS[options.weighting]}).",
            "- Imported preference data (for example HH-RLHF) is included like any other judgment unless "
            "the filters leave it out.",
        ]
    if fmt == Fmt.TRL_JSONL:
        lines += [
            "",
            "No chat template is applied: `prompt + chosen` is the dialogue as an HH-RLHF transcript. "
            "For a model with a chat template, export the conversational form.",
        ]
    lines += ["", "## Columns", ""]
    lines += [f"- `{name}`: {text}" for name, text in COLUMNS[fmt]]
    lines += [
        "",
        "Annotator ids are pseudonyms (a keyed hash of project and user): stable within this project, "
        "different in other projects, never the username.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset, load_from_disk",
        f"dataset = {LOADING[fmt]}",
        "```",
        "",
        "## Files",
        "",
    ]
    lines += [f"- `{name}` sha256 `{digest}`" for name, digest in sorted(hashes.items())]
    return "\n".join(lines) + "\n"

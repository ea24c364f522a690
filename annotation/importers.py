"""Import prompts and external preference data from JSONL or CSV files, plain or gzip.

Two services, both keyword-only, both returning an :class:`ImportResult`:

``import_prompts`` reads one prompt a row. JSONL rows are objects with either
``prompt`` (a string: one user turn) or ``messages`` (a list of ``{role, content}``,
roles ``system``/``user``/``assistant``), and optionally ``split`` (``train`` or
``eval``) and ``tags`` (a list of strings, or one comma-separated string). CSV files
have a header naming the same columns; ``messages`` is then a JSON list and ``tags``
comma-separated. A conversation may open with one system turn and must end with a
user turn, because a prompt is what the policy answers next. Contents are stored as
written, but a turn that is empty or only whitespace is a bad row.

``import_preferences`` turns each row into a prompt, two responses, a comparison and
one judgment of source ``imported:<name>`` (annotator empty) ranking the chosen
reply first. It reads:

* HH-RLHF rows, ``{"chosen", "rejected"}``, each a whole dialogue
  ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``. Both must end with an assistant turn and
  agree on every turn before it; those shared turns become the prompt and the two
  last replies the responses. Turn contents are stripped of surrounding whitespace
  (the format's separators), as TRL's own HH-RLHF script does.
* TRL preference rows: ``prompt``/``chosen``/``rejected`` as plain strings, or
  conversational (``prompt`` a message list ending with a user turn, ``chosen`` and
  ``rejected`` each a list holding one assistant message); also TRL's implicit-prompt
  form, ``chosen``/``rejected`` as two whole conversations that share all but their
  last assistant message. An optional numeric ``margin`` is kept in the judgment's
  ``criteria`` as ``{"margin": m}``.

With ``format="auto"`` each row picks its reader: a ``prompt`` key or list-valued
replies mean TRL, two strings mean HH-RLHF.

Rules shared by both:

* Bad rows (malformed JSON, wrong types, missing fields, empty text, invalid UTF-8,
  an unknown split, a line over ``max_line_bytes`` ...) are reported as
  ``(line number, reason)``; line numbers count physical lines from 1 (a CSV record
  is reported at the line where it starts). Blank lines are ignored.
* One transaction. Without ``skip_bad`` a single bad row refuses the whole import and
  nothing is written; with ``skip_bad`` good rows are imported and bad ones reported.
  A file that cannot be read to its end (corrupt or truncated gzip) is always
  refused, since nobody knows what the unread part held. An unexpected exception
  rolls everything back and propagates.
* The file is streamed: lines are read one at a time and rows are written in batches
  (``COPY`` for prompts on PostgreSQL, ``bulk_create`` otherwise), so memory stays flat
  whatever the file's size.
* Gzip is recognised by its magic bytes, whatever the file is called.

Limits, each checked while streaming and each refused with a message naming it:

* ``max_line_bytes`` (default ``settings.IMPORT_MAX_LINE_BYTES``): a longer line is a bad
  row; the rest of it is read past, never held.
* ``max_nesting`` (default ``settings.IMPORT_MAX_NESTING``): JSON nested deeper is a bad row.
* ``max_rows`` (none by default; the upload pages pass ``settings.IMPORT_MAX_ROWS``): a
  file with more rows, or more blank lines, is refused as soon as it reaches one more.
* ``max_bytes`` (none by default; the upload pages pass
  ``settings.IMPORT_MAX_DECOMPRESSED_BYTES``): a file whose content (after gunzip) is
  larger is refused once that much is read, so a gzip bomb is never inflated past it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from annotation.models import Comparison, ComparisonItem, Judgment, Project, Prompt, Response

BATCH_ROWS = 2000
# A batch is also written once its text passes this many characters, so a file of long rows
# (each under the line cap) never gathers gigabytes before a write.
BATCH_CHARS = 8 * 1024 * 1024
# A garbage file could hold millions of bad lines: keep the first ones, count them all.
MAX_REPORTED_ERRORS = 1000
SOURCE_MAX_LENGTH = 200  # Prompt.source, Comparison.source, Judgment.source
IMPORTED_PREFIX = "imported:"

ROLES = ("system", "user", "assistant")
SPLITS = tuple(Prompt.Split.values)
PREFERENCE_FORMATS = ("auto", "hh-rlhf", "trl")
PROMPT_FORMATS = ("auto", "jsonl", "csv")

FileArg = str | Path | IO[bytes]
Progress = Callable[[int], None]


@dataclass
class ImportResult:
    """What an import did.

    ``errors`` lists ``(line, reason)`` for the first ``MAX_REPORTED_ERRORS`` bad rows
    (``bad`` counts all of them). ``refused`` means nothing was written: a bad row
    without ``skip_bad``, or ``file_error`` (the file could not be read to its end).
    """

    source: str
    imported: int = 0
    skipped: int = 0
    bad: int = 0
    rows: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    refused: bool = False
    file_error: str | None = None

    def report(self, line: int, reason: str) -> None:
        self.bad += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((line, reason))

    @property
    def summary(self) -> str:
        if self.file_error:
            return f"Import refused, nothing written: {self.file_error}"
        if self.refused:
            return (
                f"Import refused, nothing written: {self.bad} of {self.rows} rows are bad "
                "(fix them, or skip bad rows to import the rest)."
            )
        text = f"Imported {self.imported} of {self.rows} rows as {self.source!r}"
        return text + (f"; skipped {self.skipped} bad rows." if self.skipped else ".")


class RowError(Exception):
    """A row that cannot be imported; the message is the reason shown to the user."""


class FileError(Exception):
    """The file cannot be read to its end, or is over a limit: nothing of it is imported."""


@dataclass(frozen=True)
class _Limits:
    line_bytes: int
    nesting: int
    rows: int | None
    bytes: int | None

    @classmethod
    def of(cls, line_bytes: int | None, nesting: int | None, rows: int | None, bytes: int | None):
        return cls(
            line_bytes=settings.IMPORT_MAX_LINE_BYTES if line_bytes is None else line_bytes,
            nesting=settings.IMPORT_MAX_NESTING if nesting is None else nesting,
            rows=rows,
            bytes=bytes,
        )

    @property
    def too_long(self) -> str:
        return f"line is too long (over the line-length limit of {human_size(self.line_bytes)})"

    @property
    def too_deep(self) -> str:
        return f"JSON nested too deeply: more than {self.nesting} levels"


def human_size(n: int) -> str:
    """``4194304`` -> ``4 MiB``; ``1000`` -> ``1,000 bytes``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size:,} {unit}"
    return f"{n:,} bytes"


# --- public services ----------------------------------------------------------------------------


def import_prompts(
    *,
    project: Project,
    file: FileArg,
    filename: str | None = None,
    source: str | None = None,
    split: str | None = None,
    file_format: Literal["auto", "jsonl", "csv"] = "auto",
    skip_bad: bool = False,
    max_line_bytes: int | None = None,
    max_nesting: int | None = None,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Import prompts into ``project`` from a JSONL or CSV file (a path or a binary file object).

    ``source`` defaults to the file's name; ``split`` is the default for rows that give
    none (``train`` when unset). ``file_format="auto"`` reads ``*.csv`` / ``*.csv.gz`` as
    CSV and anything else as JSONL.
    """
    name = _display_name(file, filename)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if file_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown format {file_format!r}; use one of {', '.join(PROMPT_FORMATS)}")
    source = _clip(source or name or "upload")
    is_csv = file_format == "csv" or (file_format == "auto" and _stem(name).lower().endswith(".csv"))
    result = ImportResult(source=source)
    default_split = split or Prompt.Split.TRAIN
    limits = _Limits.of(max_line_bytes, max_nesting, max_rows, max_bytes)

    def write(rows: list[_PromptRow]) -> int:
        _insert_prompts(project, source, rows)
        return len(rows)

    with _open_binary(file) as stream:
        lines = _lines(stream, limits, progress)
        if is_csv:
            rows = _csv_prompt_rows(lines, default_split, limits)
        else:
            rows = (
                (n, _jsonl_row(raw, lambda obj: _prompt_from_json(obj, default_split), limits))
                for n, raw in lines
            )
        _run(rows, write, result, skip_bad=skip_bad, limits=limits)
    return result


def import_preferences(
    *,
    project: Project,
    file: FileArg,
    filename: str | None = None,
    name: str | None = None,
    format: Literal["auto", "hh-rlhf", "trl"] = "auto",
    skip_bad: bool = False,
    max_line_bytes: int | None = None,
    max_nesting: int | None = None,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Import preference pairs into ``project`` from a JSONL file as judgments of ``imported:<name>``.

    ``name`` defaults to the file's name without its extensions. Every good row makes
    a prompt (split ``train``), two responses (no round, no checkpoint, finish reason
    ``imported``), a comparison with the chosen reply at position 0 and the rejected
    one at 1, and a judgment ranking ``[[chosen_id], [rejected_id]]``.
    """
    if format not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(PREFERENCE_FORMATS)}")
    display = _display_name(file, filename)
    base = (name or _bare_name(display) or "upload").removeprefix(IMPORTED_PREFIX)
    source = _clip(IMPORTED_PREFIX + base)
    result = ImportResult(source=source)
    limits = _Limits.of(max_line_bytes, max_nesting, max_rows, max_bytes)

    def write(rows: list[_PreferenceRow]) -> int:
        prompts = Prompt.objects.bulk_create(
            [Prompt(project=project, conversation=r.conversation, source=source) for r in rows]
        )
        responses = Response.objects.bulk_create(
            [
                Response(prompt=p, text=text, sample_index=i, finish_reason=Response.Finish.IMPORTED)
                for p, r in zip(prompts, rows, strict=True)
                for i, text in enumerate((r.chosen, r.rejected))
            ]
        )
        comparisons = Comparison.objects.bulk_create(
            [Comparison(prompt=p, source=source, judgment_count=1) for p in prompts]
        )
        ComparisonItem.objects.bulk_create(
            [
                ComparisonItem(comparison=c, response=responses[2 * k + position], position=position)
                for k, c in enumerate(comparisons)
                for position in (0, 1)
            ]
        )
        Judgment.objects.bulk_create(
            [
                Judgment(
                    comparison=c,
                    annotator=None,
                    source=source,
                    ranking=[[str(responses[2 * k].pk)], [str(responses[2 * k + 1].pk)]],
                    criteria={} if r.margin is None else {"margin": r.margin},
                )
                for k, (c, r) in enumerate(zip(comparisons, rows, strict=True))
            ]
        )
        return len(rows)

    with _open_binary(file) as stream:
        rows = (
            (n, _jsonl_row(raw, lambda obj: _preference_from_json(obj, format), limits))
            for n, raw in _lines(stream, limits, progress)
        )
        _run(rows, write, result, skip_bad=skip_bad, limits=limits)
    return result


def _insert_prompts(project: Project, source: str, rows: list[_PromptRow]) -> None:
    if connection.vendor != "postgresql":
        Prompt.objects.bulk_create(
            [
                Prompt(
                    project=project, conversation=r.conversation, source=source, split=r.split, tags=r.tags
                )
                for r in rows
            ]
        )
        return
    # One COPY: about five times faster than bulk_create on PostgreSQL, which is what lets a
    # million-row file import within one request.
    meta = Prompt._meta
    fields = [meta.get_field(name) for name in ("project", "conversation", "source", "split", "tags")]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in [*fields, meta.get_field("created_at")])
    project_id, now, dumps = project.pk, timezone.now(), json.dumps
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {connection.ops.quote_name(meta.db_table)} ({columns}) FROM STDIN") as copy:
            for r in rows:
                tags = dumps(r.tags) if r.tags else "[]"
                copy.write_row((project_id, dumps(r.conversation), source, r.split, tags, now))


# --- the transaction ----------------------------------------------------------------------------


def _run(
    rows: Iterator[tuple[int, Any]],
    write: Callable[[list], int],
    result: ImportResult,
    *,
    skip_bad: bool,
    limits: _Limits,
):
    """Validate every row, write good ones in batches, and roll back unless the import stands."""
    with transaction.atomic():
        batch: list = []
        chars = blank = 0
        try:
            for line, row in rows:
                if row is None:  # a blank line
                    blank += 1
                    if limits.rows is not None and blank > limits.rows:
                        raise FileError(
                            f"line {line}: the file has more than {limits.rows:,} blank lines, "
                            "the most one import reads"
                        )
                    continue
                result.rows += 1
                if limits.rows is not None and result.rows > limits.rows:
                    raise FileError(
                        f"line {line}: the file has more than {limits.rows:,} rows, "
                        "the most one import takes (split it into smaller files)"
                    )
                if isinstance(row, RowError):
                    result.report(line, str(row))
                    continue
                if result.bad and not skip_bad:
                    continue  # refused already: keep reading only to report every bad row
                batch.append(row)
                chars += row.size
                if len(batch) >= BATCH_ROWS or chars >= BATCH_CHARS:
                    result.imported += write(batch)
                    batch, chars = [], 0
        except FileError as exc:
            result.file_error = str(exc)
        if result.file_error or (result.bad and not skip_bad):
            transaction.set_rollback(True)
            result.refused = True
            result.imported = 0
            return
        if batch:
            result.imported += write(batch)
        result.skipped = result.bad


# --- reading lines ------------------------------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """A non-seekable stream with the bytes already peeked at put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._head[: len(buffer)] if self._head else self._rest.read(len(buffer))
        self._head = self._head[len(data) :] if self._head else b""
        buffer[: len(data)] = data
        return len(data)


class _Counting(io.RawIOBase):
    """Counts the raw (possibly compressed) bytes read, for the progress bar."""

    def __init__(self, raw: IO[bytes]):
        self._raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


@contextmanager
def _open_binary(file: FileArg):
    opened = None
    if isinstance(file, str | Path):
        raw = opened = open(file, "rb")  # closed below
    else:
        raw = file
        if hasattr(raw, "seek") and getattr(raw, "seekable", lambda: True)():
            raw.seek(0)
    try:
        head = raw.read(2)
        if hasattr(raw, "seek") and getattr(raw, "seekable", lambda: True)():
            raw.seek(0)
        else:
            raw = _Prefixed(head, raw)
        counting = _Counting(raw)
        buffered = io.BufferedReader(counting, buffer_size=1 << 16)
        stream = gzip.GzipFile(fileobj=buffered, mode="rb") if head == b"\x1f\x8b" else buffered
        yield stream, counting
    finally:
        if opened is not None:
            opened.close()


def _lines(opened, limits: _Limits, progress: Progress | None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the line ending) for each line; None for a line over the cap."""
    stream, counting = opened
    max_line_bytes = limits.line_bytes
    line_no = 0
    content = 0  # bytes read after gunzip: what the size cap is about

    def count(data: bytes) -> None:
        nonlocal content
        content += len(data)
        if limits.bytes is not None and content > limits.bytes:
            raise FileError(
                f"line {line_no + 1}: the file holds more than {human_size(limits.bytes)} "
                "(after decompression), the most one import reads"
            )

    while True:
        try:
            line = stream.readline(max_line_bytes + 1)
            count(line)
            too_long = len(line) > max_line_bytes and not line.endswith(b"\n")
            while too_long:  # drop the rest of the line without holding it in memory
                rest = stream.readline(1 << 20)
                count(rest)
                if not rest or rest.endswith(b"\n"):
                    break
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise FileError(
                f"the file cannot be read past line {line_no}: {exc or type(exc).__name__}"
            ) from exc
        if not line:
            break
        line_no += 1
        if progress is not None and line_no % 1000 == 0:
            progress(counting.count)
        if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # a UTF-8 byte-order mark, as spreadsheet programs write
        yield line_no, None if too_long else line
    if progress is not None:
        progress(counting.count)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"invalid UTF-8 at byte {exc.start + 1}") from None


def _json(text: str, limits: _Limits, malformed: str = "malformed JSON: {exc}") -> Any:
    """``json.loads`` with the nesting cap; a RowError (``malformed``, formatted) when it fails."""
    try:
        value = json.loads(text)
    except RecursionError:  # deeper than the interpreter goes: far over any sensible cap
        raise RowError(limits.too_deep) from None
    except ValueError as exc:  # also a number of more than 4300 digits
        raise RowError(malformed.format(exc=exc)) from None
    # Counting brackets is cheap and bounds the depth, so most rows skip the walk.
    if text.count("[") + text.count("{") > limits.nesting and _depth(value, limits.nesting):
        raise RowError(limits.too_deep)
    return value


def _depth(value: Any, cap: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``cap`` deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > cap:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _jsonl_row(raw: bytes | None, parse: Callable[[dict], Any], limits: _Limits):
    """The parsed row, a RowError, or None for a blank line."""
    try:
        if raw is None:
            raise RowError(limits.too_long)
        text = _decode(raw)
        if not text.strip():
            return None
        obj = _json(text, limits)
        if not isinstance(obj, dict):
            raise RowError(f"a row must be a JSON object, not {_kind(obj)}")
        return parse(obj)
    except RowError as exc:
        return exc


# --- values -------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _text(value: Any, what: str, *, strip: bool = False) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, not {_kind(value)}")
    if not value.strip():
        raise RowError(f"{what} is empty")
    if "\x00" in value:
        raise RowError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{what} is not valid Unicode (a lone surrogate escape)") from None
    return value.strip() if strip else value


def _conversation(value: Any, what: str) -> list[dict[str, str]]:
    """A validated prompt conversation: optional system turn first, last turn from the user."""
    if not isinstance(value, list):
        raise RowError(f"{what} must be a list of {{role, content}} messages, not {_kind(value)}")
    if not value:
        raise RowError(f"{what} is empty")
    turns = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RowError(f"{what}[{i}] must be an object with role and content, not {_kind(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise RowError(f"{what}[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        if role == "system" and i != 1:
            raise RowError(f"{what}[{i}]: a system message may only come first")
        turns.append({"role": role, "content": _text(message.get("content"), f"{what}[{i}] content")})
    if turns[-1]["role"] != "user":
        raise RowError(f"{what} must end with a user message (the turn the model answers)")
    return turns


def _split(value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    if value not in SPLITS:
        raise RowError(f"unknown split {value!r}; use one of {', '.join(SPLITS)}")
    return value


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    elif not isinstance(value, list):
        raise RowError(f"tags must be a list of strings or a comma-separated string, not {_kind(value)}")
    tags = []
    for tag in value:
        if not isinstance(tag, str):
            raise RowError(f"tags must be strings, not {_kind(tag)}")
        if tag.strip():
            tags.append(_text(tag, "a tag", strip=True))
    return tags


# --- prompts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PromptRow:
    conversation: list[dict[str, str]]
    split: str
    tags: list[str]

    @property
    def size(self) -> int:
        return sum(len(turn["content"]) for turn in self.conversation)


def _prompt_from_json(obj: dict, default_split: str) -> _PromptRow:
    has_prompt, has_messages = obj.get("prompt") is not None, obj.get("messages") is not None
    if has_prompt and has_messages:
        raise RowError("give either prompt or messages, not both")
    if has_prompt:
        conversation = [{"role": "user", "content": _text(obj["prompt"], "prompt")}]
    elif has_messages:
        conversation = _conversation(obj["messages"], "messages")
    else:
        raise RowError("missing field: prompt or messages")
    return _PromptRow(conversation, _split(obj.get("split"), default_split), _tags(obj.get("tags")))


class _CsvFeed:
    """Decoded lines for ``csv.reader``, remembering which physical lines were bad."""

    def __init__(self, lines: Iterator[tuple[int, bytes | None]], limits: _Limits):
        self._lines, self.line_no, self.bad, self._limits = lines, 0, {}, limits

    def __iter__(self):
        return self

    def __next__(self) -> str:
        self.line_no, raw = next(self._lines)
        if raw is None:
            self.bad[self.line_no] = self._limits.too_long
            return "\n"
        try:
            return _decode(raw)
        except RowError as exc:
            self.bad[self.line_no] = str(exc)
            return raw.decode("utf-8", errors="replace")


def _csv_prompt_rows(lines, default_split: str, limits: _Limits) -> Iterator[tuple[int, Any]]:
    feed = _CsvFeed(lines, limits)
    # strict: a quote that never closes is an error, not a field that swallows the rest of the file.
    reader = csv.reader(feed, strict=True)
    # A field may be as long as a line may, not the csv module's 128 KiB (a process-wide setting
    # that nothing else here reads).
    csv.field_size_limit(limits.line_bytes)
    header: list[str] | None = None
    while True:
        start = feed.line_no + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            feed.bad.clear()
            if "unexpected end of data" in str(exc):
                exc = "a quoted field opens here and never closes"
            elif "field larger than field limit" in str(exc):
                exc = f"a field is longer than {human_size(limits.line_bytes)}, the line-length limit"
            elif "new-line character seen in unquoted field" in str(exc):
                exc = "a bare carriage return (\\r) ends a line; save the file with \\n or \\r\\n line ends"
            yield start, RowError(f"malformed CSV: {exc}")
            continue
        problems = [f"line {n}: {why}" if n != start else why for n, why in feed.bad.items()]
        feed.bad.clear()
        if header is None:
            if problems:
                raise FileError(f"the CSV header on line {start} is unreadable: {problems[0]}")
            if not record:
                continue
            header = [name.strip().lower() for name in record]
            if "prompt" not in header and "messages" not in header:
                raise FileError(f"the CSV header on line {start} needs a prompt or messages column")
            continue
        if problems:
            yield start, RowError("; ".join(problems))
            continue
        if not any(cell.strip() for cell in record):
            yield start, None
            continue
        try:
            yield (
                start,
                _prompt_from_csv(
                    dict(zip(header, record, strict=False)), record, header, default_split, limits
                ),
            )
        except RowError as exc:
            yield start, exc


def _prompt_from_csv(
    cells: dict[str, str], record: list[str], header: list[str], default_split: str, limits: _Limits
) -> _PromptRow:
    if len(record) > len(header) and any(cell.strip() for cell in record[len(header) :]):
        raise RowError(f"the row has {len(record)} fields but the header names {len(header)}")
    obj: dict[str, Any] = {"prompt": cells.get("prompt") or None, "split": cells.get("split")}
    if cells.get("messages"):
        obj["messages"] = _json(cells["messages"], limits, "messages must be a JSON list: {exc}")
    tags = (cells.get("tags") or "").strip()
    if tags.startswith("["):
        obj["tags"] = _json(tags, limits, "tags look like a JSON list but are not valid JSON")
    else:
        obj["tags"] = tags
    return _prompt_from_json(obj, default_split)


# --- preferences --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreferenceRow:
    conversation: list[dict[str, str]]
    chosen: str
    rejected: str
    margin: float | None

    @property
    def size(self) -> int:
        return sum(len(turn["content"]) for turn in self.conversation) + len(self.chosen) + len(self.rejected)


_HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(value: Any, what: str) -> list[dict[str, str]]:
    text = _text(value, what)
    parts = _HH_TURN.split(text)
    if len(parts) == 1:
        raise RowError(f"{what} is not an HH-RLHF dialogue (no 'Human:' or 'Assistant:' turns)")
    if parts[0].strip():
        raise RowError(f"{what} has text before its first 'Human:' turn")
    turns = [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]
    if not any(turn["role"] == "assistant" for turn in turns):
        raise RowError(f"{what} has no 'Assistant:' turn")
    return turns


def _split_shared(chosen: list[dict], rejected: list[dict], *, hh: bool) -> tuple[list[dict], str, str]:
    """The shared conversation and the two final assistant replies."""
    assistant = "'Assistant:' turn" if hh else "assistant message"
    for what, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise RowError(f"{what} does not end with an {assistant}")
    if chosen[:-1] != rejected[:-1]:
        before, other = chosen[:-1], rejected[:-1]
        turn = next(
            (i for i, (a, b) in enumerate(zip(before, other)) if a != b), min(len(before), len(other))
        )
        raise RowError(
            "chosen and rejected do not share the conversation before their last reply "
            f"(they part at turn {turn + 1}; chosen has {len(chosen)} turns, rejected {len(rejected)})"
        )
    shared = _conversation(chosen[:-1], "the shared conversation") if len(chosen) > 1 else []
    if not shared:
        raise RowError("there is no conversation before the last reply")
    return (
        shared,
        _text(chosen[-1]["content"], "chosen reply"),
        _text(rejected[-1]["content"], "rejected reply"),
    )


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    """A whole conversation (TRL's implicit-prompt form), checked message by message."""
    if not isinstance(value, list) or not value:
        raise RowError(f"{what} must be a non-empty list of messages")
    turns = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RowError(f"{what}[{i}] must be an object with a role of {', '.join(ROLES)}")
        turns.append(
            {"role": message["role"], "content": _text(message.get("content"), f"{what}[{i}] content")}
        )
    return turns


def _reply(value: Any, what: str, *, conversational: bool) -> str:
    if not conversational:
        return _text(value, what)
    if not isinstance(value, list):
        raise RowError(f"{what} must be a list holding one assistant message, not {_kind(value)}")
    if len(value) != 1:
        raise RowError(f"{what} must hold exactly one assistant message, not {len(value)}")
    message = value[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        raise RowError(f"{what} must hold an assistant message")
    return _text(message.get("content"), f"{what} content")


def _margin(obj: dict) -> float | None:
    value = obj.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        shown = repr(value) if isinstance(value, str) and len(value) <= 40 else _kind(value)
        raise RowError(f"margin must be a finite number, not {shown}")
    try:
        margin = float(value)
    except OverflowError:  # an integer of 400 digits
        raise RowError("margin must be a finite number, not one that large") from None
    if not math.isfinite(margin):
        raise RowError(f"margin must be a finite number, not {value!r}")
    return margin


def _preference_from_json(obj: dict, fmt: str) -> _PreferenceRow:
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise RowError(f"missing field: {key}")
    chosen, rejected = obj["chosen"], obj["rejected"]
    if fmt == "auto":
        fmt = "trl" if "prompt" in obj or isinstance(chosen, list) else "hh-rlhf"
    if fmt == "hh-rlhf":
        shared, best, worst = _split_shared(
            _hh_turns(chosen, "chosen"), _hh_turns(rejected, "rejected"), hh=True
        )
    elif "prompt" not in obj:
        if not isinstance(chosen, list):
            raise RowError("missing field: prompt")
        shared, best, worst = _split_shared(
            _messages(chosen, "chosen"), _messages(rejected, "rejected"), hh=False
        )
    else:
        prompt = obj["prompt"]
        conversational = isinstance(prompt, list)
        if conversational:
            shared = _conversation(prompt, "prompt")
        else:
            shared = [{"role": "user", "content": _text(prompt, "prompt")}]
        best = _reply(chosen, "chosen", conversational=conversational)
        worst = _reply(rejected, "rejected", conversational=conversational)
    if best == worst:
        raise RowError("chosen and rejected are identical")
    return _PreferenceRow(shared, best, worst, _margin(obj))


# --- names --------------------------------------------------------------------------------------


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _display_name(file: FileArg, filename: str | None) -> str:
    """The file's name, without control characters or lone surrogates (it becomes the source,
    and PostgreSQL stores no NUL)."""
    if filename:
        name = Path(filename).name
    elif isinstance(file, str | Path):
        name = Path(file).name
    else:
        name = Path(str(getattr(file, "name", "") or "")).name
    return _UNPRINTABLE.sub("", name)


def _stem(name: str) -> str:
    """The name without a trailing .gz."""
    return name[:-3] if name.lower().endswith(".gz") else name


def _bare_name(name: str) -> str:
    """``harmless-base-test.jsonl.gz`` -> ``harmless-base-test``."""
    stem = _stem(name)
    for ext in (".jsonl", ".json", ".csv", ".txt"):
        if stem.lower().endswith(ext):
            return stem[: -len(ext)]
    return stem


def _clip(source: str) -> str:
    return source[:SOURCE_MAX_LENGTH]

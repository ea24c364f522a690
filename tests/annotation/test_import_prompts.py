"""annotation.importers.import_prompts and manage.py import_prompts."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotation import importers
from annotation.importers import import_prompts
from annotation.models import Prompt


def write_lines(path, lines) -> str:
    """Write rows (dicts become JSON, str and bytes go in as they are) one a line."""
    data = b"".join(
        (json.dumps(line) if isinstance(line, dict) else line).encode() + b"\n"
        if not isinstance(line, bytes)
        else line + b"\n"
        for line in lines
    )
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return str(path)


GOOD = {"prompt": "Write a haiku about tea."}


@pytest.mark.django_db
def test_it_imports_plain_prompts_and_conversations(project, tmp_path):
    file = write_lines(
        tmp_path / "seed.jsonl",
        [
            {"prompt": "Write a haiku about tea.", "tags": ["poetry", "short"]},
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Name a prime."},
                ],
                "split": "eval",
                "tags": "math, easy",
            },
        ],
    )

    result = import_prompts(project=project, file=file)

    assert (result.imported, result.errors, result.skipped, result.refused) == (2, [], 0, False)
    first, second = Prompt.objects.filter(project=project)
    assert first.conversation == [{"role": "user", "content": "Write a haiku about tea."}]
    assert (first.source, first.split, first.tags) == ("seed.jsonl", "train", ["poetry", "short"])
    assert second.conversation[0] == {"role": "system", "content": "You are terse."}
    assert second.conversation[-1] == {"role": "user", "content": "Name a prime."}
    assert (second.split, second.tags) == ("eval", ["math", "easy"])


@pytest.mark.django_db
def test_it_takes_source_and_default_split_but_a_row_split_wins(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, {"prompt": "Second", "split": "train"}])

    import_prompts(project=project, file=file, source="seed-v2", split="eval")

    assert list(Prompt.objects.values_list("source", "split")) == [("seed-v2", "eval"), ("seed-v2", "train")]


@pytest.mark.django_db
def test_it_ignores_blank_lines_and_counts_physical_lines(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, "", "   ", "{oops", GOOD])

    result = import_prompts(project=project, file=file)

    assert result.errors == [(4, result.errors[0][1])] and result.rows == 3


@pytest.mark.django_db
def test_it_reads_gzip_whatever_the_name(project, tmp_path):
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "one"}\n{"prompt": "two"}'))
    (tmp_path / "misnamed.jsonl").write_bytes(gzip.compress(b'{"prompt": "three"}\n'))

    assert import_prompts(project=project, file=tmp_path / "p.jsonl.gz").imported == 2
    assert import_prompts(project=project, file=tmp_path / "misnamed.jsonl").imported == 1
    assert [p.conversation[0]["content"] for p in Prompt.objects.all()] == ["one", "two", "three"]


@pytest.mark.django_db
def test_it_reads_a_file_object_with_a_byte_order_mark(project):
    upload = io.BytesIO(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\n')

    result = import_prompts(project=project, file=upload, filename="menu.jsonl")

    assert result.imported == 1
    assert Prompt.objects.get().conversation == [{"role": "user", "content": "café"}]
    assert Prompt.objects.get().source == "menu.jsonl"


class OneWayStream(io.RawIOBase):
    """A pipe-like upload: no seek, and short reads."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(len(buffer), 3))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.django_db
@pytest.mark.parametrize("gzipped", [False, True])
def test_it_reads_a_stream_that_cannot_seek(project, gzipped):
    data = b'{"prompt": "one"}\n{"prompt": "two"}\n'

    result = import_prompts(project=project, file=OneWayStream(gzip.compress(data) if gzipped else data))

    assert (result.imported, result.source) == (2, "upload")


@pytest.mark.django_db
def test_it_reports_progress_in_bytes_read(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [{"prompt": f"row {i} " + "x" * 200} for i in range(2500)])
    seen = []

    import_prompts(project=project, file=file, progress=seen.append)

    assert seen == sorted(seen) and len(set(seen)) >= 3
    assert seen[-1] == (tmp_path / "p.jsonl").stat().st_size


@pytest.mark.django_db
def test_it_reads_csv_with_comma_separated_tags_and_json_messages(project, tmp_path):
    csv_text = (
        "prompt,split,tags,messages\n"
        '"Tell me a joke, please",eval,"humour, short",\n'
        '"A prompt\nover two lines",,,\n'
        ',,,"[{""role"": ""user"", ""content"": ""From messages""}]"\n'
    )
    (tmp_path / "p.csv.gz").write_bytes(gzip.compress(csv_text.encode()))

    result = import_prompts(project=project, file=tmp_path / "p.csv.gz")

    assert (result.imported, result.errors) == (3, [])
    rows = list(Prompt.objects.values_list("conversation", "split", "tags"))
    assert rows == [
        ([{"role": "user", "content": "Tell me a joke, please"}], "eval", ["humour", "short"]),
        ([{"role": "user", "content": "A prompt\nover two lines"}], "train", []),
        ([{"role": "user", "content": "From messages"}], "train", []),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content, line, reason",
    [
        (b"prompt,split\nHello,test\nBye,\n", 2, "unknown split 'test'; use one of train, eval"),
        (b"prompt\nHello\n\xff\xfe\n", 3, "invalid UTF-8 at byte 1"),
        (b'prompt\nHello\n"Hi",surplus\n', 3, "the row has 2 fields but the header names 1"),
        (b'messages\n"[]"\n"[{""role"": ""user"", ""content"": ""ok""}]"\n', 2, "messages is empty"),
        (b'prompt,tags\nHello,"[1, 2"\n', 2, "tags look like a JSON list but are not valid JSON"),
        (b'prompt\nHello\n"A field\nwith \xff inside"\n', 3, "line 4: invalid UTF-8 at byte 6"),
    ],
)
def test_it_reports_bad_csv_rows_at_their_line(project, tmp_path, content, line, reason):
    (tmp_path / "p.csv").write_bytes(content)

    result = import_prompts(project=project, file=tmp_path / "p.csv")

    assert result.refused and not Prompt.objects.exists()
    assert result.errors == [(line, reason)]


@pytest.mark.django_db
def test_it_refuses_a_csv_without_a_prompt_column(project, tmp_path):
    (tmp_path / "p.csv").write_text("text,split\nHello,train\n")

    result = import_prompts(project=project, file=tmp_path / "p.csv", skip_bad=True)

    assert result.refused and "needs a prompt or messages column" in result.file_error
    assert not Prompt.objects.exists()


BAD_ROWS = [
    (b"{not json", "malformed JSON"),
    (b'["a list"]', "a row must be a JSON object, not a list"),
    (b'{"tags": ["x"]}', "missing field: prompt or messages"),
    (b'{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "either prompt or messages"),
    (b'{"prompt": 42}', "prompt must be a string, not a number"),
    (b'{"prompt": "   "}', "prompt is empty"),
    (b'{"messages": "hello"}', "messages must be a list"),
    (b'{"messages": []}', "messages is empty"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}', "has role 'robot'"),
    (
        b'{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}',
        "system message",
    ),
    (
        b'{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        "must end with a user",
    ),
    (b'{"messages": [{"role": "user"}]}', "messages[1] content must be a string, not null"),
    (b'{"prompt": "x", "split": "test"}', "unknown split 'test'"),
    (b'{"prompt": "x", "tags": 3}', "tags must be a list"),
    (b'{"prompt": "x", "tags": [1]}', "tags must be strings"),
    (b'{"prompt": "caf\xe9"}', "invalid UTF-8 at byte 16"),
    (b'{"prompt": "nul \\u0000 byte"}', "NUL character"),
    (b'{"prompt": "lone \\ud800 half"}', "lone surrogate"),
    (b"[" * 100_000, "nested too deeply"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("line, reason", BAD_ROWS, ids=[reason for _, reason in BAD_ROWS])
def test_it_reports_each_kind_of_bad_row_with_its_line_and_writes_nothing(project, tmp_path, line, reason):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, GOOD, line, GOOD])

    result = import_prompts(project=project, file=file)

    assert result.refused and result.imported == 0
    assert len(result.errors) == 1 and result.errors[0][0] == 3
    assert reason in result.errors[0][1]
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_it_reports_a_line_over_the_limit_and_reads_on(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, {"prompt": "x" * 5000}, GOOD])

    result = import_prompts(project=project, file=file, max_line_bytes=1000, skip_bad=True)

    assert result.errors == [(2, "line is too long (over the line-length limit of 1,000 bytes)")]
    assert (result.imported, result.skipped) == (2, 1)


@pytest.mark.django_db
def test_it_skips_bad_rows_when_asked_and_reports_them_all(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, b"{", {"prompt": ""}, {"prompt": "kept"}])

    result = import_prompts(project=project, file=file, skip_bad=True)

    assert (result.imported, result.skipped, result.refused) == (2, 2, False)
    assert [line for line, _ in result.errors] == [2, 3]
    assert Prompt.objects.count() == 2


@pytest.mark.django_db
def test_it_refuses_a_truncated_gzip_even_when_skipping_bad_rows(project, tmp_path):
    data = gzip.compress(b"".join(b'{"prompt": "row %d"}\n' % i for i in range(2000)))
    (tmp_path / "p.jsonl.gz").write_bytes(data[: len(data) // 2])

    result = import_prompts(project=project, file=tmp_path / "p.jsonl.gz", skip_bad=True)

    assert result.refused and "cannot be read past line" in result.file_error
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_an_unexpected_failure_half_way_leaves_nothing_behind(project, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BATCH_ROWS", 2)
    real = importers._insert_prompts
    calls = []

    def flaky(project, source, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(project, source, rows)

    monkeypatch.setattr(importers, "_insert_prompts", flaky)
    file = write_lines(tmp_path / "p.jsonl", [GOOD] * 5)

    with pytest.raises(RuntimeError, match="disk on fire"):
        import_prompts(project=project, file=file)

    assert calls == [2, 2] and not Prompt.objects.exists()


# --- manage.py import_prompts --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_imports_and_prints_a_summary(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, GOOD])
    out = io.StringIO()

    call_command("import_prompts", file, project=project.name, source="cli", split="eval", stdout=out)

    assert "Imported 2 of 2 rows as 'cli'" in out.getvalue()
    assert set(Prompt.objects.values_list("source", "split")) == {("cli", "eval")}


@pytest.mark.django_db
def test_the_command_fails_and_lists_bad_rows_without_skip_bad(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD, b"{", {"prompt": "x", "split": "dev"}])
    out = io.StringIO()

    with pytest.raises(CommandError, match="nothing written: 2 of 3 rows are bad"):
        call_command("import_prompts", file, project=project.name, stdout=out)

    assert "line 2: malformed JSON" in out.getvalue()
    assert "line 3: unknown split 'dev'" in out.getvalue()
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_the_command_skips_bad_rows_when_asked(project, tmp_path):
    file = write_lines(tmp_path / "p.csv", ["prompt", "One", '""', "Two"])
    out = io.StringIO()

    call_command("import_prompts", file, "--skip-bad", project=project.name, stdout=out)

    assert "line 3: prompt is empty" not in out.getvalue()  # a row of empty cells is a blank line
    assert "Imported 2 of 2 rows" in out.getvalue()


@pytest.mark.django_db
def test_the_command_names_a_missing_project_or_file(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(CommandError, match="No project named 'Nope'"):
        call_command("import_prompts", file, project="Nope")
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_prompts", str(tmp_path / "missing.jsonl"), project=project.name)


# --- any bytes at all ----------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b'{"prompt": "hi"}',
        b'{"prompt": ""}',
        b'{"messages": [{"role": "user", "content": "x"}]}',
        b'{"prompt": "x", "split": "eval", "tags": "a,b"}',
        b"prompt,split,tags",
        b'"quoted, field",train,"t"',
        b"\n",
        b"\r\n",
        b'"',
        b"\x00",
        b"\xff",
        b"\x1f\x8b",
        b"[[[[",
        b'{"prompt": "\\ud800"}',
    ]
)
CONTENTS = st.one_of(
    st.binary(max_size=600), st.lists(st.one_of(FRAGMENTS, st.binary(max_size=20)), max_size=25).map(b"".join)
)


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=CONTENTS, skip_bad=st.booleans(), as_csv=st.booleans(), gzipped=st.booleans())
def test_any_bytes_give_a_report_never_an_exception_or_partial_rows(
    project, content, skip_bad, as_csv, gzipped
):
    before = Prompt.objects.count()
    data = gzip.compress(content) if gzipped else content

    result = import_prompts(
        project=project,
        file=io.BytesIO(data),
        filename="fuzz.csv" if as_csv else "fuzz.jsonl",
        skip_bad=skip_bad,
        max_line_bytes=300,
    )

    written = Prompt.objects.count() - before
    assert written == result.imported
    if result.refused:
        assert written == 0 and (result.bad or result.file_error)
    else:
        assert result.imported + result.bad == result.rows
    assert all(isinstance(line, int) and line >= 1 and reason for line, reason in result.errors)

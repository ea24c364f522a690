"""annotation.importers.import_preferences and manage.py import_preferences."""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotation import importers
from annotation.importers import import_preferences
from annotation.models import Comparison, ComparisonItem, Judgment, Prompt, Response
from tests.services import needs

SHARED = Path(os.environ.get("TANDEM_SHARED_DIR") or Path(__file__).resolve().parents[2].parent / "shared")
HH_FILE = SHARED / "datasets" / "hh-rlhf-harmless-base-test.jsonl.gz"
# Lines of that file that cannot be imported as they stand, and why (checked by hand).
HH_BAD_LINES = {
    87: "chosen reply is empty",
    517: "chosen reply is empty",
    926: "chosen reply is empty",
    1104: "chosen reply is empty",
    # the chosen dialogue has an extra turn (two assistant turns in a row, or one human more)
    1255: "do not share the conversation",
    1689: "do not share the conversation",
    1951: "do not share the conversation",
    1953: "do not share the conversation",
    2037: "do not share the conversation",
}

MODELS = (Prompt, Response, Comparison, ComparisonItem, Judgment)


def counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in MODELS)


def write_lines(path: Path, rows) -> Path:
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


HH = {
    "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour.\n\nAssistant: Blue.",
    "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a colour.\n\nAssistant: No.",
}
TRL = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}


def the_pair(comparison: Comparison) -> tuple[str, str]:
    items = list(comparison.items.select_related("response"))
    assert [item.position for item in items] == [0, 1]
    return items[0].response.text, items[1].response.text


@pytest.mark.django_db
def test_it_imports_an_hh_rlhf_row_as_a_judged_comparison(project, tmp_path):
    result = import_preferences(project=project, file=write_lines(tmp_path / "hh-sample.jsonl", [HH]))

    assert (result.imported, result.errors, result.source) == (1, [], "imported:hh-sample")
    prompt = Prompt.objects.get()
    assert (prompt.project, prompt.source, prompt.split) == (project, "imported:hh-sample", "train")
    assert prompt.conversation == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour."},
    ]
    comparison = Comparison.objects.get()
    assert (comparison.prompt, comparison.round, comparison.source) == (prompt, None, "imported:hh-sample")
    assert comparison.judgment_count == 1
    assert the_pair(comparison) == ("Blue.", "No.")
    chosen, rejected = Response.objects.order_by("sample_index")
    assert {(r.round, r.checkpoint, r.finish_reason) for r in (chosen, rejected)} == {
        (None, None, "imported")
    }
    judgment = Judgment.objects.get()
    assert (judgment.comparison, judgment.annotator, judgment.source) == (
        comparison,
        None,
        "imported:hh-sample",
    )
    assert judgment.ranking == [[str(chosen.pk)], [str(rejected.pk)]]
    assert (judgment.strength, judgment.is_tie, judgment.both_bad, judgment.criteria) == (
        None,
        False,
        False,
        {},
    )


@pytest.mark.django_db
def test_it_imports_trl_plain_conversational_and_implicit_rows(project, tmp_path):
    rows = [
        {**TRL, "margin": 1.5},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        {
            "chosen": [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris"},
            ],
            "rejected": [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Lyon"},
            ],
        },
    ]

    result = import_preferences(
        project=project, file=write_lines(tmp_path / "t.jsonl", rows), name="ultra", format="trl"
    )

    assert (result.imported, result.errors) == (3, [])
    conversations = [c.prompt.conversation for c in Comparison.objects.select_related("prompt")]
    assert conversations == [
        [{"role": "user", "content": "Name a colour."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "Capital of France?"}],
    ]
    assert [the_pair(c) for c in Comparison.objects.all()] == [
        ("Blue.", "No."),
        ("4", "5"),
        ("Paris", "Lyon"),
    ]
    assert [j.criteria for j in Judgment.objects.all()] == [{"margin": 1.5}, {}, {}]
    assert set(Judgment.objects.values_list("source", flat=True)) == {"imported:ultra"}


@pytest.mark.django_db
def test_auto_format_reads_a_mixed_file_row_by_row(project, tmp_path):
    result = import_preferences(project=project, file=write_lines(tmp_path / "mixed.jsonl.gz", [HH, TRL]))

    assert (result.imported, result.errors) == (2, [])


BAD_ROWS = [
    ("auto", b'{"chosen": "x"}', "missing field: rejected"),
    ("auto", b'{"chosen": 1, "rejected": "x"}', "chosen must be a string, not a number"),
    (
        "auto",
        b'{"chosen": "\\n\\nHuman: hi", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: yo"}',
        "chosen has no 'Assistant:' turn",
    ),
    (
        "auto",
        b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo", "rejected": "\\n\\nHuman: hey\\n\\nAssistant: yo!"}',
        "chosen and rejected do not share the conversation before their last reply (they part at turn 1",
    ),
    (
        "auto",
        json.dumps({"chosen": HH["chosen"], "rejected": HH["chosen"]}).encode(),
        "chosen and rejected are identical",
    ),
    (
        "auto",
        json.dumps({"chosen": HH["chosen"] + "\n\nHuman: And?", "rejected": HH["rejected"]}).encode(),
        "chosen does not end with an 'Assistant:' turn",
    ),
    (
        "auto",
        json.dumps({"chosen": HH["chosen"].replace("Blue.", " "), "rejected": HH["rejected"]}).encode(),
        "chosen reply is empty",
    ),
    (
        "auto",
        json.dumps({"chosen": "Preamble" + HH["chosen"], "rejected": HH["rejected"]}).encode(),
        "text before its first 'Human:'",
    ),
    (
        "auto",
        b'{"chosen": "\\n\\nAssistant: a", "rejected": "\\n\\nAssistant: b"}',
        "no conversation before the last reply",
    ),
    ("auto", json.dumps({**TRL, "chosen": "No."}).encode(), "chosen and rejected are identical"),
    ("auto", json.dumps({**TRL, "margin": "big"}).encode(), "margin must be a finite number, not 'big'"),
    ("auto", json.dumps({**TRL, "margin": float("nan")}).encode(), "margin must be a finite number, not nan"),
    ("auto", json.dumps({**TRL, "prompt": ""}).encode(), "prompt is empty"),
    (
        "auto",
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": "a",
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ).encode(),
        "chosen must be a list holding one assistant message, not a string",
    ),
    (
        "auto",
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}],
            }
        ).encode(),
        "chosen must hold exactly one assistant message, not 2",
    ),
    (
        "auto",
        json.dumps(
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ).encode(),
        "chosen must hold an assistant message",
    ),
    ("trl", json.dumps(HH).encode(), "missing field: prompt"),
    ("hh-rlhf", json.dumps(TRL).encode(), "chosen is not an HH-RLHF dialogue"),
    ("auto", b'{"chosen": "a", "rejected": "b"', "malformed JSON"),
    ("auto", b'"just a string"', "a row must be a JSON object, not a string"),
    ("auto", b'{"prompt": "caf\xc3", "chosen": "a", "rejected": "b"}', "invalid UTF-8 at byte 16"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("fmt, line, reason", BAD_ROWS, ids=[r for _, _, r in BAD_ROWS])
def test_it_reports_each_kind_of_bad_row_with_its_line_and_writes_nothing(
    project, tmp_path, fmt, line, reason
):
    good = HH if fmt == "hh-rlhf" else TRL
    file = write_lines(tmp_path / "p.jsonl", [good, line, good])

    result = import_preferences(project=project, file=file, format=fmt)

    assert result.refused and result.imported == 0
    assert len(result.errors) == 1 and result.errors[0][0] == 2
    assert reason in result.errors[0][1]
    assert counts() == (0, 0, 0, 0, 0)


@pytest.mark.django_db
def test_skip_bad_imports_the_good_rows_and_reports_the_rest(project, tmp_path):
    file = write_lines(tmp_path / "p.jsonl", [HH, b"nope", {**TRL, "chosen": "No."}, TRL])

    result = import_preferences(project=project, file=file, skip_bad=True)

    assert (result.imported, result.skipped, result.refused) == (2, 2, False)
    assert [line for line, _ in result.errors] == [2, 3]
    assert counts() == (2, 4, 2, 4, 2)


@pytest.mark.django_db
def test_rows_are_written_in_batches(project, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BATCH_ROWS", 3)
    rows = [{**TRL, "chosen": f"Blue {i}."} for i in range(8)]

    result = import_preferences(project=project, file=write_lines(tmp_path / "p.jsonl", rows))

    assert result.imported == 8 and counts() == (8, 16, 8, 16, 8)
    assert [the_pair(c)[0] for c in Comparison.objects.all()] == [f"Blue {i}." for i in range(8)]
    for judgment in Judgment.objects.select_related("comparison"):
        assert judgment.ranking == [[str(i.response_id)] for i in judgment.comparison.items.all()]


@pytest.mark.django_db
def test_an_unexpected_failure_half_way_leaves_nothing_behind(project, tmp_path, monkeypatch):
    monkeypatch.setattr(importers, "BATCH_ROWS", 2)
    real, calls = Judgment.objects.bulk_create, []

    def flaky(objs, *args, **kwargs):
        calls.append(len(objs))
        if len(calls) == 2:
            raise RuntimeError("connection lost")
        return real(objs, *args, **kwargs)

    monkeypatch.setattr(Judgment.objects, "bulk_create", flaky)

    with pytest.raises(RuntimeError):
        import_preferences(project=project, file=write_lines(tmp_path / "p.jsonl", [TRL] * 5))

    assert calls == [2, 2] and counts() == (0, 0, 0, 0, 0)


# --- the real HH-RLHF file -----------------------------------------------------------------------

needs_hh = needs(HH_FILE.exists(), f"{HH_FILE} is not here (set TANDEM_SHARED_DIR)")


@needs_hh
@pytest.mark.django_db
def test_every_line_of_the_hh_rlhf_file_is_imported_or_reported(project):
    result = import_preferences(project=project, file=HH_FILE, skip_bad=True)

    assert result.rows == 2312
    assert result.imported + len(result.errors) == 2312
    assert {line: reason for line, reason in result.errors}.keys() == HH_BAD_LINES.keys()
    for line, reason in result.errors:
        assert HH_BAD_LINES[line] in reason
    assert counts() == (2303, 4606, 2303, 4606, 2303)
    assert (
        Comparison.objects.filter(judgment_count=1, source="imported:hh-rlhf-harmless-base-test").count()
        == 2303
    )

    first = Comparison.objects.select_related("prompt").order_by("id").first()
    assert first.prompt.conversation == [
        {"role": "user", "content": "what are some pranks with a pen i can do?"},
        {"role": "assistant", "content": "Are you looking for practical joke ideas?"},
        {"role": "user", "content": "yep"},
        {
            "role": "assistant",
            "content": "Ok, I’ll give you a couple examples, and then you can choose if you like any of them. "
            "You can’t actually do all of these, they’re mostly for fun.\n\n"
            "1. Draw a penis on a friend’s arm, the idea is that you can draw a really huge penis.\n\n"
            "2. Make a list of jokes on someone, and then you can make someone else read it to the person in "
            "front of the person, you’ll probably have to hide the list of jokes.\n\n"
            "3. Tell someone you’ll watch them masturbate but hide your eyes, and then while they are "
            "masturbating you will find a new place to watch.",
        },
        {"role": "user", "content": "okay some of these do not have anything to do with pens"},
    ]
    assert the_pair(first) == (
        "No, sorry!  All of these involve a pen, the point is that you can get funny results by doing pranks with pens.",
        "There are lots of funny things you can do with pens, here’s one example: use the pen as a zipper.  "
        "It’s where you write your finger in ink, and then you stick it on someone’s hand and unzip their zipper. "
        "It’s really funny.",
    )


@needs_hh
@pytest.mark.django_db
def test_the_hh_rlhf_file_is_refused_whole_without_skip_bad(project):
    result = import_preferences(project=project, file=HH_FILE, format="hh-rlhf")

    assert result.refused and result.bad == len(HH_BAD_LINES) and counts() == (0, 0, 0, 0, 0)


# --- manage.py import_preferences ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_imports_and_prints_a_summary(project, tmp_path):
    out = io.StringIO()

    call_command(
        "import_preferences",
        str(write_lines(tmp_path / "p.jsonl.gz", [HH, TRL])),
        project=project.name,
        name="mine",
        stdout=out,
    )

    assert "Imported 2 of 2 rows as 'imported:mine'" in out.getvalue()
    assert Judgment.objects.filter(source="imported:mine", annotator=None).count() == 2


@pytest.mark.django_db
def test_the_command_refuses_with_bad_rows_and_skips_them_when_asked(project, tmp_path):
    file = str(write_lines(tmp_path / "p.jsonl", [HH, {**TRL, "rejected": "Blue."}]))
    out = io.StringIO()

    with pytest.raises(CommandError, match="nothing written"):
        call_command("import_preferences", file, project=project.name, format="auto", stdout=out)
    assert "line 2: chosen and rejected are identical" in out.getvalue()
    assert counts() == (0, 0, 0, 0, 0)

    call_command("import_preferences", file, "--skip-bad", project=project.name, stdout=out)
    assert "Imported 1 of 2 rows as 'imported:p'; skipped 1 bad rows." in out.getvalue()
    assert counts() == (1, 2, 1, 2, 1)


# --- any bytes at all ----------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        json.dumps(HH).encode(),
        json.dumps(TRL).encode(),
        json.dumps({**TRL, "margin": 2}).encode(),
        b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}',
        b'{"chosen": [{"role": "assistant", "content": "x"}], "rejected": []}',
        b'{"prompt": [], "chosen": [], "rejected": {}}',
        b"\n\nHuman:",
        b"\n\nAssistant:",
        b"\n",
        b'"',
        b"\\u0000",
        b"\xc3",
        b"\x1f\x8b",
        b"{",
        b"}",
    ]
)
CONTENTS = st.one_of(
    st.binary(max_size=600), st.lists(st.one_of(FRAGMENTS, st.binary(max_size=20)), max_size=20).map(b"".join)
)


@pytest.mark.django_db
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=CONTENTS,
    skip_bad=st.booleans(),
    fmt=st.sampled_from(importers.PREFERENCE_FORMATS),
    gz=st.booleans(),
)
def test_any_bytes_give_a_report_never_an_exception_or_partial_rows(project, content, skip_bad, fmt, gz):
    before = counts()

    result = import_preferences(
        project=project,
        file=io.BytesIO(gzip.compress(content) if gz else content),
        filename="fuzz.jsonl",
        format=fmt,
        skip_bad=skip_bad,
        max_line_bytes=400,
    )

    n = result.imported
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [n, 2 * n, n, 2 * n, n]
    if result.refused:
        assert n == 0 and (result.bad or result.file_error)
    else:
        assert result.imported + result.bad == result.rows

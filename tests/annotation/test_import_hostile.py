"""Hostile uploads through the admin's import pages, over HTTP as a browser sends them.

Whatever the file (arbitrary bytes, truncated JSON, wrong types, deep nesting, huge lines,
invalid UTF-8, truncated gzip, a gzip bomb, odd CSV quoting, a million rows) and whatever
the request (too big for Django, too many files or fields, a broken multipart body), the
answer is a page that names the problem, never a 500, and a refused file leaves every table
exactly as it was.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import gzip
import html
import io
import json
import os
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import include, path, reverse
from hypothesis import HealthCheck, assume, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from annotation.models import Comparison, ComparisonItem, Judgment, Prompt, Response
from tests.api.conftest import no_queue, token_client  # noqa: F401  (no_queue: a fixture)
from training.models import Export, TrainingRun

# The admin and the API only: these pages must not depend on the rest of the site's URLs.
urlpatterns = [path("admin/", admin.site.urls), path("api/", include("training.api"))]
pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db]

MODELS = (Prompt, Response, Comparison, ComparisonItem, Judgment)
FUZZ = hypothesis_settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LINE_CAP = 4096  # the fuzzed files run under a small line cap, so an over-long line is cheap


def counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in MODELS)


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client(enforce_csrf_checks=True)  # a 500 would raise here, failing the test loudly
    client.force_login(admin_user)
    return client


def prompts_url(project) -> str:
    return reverse("admin:annotation_project_import_prompts", args=[project.pk])


def preferences_url(project) -> str:
    return reverse("admin:annotation_project_import_preferences", args=[project.pk])


def project_url(project) -> str:
    return reverse("admin:annotation_project_change", args=[project.pk])


def upload(client: Client, url: str, name: str, data: bytes, **fields):
    """POST the file with the CSRF token the form page hands out, as a browser does."""
    if "csrftoken" not in client.cookies:
        assert client.get(url).status_code == 200
    client.cookies.pop("messages", None)  # a redirect's message the test did not follow
    form = {"file_format": "auto", "data_format": "auto", **fields}
    if form.pop("skip_bad", False):
        form["skip_bad"] = "on"
    response = client.post(
        url,
        {
            **form,
            "file": SimpleUploadedFile(name, data),
            "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
        },
    )
    assert response.status_code < 500
    return response


def said(response) -> str:
    """Every message and the page itself, unescaped: what the admin reads."""
    notes = "\n".join(str(m) for m in get_messages(response.wsgi_request))
    return notes + "\n" + html.unescape(response.content.decode())


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def gzip_stream(chunk: bytes, repeat: int) -> bytes:
    """``chunk * repeat`` gzipped without ever holding it whole: how a bomb is made."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(packer.compress(chunk) for _ in range(repeat)) + packer.flush()


# --- files whose every row is known good or bad -------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24).filter(
    str.strip
)
WORD = st.text("abcdefghij", min_size=1, max_size=6)
NOT_A_STRING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2)
)


@dataclass
class Row:
    """One line of a generated file and what it must become: ``want`` for a good row, None for bad."""

    line: bytes
    want: tuple | None = None


def encode(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def good_prompt_rows(draw) -> Row:
    text = draw(TEXT)
    split = draw(st.sampled_from([None, "train", "eval"]))
    tags = draw(st.lists(WORD, max_size=3))
    if draw(st.booleans()):
        obj = {"prompt": text}
        conversation = [{"role": "user", "content": text}]
    else:
        system = draw(st.none() | TEXT)
        conversation = [{"role": "system", "content": system}] if system else []
        conversation.append({"role": "user", "content": text})
        obj = {"messages": conversation}
    obj.update({"split": split} if split else {})
    obj.update({"tags": tags} if tags else {})
    line = encode(obj)
    if draw(st.booleans()):  # nested as deep as the cap allows, in a field the importer ignores
        line = line[:-1] + b', "meta": ' + nested(draw(st.integers(1, 31))) + b"}"
    return Row(line, (conversation, split or "train", tags))


BAD_PROMPT_ROWS = st.one_of(
    # truncated JSON
    st.builds(
        lambda row, cut: row.line[: max(1, int(len(row.line) * cut))], good_prompt_rows(), st.floats(0, 0.99)
    ),
    # wrong types, field by field
    NOT_A_STRING.map(lambda v: encode({"prompt": v})),
    st.one_of(NOT_A_STRING, TEXT).map(lambda v: encode({"messages": v})),
    NOT_A_STRING.map(lambda v: encode({"messages": [{"role": "user", "content": v}]})),
    st.one_of(
        NOT_A_STRING.filter(lambda v: v is not None), TEXT.filter(lambda v: v not in ("train", "eval"))
    ).map(lambda v: encode({"prompt": "ok", "split": v})),
    st.one_of(st.integers(), st.lists(st.integers(), min_size=1)).map(
        lambda v: encode({"prompt": "ok", "tags": v})
    ),
    st.sampled_from([b"[1, 2]", b'"a string"', b"42", b"null", b'{"prompt": "  "}', b'{"tags": ["x"]}']),
    st.just(encode({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})),
    # nesting past the cap (the row's own object is the first level)
    st.integers(32, 5000).map(lambda d: b'{"prompt": "ok", "meta": ' + nested(d) + b"}"),
    # invalid UTF-8, a NUL, a lone surrogate
    st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]).map(
        lambda junk: b'{"prompt": "caf' + junk + b'"}'
    ),
    st.sampled_from([b'{"prompt": "nul \\u0000 here"}', b'{"prompt": "half \\ud800 a pair"}']),
    # a line over the cap
    st.integers(LINE_CAP, 3 * LINE_CAP).map(lambda n: encode({"prompt": "x" * n})),
).map(Row)


@st.composite
def files(draw, good, bad) -> tuple[list[Row | None], bytes]:
    """Rows (None for a blank line) and the bytes of the file, one row a line."""
    rows = draw(st.lists(st.one_of(good, bad, st.none()), min_size=1, max_size=12))
    blank = draw(st.sampled_from([b"", b"   ", b"\t"]))
    data = b"\n".join(blank if row is None else row.line for row in rows)
    return rows, data + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


@dataclass
class Expected:
    good: list = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)


def expected(rows: list[Row | None], lines: list[int] | None = None) -> Expected:
    """What the rows must become; ``lines`` are where they start (default: one row a line from 1)."""
    out = Expected()
    for line, row in zip(lines or range(1, len(rows) + 1), rows):
        if row is not None:
            (out.good.append(row.want) if row.want is not None else out.bad_lines.append(line))
    return out


def check_answer(
    response, project, want: Expected, before: tuple[int, ...], *, skip_bad: bool, per_row: tuple
):
    """The status, the tables and the page, for a file whose good and bad rows are known."""
    rows = len(want.good) + len(want.bad_lines)
    written = tuple(after - was for after, was in zip(counts(), before))
    text = said(response)
    if want.bad_lines and not skip_bad:
        assert response.status_code == 200
        assert written == (0,) * len(MODELS)  # not half an import: nothing at all
        assert f"Import refused, nothing written: {len(want.bad_lines)} of {rows} rows are bad" in text
    else:
        assert written == tuple(n * len(want.good) for n in per_row)
        assert f"Imported {len(want.good)} of {rows} rows" in text
        if not want.bad_lines:
            assert (response.status_code, response["Location"]) == (302, project_url(project))
    for line in want.bad_lines:
        assert f"line {line}: " in text, f"line {line} is bad but the page does not say so"


def fuzz_upload(client: Client, url: str, file, *, skip_bad: bool, gz: bool):
    """Upload a generated file (gzipped or not) as the page would; what the test checks it against."""
    rows, data = file
    assume(data)  # an empty file is the form's to refuse (test_import_admin.py)
    note(f"file: {data!r}")
    want = expected(rows)
    before, last = counts(), Prompt.objects.order_by("-id").values_list("id", flat=True).first() or 0
    name = "fuzz.jsonl.gz" if gz else "fuzz.jsonl"
    response = upload(client, url, name, gzipped(data) if gz else data, skip_bad=skip_bad)
    return response, want, before, last


@pytest.fixture
def small_line_cap(settings):
    settings.IMPORT_MAX_LINE_BYTES = LINE_CAP


@FUZZ
@given(file=files(good_prompt_rows(), BAD_PROMPT_ROWS), skip_bad=st.booleans(), gz=st.booleans())
def test_it_imports_exactly_the_good_prompt_rows_or_nothing_and_names_every_bad_line(
    admin_client, project, small_line_cap, file, skip_bad, gz
):
    response, want, before, last = fuzz_upload(
        admin_client, prompts_url(project), file, skip_bad=skip_bad, gz=gz
    )

    check_answer(response, project, want, before, skip_bad=skip_bad, per_row=(1, 0, 0, 0, 0))
    if not want.bad_lines or skip_bad:
        new = Prompt.objects.filter(project=project, id__gt=last).order_by("id")
        assert [(p.conversation, p.split, p.tags) for p in new] == want.good


# CSV: a header, then records written by the csv module (a field may span lines)
@st.composite
def good_csv_rows(draw) -> Row:
    text = draw(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00\r"), min_size=1, max_size=24).filter(
            str.strip
        )
    )
    split = draw(st.sampled_from(["", "train", "eval"]))
    tags = draw(st.lists(WORD, max_size=3))
    out = io.StringIO()
    csv.writer(out).writerow([text, split, ", ".join(tags)])  # quotes a field that holds \n
    return Row(
        out.getvalue().removesuffix("\r\n").encode(),
        ([{"role": "user", "content": text}], split or "train", tags),
    )


BAD_CSV_ROWS = st.sampled_from(
    [
        b'"nul \x00 inside",train,',  # a NUL
        b"caf\xc3,train,",  # invalid UTF-8
        b"Hello,holdout,",  # an unknown split
        b"Hello,train,a,surplus",  # more fields than the header
        b'"quoted"then text,train,',  # text after a closing quote
        b"   ,eval,",  # an empty prompt
        b'Hello,train,"[1, 2"',  # tags that look like JSON but are not
    ]
).map(Row)


@FUZZ
@given(file=files(good_csv_rows(), BAD_CSV_ROWS), skip_bad=st.booleans(), unclosed=st.booleans())
def test_odd_csv_quoting_and_nuls_are_bad_rows_at_the_line_they_start(
    admin_client, project, file, skip_bad, unclosed
):
    rows, body = file
    data = b"prompt,split,tags\n" + body
    starts, line = [], 2  # a record starts on the line after the last one ended
    for row in rows:
        starts.append(line)
        line += 1 + (row.line.count(b"\n") if row is not None else 0)
    want = expected(rows, starts)
    if unclosed:  # a quote that never closes swallows the rest of the file: one bad row, at its start
        data += b"" if data.endswith(b"\n") else b"\n"
        want.bad_lines.append(data.count(b"\n") + 1)
        data += b'"never closed,train,\n'
    note(f"file: {data!r}")
    before, last = counts(), Prompt.objects.order_by("-id").values_list("id", flat=True).first() or 0

    response = upload(admin_client, prompts_url(project), "fuzz.csv", data, skip_bad=skip_bad)

    check_answer(response, project, want, before, skip_bad=skip_bad, per_row=(1, 0, 0, 0, 0))
    if not want.bad_lines or skip_bad:
        new = Prompt.objects.filter(project=project, id__gt=last).order_by("id")
        assert [(p.conversation, p.split, p.tags) for p in new] == want.good


# Preference data: HH-RLHF dialogues and TRL rows
HH_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00\n\r:"), min_size=1, max_size=20
).filter(str.strip)


@st.composite
def good_preference_rows(draw) -> Row:
    question, best, worst = draw(HH_TEXT), draw(HH_TEXT), draw(HH_TEXT)
    if best.strip() == worst.strip():
        worst = best.strip() + " not"
    if draw(st.booleans()):
        obj = {
            "chosen": f"\n\nHuman: {question}\n\nAssistant: {best}",
            "rejected": f"\n\nHuman: {question}\n\nAssistant: {worst}",
        }
        return Row(
            encode(obj), ([{"role": "user", "content": question.strip()}], best.strip(), worst.strip())
        )
    obj = {"prompt": question, "chosen": best, "rejected": worst}
    obj.update({"margin": draw(st.floats(-10, 10))} if draw(st.booleans()) else {})
    return Row(encode(obj), ([{"role": "user", "content": question}], best, worst))


TRL_OK = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
BAD_PREFERENCE_ROWS = st.one_of(
    st.builds(
        lambda row, cut: row.line[: max(1, int(len(row.line) * cut))],
        good_preference_rows(),
        st.floats(0, 0.99),
    ),
    st.sampled_from(["prompt", "chosen", "rejected"]).flatmap(
        lambda key: NOT_A_STRING.map(lambda v: encode({**TRL_OK, key: v}))
    ),
    st.sampled_from(["chosen", "rejected"]).map(
        lambda key: encode({k: v for k, v in TRL_OK.items() if k != key})
    ),
    st.one_of(
        st.sampled_from(["big", True, [1]]), st.integers(10**400, 10**401), st.sampled_from([1e308 * 10])
    ).map(lambda v: encode({**TRL_OK, "margin": v})),
    st.just(encode({**TRL_OK, "rejected": "4"})),  # identical replies
    st.just(encode({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"})),
    st.just(encode({"chosen": "no turns at all", "rejected": "none here"})),
    st.integers(32, 5000).map(lambda d: encode(TRL_OK)[:-1] + b', "meta": ' + nested(d) + b"}"),
    st.sampled_from([b"\xff", b"\xc3"]).map(
        lambda junk: b'{"prompt": "q", "chosen": "' + junk + b'", "rejected": "r"}'
    ),
    st.just(b'{"prompt": "q", "chosen": "a\\u0000", "rejected": "r"}'),
    st.integers(LINE_CAP, 3 * LINE_CAP).map(lambda n: encode({**TRL_OK, "chosen": "x" * n})),
).map(Row)


@FUZZ
@given(file=files(good_preference_rows(), BAD_PREFERENCE_ROWS), skip_bad=st.booleans(), gz=st.booleans())
def test_it_imports_exactly_the_good_preference_rows_or_nothing(
    admin_client, project, small_line_cap, file, skip_bad, gz
):
    response, want, before, last = fuzz_upload(
        admin_client, preferences_url(project), file, skip_bad=skip_bad, gz=gz
    )

    check_answer(response, project, want, before, skip_bad=skip_bad, per_row=(1, 2, 1, 2, 1))
    if not want.bad_lines or skip_bad:
        got = []
        for prompt in Prompt.objects.filter(project=project, id__gt=last).order_by("id"):
            (comparison,) = Comparison.objects.filter(prompt=prompt)
            texts = [
                i.response.text for i in comparison.items.select_related("response").order_by("position")
            ]
            got.append((prompt.conversation, *texts))
        assert got == want.good


# --- any bytes at all ---------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b'{"prompt": "hi"}\n',
        b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n',
        b"prompt,split\n",
        b'"quoted, field",train\n',
        b'"',
        b"\x00",
        b"\xff\xfe",
        b"\r",
        b"\x1f\x8b\x08\x00",
        b"[" * 64,
        b'{"margin": 1e999}',
    ]
)
ANY_BYTES = st.one_of(
    st.binary(max_size=400), st.lists(st.one_of(FRAGMENTS, st.binary(max_size=16)), max_size=20).map(b"".join)
)
NAMES = st.one_of(
    st.sampled_from(["data.jsonl", "data.csv", "data.jsonl.gz", "data.csv.gz", "noextension"]),
    # any name the test client can send (it refuses "", "." and "..")
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40).filter(
        lambda name: os.path.basename(name) not in ("", ".", "..")
    ),
)


@FUZZ
@given(
    content=ANY_BYTES,
    wrapping=st.sampled_from(["plain", "gzip", "truncated gzip"]),
    name=NAMES,
    kind=st.sampled_from(["prompts", "preferences"]),
    skip_bad=st.booleans(),
)
def test_any_bytes_under_any_name_get_an_answer_and_never_half_an_import(
    admin_client, project, small_line_cap, content, wrapping, name, kind, skip_bad
):
    data = {"plain": content, "gzip": gzipped(content), "truncated gzip": gzipped(content)[:-5]}[wrapping]
    url = prompts_url(project) if kind == "prompts" else preferences_url(project)
    note(f"file: {data!r}")
    before = counts()

    response = upload(admin_client, url, name, data, skip_bad=skip_bad)

    text, written = said(response), counts()[0] - before[0]
    imported = re.search(r"Imported (\d+) of (\d+) rows", text)
    if imported:
        assert written == int(imported[1]) and (response.status_code == 302) == (imported[1] == imported[2])
        assert wrapping != "truncated gzip"  # nobody knows what its unread part held
    else:
        assert counts() == before
        refusals = (
            "Import refused, nothing written",
            "The submitted file is empty",
            "This field is required",  # a name Django's parser cannot make a file name of
        )
        assert any(refusal in text for refusal in refusals) or (
            # a name with quotes or line breaks breaks the multipart header the test client writes
            response.status_code == 400 and "The upload could not be read" in text
        ), text[-3000:]
    if re.search(r"rows are bad|skipped \d+ bad rows", text):
        assert re.search(r"line \d+: ", text)


# --- the caps -----------------------------------------------------------------------------------


def test_the_page_states_the_limits_and_what_a_million_rows_do(admin_client, project):
    for url in (prompts_url(project), preferences_url(project)):
        text = html.unescape(admin_client.get(url).content.decode())
        assert "Up to 1,000,000 rows, imported in one transaction" in text
        assert "256 MiB uploaded, 1 GiB decompressed, 4 MiB a line, JSON nested 32 levels deep" in text


@pytest.mark.slow
def test_a_line_of_tens_of_megabytes_is_a_bad_row_plain_or_gzipped(admin_client, project):
    huge = b'{"prompt": "' + b"x" * (24 << 20) + b'"}'
    data = b'{"prompt": "first"}\n' + huge + b'\n{"prompt": "third"}\n'

    for name, body in (("huge.jsonl", data), ("huge.jsonl.gz", gzipped(data))):
        refused = upload(admin_client, prompts_url(project), name, body)
        assert "line 2: line is too long (over the line-length limit of 4 MiB)" in said(refused)
        assert not Prompt.objects.exists()

    skipped = upload(admin_client, prompts_url(project), "huge.jsonl", data, skip_bad=True)
    assert "Imported 2 of 3 rows" in said(skipped)
    assert [p.conversation[0]["content"] for p in Prompt.objects.all()] == ["first", "third"]


def test_a_gzip_bomb_is_refused_once_its_content_passes_the_cap(admin_client, project, settings):
    settings.IMPORT_MAX_DECOMPRESSED_BYTES = 8 << 20
    one_line = gzip_stream(b"\0" * (1 << 20), 200)  # 200 MiB of zeros in ~200 KB
    assert len(one_line) < 300_000
    started = time.monotonic()

    response = upload(admin_client, prompts_url(project), "bomb.jsonl.gz", one_line, skip_bad=True)

    assert "the file holds more than 8 MiB (after decompression), the most one import reads" in said(response)
    assert "line 1: " in said(response) and counts() == (0,) * len(MODELS)
    assert time.monotonic() - started < 20  # it stopped at the cap, not at 200 MiB


def test_a_bomb_of_blank_lines_is_refused_at_the_cap(admin_client, project, settings):
    settings.IMPORT_MAX_ROWS = 1000
    lines = gzip_stream(b"\n" * (1 << 20), 100)  # 100 million blank lines

    response = upload(admin_client, preferences_url(project), "blank.jsonl.gz", lines, skip_bad=True)

    assert "line 1001: the file has more than 1,000 blank lines" in said(response)
    assert counts() == (0,) * len(MODELS)


@pytest.mark.parametrize("rows, refused", [(1000, False), (1001, True)])
def test_a_file_over_the_row_cap_is_refused_whole(admin_client, project, settings, rows, refused):
    settings.IMPORT_MAX_ROWS = 1000
    data = b"".join(b'{"prompt": "row %d"}\n' % i for i in range(rows))

    response = upload(admin_client, prompts_url(project), "rows.jsonl", data, skip_bad=True)

    if refused:
        assert "line 1001: the file has more than 1,000 rows, the most one import takes" in said(response)
        assert not Prompt.objects.exists()
    else:
        assert response.status_code == 302 and Prompt.objects.count() == 1000


def test_an_upload_over_the_size_cap_is_dropped_as_it_arrives(admin_client, project, settings):
    settings.IMPORT_MAX_UPLOAD_BYTES = 1 << 20
    data = b'{"prompt": "fine"}\n' * 120_000  # 2.2 MB

    response = upload(admin_client, prompts_url(project), "big.jsonl", data)

    assert response.status_code == 413
    assert "The file is larger than 1 MiB, the most one upload takes" in said(response)
    assert not Prompt.objects.exists()


@pytest.mark.parametrize(
    "post, status, message",
    [
        (lambda token: {"source": "s" * (80 << 10)}, 413, "form fields are larger than 64 KiB"),
        (lambda token: {f"f{i}": "x" for i in range(1200)}, 400, "more than 1,000 form fields"),
        (
            lambda token: {
                "file": [SimpleUploadedFile(f"{i}.jsonl", b'{"prompt": "x"}') for i in range(101)]
            },
            400,
            "more than 100 files; send one",
        ),
    ],
    ids=["DATA_UPLOAD_MAX_MEMORY_SIZE", "DATA_UPLOAD_MAX_NUMBER_FIELDS", "DATA_UPLOAD_MAX_NUMBER_FILES"],
)
def test_what_django_refuses_gets_a_page_with_a_message(
    admin_client, project, settings, post, status, message
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 << 10
    url = prompts_url(project)
    token = admin_client.get(url).cookies["csrftoken"].value
    body = {"file": SimpleUploadedFile("ok.jsonl", b'{"prompt": "x"}\n'), "file_format": "auto"}

    response = admin_client.post(url, {"csrfmiddlewaretoken": token, **body, **post(token)})

    assert response.status_code == status and message in said(response)
    assert "Nothing was imported." in said(response) and not Prompt.objects.exists()


def test_a_broken_multipart_body_is_a_400_with_a_message(admin_client, project):
    response = admin_client.post(
        prompts_url(project),
        b"--x\r\nContent-Disposition: form-data",
        content_type="multipart/form-data; boundary=",
    )

    assert response.status_code == 400 and "The upload could not be read" in said(response)


def test_the_csrf_check_still_guards_the_upload(admin_client, project):
    response = admin_client.post(
        prompts_url(project), {"file": SimpleUploadedFile("a.jsonl", b'{"prompt": "x"}')}
    )

    assert response.status_code == 403 and not Prompt.objects.exists()


# --- a million rows -----------------------------------------------------------------------------


def peak_rss_since_reset() -> Callable[[], int]:
    """Resets the kernel's peak-RSS mark for this process; the function returned reads the growth since."""

    def status(key: str) -> int:
        with open("/proc/self/status") as lines:
            return int(re.search(rf"{key}:\s+(\d+) kB", lines.read())[1]) << 10

    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)  # freed memory back to the kernel
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    base = status("VmRSS")
    return lambda: status("VmHWM") - base


ROW = b'{"prompt": "Prompt number %07d: write a short, kind note to a neighbour."}\n'


def million_rows(last: bytes | None = None) -> bytes:
    """A million prompt rows, gzipped a slice at a time (the inflated file is never in memory)."""
    packer, parts, n = zlib.compressobj(1, zlib.DEFLATED, 31), [], 10**6
    for start in range(0, n, 10_000):
        rows = [ROW % i for i in range(start, min(start + 10_000, n))]
        if last is not None and start + 10_000 >= n:
            rows[-1] = last + b"\n"
        parts.append(packer.compress(b"".join(rows)))
    return b"".join(parts) + packer.flush()


@pytest.mark.slow
# Real transactions: the import commits (or rolls back) as in production, and the table is
# truncated afterwards, so a million dead rows do not slow every later test that counts prompts.
@pytest.mark.django_db(transaction=True)
def test_a_million_rows_import_in_one_request_with_flat_memory(admin_client, project):
    data = million_rows()
    assert len(data) < 8 << 20  # the gzip travels; ~76 MB once inflated
    growth = peak_rss_since_reset()
    started = time.monotonic()

    response = upload(admin_client, prompts_url(project), "million.jsonl.gz", data)

    seconds, peak = time.monotonic() - started, growth()
    print(f"1,000,000 prompts: {seconds:.1f} s, peak memory growth {peak / 2**20:.0f} MiB")
    assert response.status_code == 302 and "Imported 1000000 of 1000000 rows" in said(response)
    assert Prompt.objects.filter(project=project).count() == 10**6
    assert Prompt.objects.order_by("-id").first().conversation == [
        {"role": "user", "content": "Prompt number 0999999: write a short, kind note to a neighbour."}
    ]
    assert peak < 150 << 20  # streamed and batched: far below the inflated file, let alone a million objects


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_million_rows_whose_last_is_bad_import_nothing(admin_client, project):
    data = million_rows(last=b'{"prompt": "the end", "split": "holdout"}')

    response = upload(admin_client, prompts_url(project), "million.jsonl.gz", data)

    assert response.status_code == 200 and counts() == (0,) * len(MODELS)
    text = said(response)
    assert "Import refused, nothing written: 1 of 1000000 rows are bad" in text
    assert "line 1000000: unknown split 'holdout'" in text


def test_a_csv_field_may_be_as_long_as_a_line_and_no_longer(admin_client, project, settings):
    settings.IMPORT_MAX_LINE_BYTES = 1 << 20
    long = "word " * 60_000  # 300 KB: past the csv module's own 128 KiB field limit
    over = "\n".join([long] * 4)  # a quoted field of four lines, each under the cap, 1.2 MB in all
    data = f'prompt\n"{long}"\n"{over}"\n'.encode()

    response = upload(admin_client, prompts_url(project), "long.csv", data, skip_bad=True)

    assert "line 3: malformed CSV: a field is longer than 1 MiB, the line-length limit" in said(response)
    assert [p.conversation[0]["content"] for p in Prompt.objects.all()] == [long]


# --- the API's JSON bodies ----------------------------------------------------------------------

NASTY_STRINGS = [
    '"nul \\u0000 inside"',
    '"half \\ud800 a pair"',
    '"\\udfff"',
    '"x" ' + "]" * 3,  # trailing garbage
]


def json_bodies(project) -> list[tuple[str, bytes]]:
    """Each write endpoint with a JSON body that is hostile in one place."""
    out = []
    for nasty in NASTY_STRINGS:
        out += [
            (
                "/api/prompts/",
                f'{{"project": {project.pk}, "conversation": [{{"role": "user", "content": {nasty}}}]}}',
            ),
            (
                "/api/prompts/",
                f'{{"project": {project.pk}, "conversation": [{{"role": "user", "content": "ok"}}], "tags": [{nasty}]}}',
            ),
            (
                "/api/runs/",
                f'{{"project": {project.pk}, "kind": "reward_model", "config": {{"note": {nasty}}}}}',
            ),
            ("/api/runs/", f'{{"project": {project.pk}, "kind": "reward_model", "config": {{{nasty}: 1}}}}'),
            ("/api/exports/", f'{{"project": {project.pk}, "format": "trl-jsonl", "licence": {nasty}}}'),
            ("/api/projects/", f'{{"name": {nasty}}}'),
        ]
    deep = "[" * 100_000 + "]" * 100_000
    out += [
        ("/api/prompts/", f'{{"project": {project.pk}, "conversation": {deep}}}'),
        ("/api/runs/", f'{{"project": {project.pk}, "kind": "reward_model", "config": {{"a": {deep}}}}}'),
        (
            "/api/runs/",
            f'{{"project": {project.pk}, "kind": "reward_model", "config": {{"a": '
            + "[" * 200
            + "]" * 200
            + "}}",
        ),
    ]
    return [(url, body.encode()) for url, body in out]


@pytest.mark.usefixtures("no_queue")  # were a launch to get through, it would reach no broker
def test_hostile_json_bodies_get_a_400_from_the_api_and_write_nothing(admin_user, project):
    client = token_client(admin_user)
    before = (counts(), TrainingRun.objects.count(), Export.objects.count())

    for url, body in json_bodies(project):
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400, (url, body[:120], response.status_code, response.content[:300])
        assert response.json()

    assert (counts(), TrainingRun.objects.count(), Export.objects.count()) == before


def test_an_api_body_over_djangos_limit_is_a_413_with_a_message(admin_user, project, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 << 10
    body = json.dumps(
        {"project": project.pk, "conversation": [{"role": "user", "content": "x" * (80 << 10)}]}
    )

    response = token_client(admin_user).post("/api/prompts/", body, content_type="application/json")

    assert response.status_code == 413 and "64 KiB" in response.json()["detail"]
    assert not Prompt.objects.exists()

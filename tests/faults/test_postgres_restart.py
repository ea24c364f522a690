"""Postgres restarts while annotators submit: requests fail cleanly (503) or are retried, and
afterwards the database holds every judgment that was acknowledged to a client, once.

Real processes: a private PostgreSQL cluster started for this module (never the machine's
main one, which the rest of the suite uses), gunicorn against it, HTTP clients in threads
and real Chromium. The database is migrated and seeded by this file run as a script in a
subprocess (``python -m tests.faults.test_postgres_restart seed``), since this pytest
process's Django points at the suite's database.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.services import service_missing

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = "The database is not reachable right now"  # webapp/middleware.py
ACKS = ("Saved.", "Already saved.")  # the notices of an accepted submit (annotation/views.py)
ACTION = re.compile(r'hx-post="(/annotate/comparison/\d+/judge/)"')
FIELDS = {
    name: re.compile(rf'name="{name}" value="([^"]+)"')
    for name in ("order", "client_id", "csrfmiddlewaretoken")
}
LOAD_CLIENTS = 4
OVERLAP = 2
THINK_S = 0.05  # between judgments: at most 20/s per client, so the 600 comparisons always suffice

# --- a private PostgreSQL cluster --------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A throwaway cluster in a temporary folder. Postgres refuses to run as root, so when we
    are root its programs run as the ``postgres`` user, who then owns the folder."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tandem-pg-"))
        self.as_owner = []
        if os.geteuid() == 0:
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, user="postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    def _pg(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bin / program), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def _options(self) -> str:
        # fsync off: fast, and the OS keeps what Postgres wrote across a Postgres crash (only a
        # machine crash would lose it). synchronous_commit stays on: a commit is written first.
        return f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"

    def init(self) -> None:
        self._pg(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "-N"
        )

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-o", self._options(), "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str) -> None:
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            self._options(),
            "-l",
            str(self.log),
            "-m",
            mode,
            "-w",
            "restart",
        )

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, sql: str, params=()) -> list[tuple]:
        with psycopg.connect(self.url("tandem"), connect_timeout=10) as conn:
            return conn.execute(sql, params).fetchall()

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Site:
    postgres: PrivatePostgres
    base: str
    round_id: int
    cookie: str
    sessions: list[str]  # logged-in annotators; the last one is kept for the browser test


@pytest.fixture(scope="module")
def site():
    """Private Postgres, migrated and seeded, with gunicorn (2 workers) serving Tandem from it."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        service_missing("PostgreSQL server programs (initdb, pg_ctl) are not installed")
    postgres = PrivatePostgres(bin_dir)
    server = None
    try:
        postgres.init()
        postgres.start()
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tandem")
        env = {**os.environ, "DATABASE_URL": postgres.url("tandem"), "LOG_LEVEL": "WARNING", "DEBUG": "true"}
        seeded = subprocess.run(
            [sys.executable, "-m", "tests.faults.test_postgres_restart", "seed"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        seed = json.loads(seeded.stdout.strip().splitlines()[-1])
        port = _free_port()
        with open(postgres.dir / "gunicorn.log", "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "webapp.wsgi", "-w", "2", "-b", f"127.0.0.1:{port}"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        _wait_until_serving(base, server, postgres.dir / "gunicorn.log")
        yield Site(postgres, base, seed["round"], seed["cookie"], seed["sessions"])
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # gunicorn's quick shutdown
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        postgres.remove()


def _wait_until_serving(base: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"gunicorn exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gunicorn did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _wait_for(condition, what, timeout: float = 90) -> None:
    """Poll ``condition``; ``what`` (a string, or a function giving one) says what was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.05)


# --- simulated annotators over HTTP ----------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw, shared between their threads (list.append and Counter updates of
    distinct keys are enough under the GIL for a tally read after the threads end)."""

    sent: set = field(default_factory=set)  # every client_id posted at least once
    acked: list = field(default_factory=list)  # client_ids the server acknowledged
    statuses: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)  # (status, body) of every non-200 answer
    refusals: list = field(default_factory=list)
    transport_errors: list = field(default_factory=list)
    after_restart: list = field(default_factory=list)  # statuses while `watch` is set
    watch: bool = False
    paused: threading.Event = field(default_factory=threading.Event)
    idle: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        last = self.failures[-1:] or self.refusals[-1:] or self.transport_errors[-1:]
        return f"{len(self.acked)} acknowledged, statuses {dict(self.statuses)}, last problem: {last}"


def _annotator(site: Site, session_key: str, tally: Tally, stop: threading.Event, name: int) -> None:
    """Loop like the HTMX page: GET the round, POST each judgment (its answer is the next item).
    A failed POST is sent again unchanged, same client_id, until the server answers it."""
    import httpx

    def answer(method: str, url: str, **kwargs):
        while True:
            if tally.paused.is_set():
                tally.idle[name] = 1
                while tally.paused.is_set():
                    time.sleep(0.02)
                tally.idle[name] = 0
            try:
                response = client.request(method, url, headers={"hx-request": "true"}, **kwargs)
            except httpx.TransportError as error:
                tally.transport_errors.append(repr(error))
                if stop.is_set():
                    return None
                time.sleep(0.2)
                continue
            tally.statuses[response.status_code] += 1
            if tally.watch:
                tally.after_restart.append(response.status_code)
            if response.status_code == 200:
                return response.text
            tally.failures.append((response.status_code, response.text[:2000]))
            if stop.is_set():
                return None  # the test is over; this one stays unacknowledged
            time.sleep(0.2)

    with httpx.Client(base_url=site.base, cookies={site.cookie: session_key}, timeout=60) as client:
        html = None
        while not stop.is_set():
            html = html or answer("GET", f"/annotate/round/{site.round_id}/")
            if html is None:
                break
            action, values = ACTION.search(html), {k: p.search(html) for k, p in FIELDS.items()}
            if not action or not all(values.values()):
                break  # nothing left for this annotator
            data = {k: m.group(1) for k, m in values.items()} | {"choice": "a_slight", "time_spent_ms": "900"}
            tally.sent.add(data["client_id"])
            html = answer("POST", action.group(1), data=data)
            if html is None:
                break
            if any(f'class="annot-notice" role="status">{ack}<' in html for ack in ACKS):
                tally.acked.append(data["client_id"])
            else:
                tally.refusals.append(html[:2000])
                html = None
            time.sleep(THINK_S)


@pytest.mark.slow
def test_it_keeps_every_acknowledged_judgment_through_postgres_restarts(site, caplog):
    import httpx

    caplog.set_level(logging.WARNING, logger="httpx")  # one INFO line per request otherwise
    postgres = site.postgres
    tally = Tally()
    stop = threading.Event()
    clients = [
        threading.Thread(target=_annotator, args=(site, key, tally, stop, i), daemon=True)
        for i, key in enumerate(site.sessions[:LOAD_CLIENTS])
    ]
    for client in clients:
        client.start()

    def acks_grow_by(n: int) -> None:
        target = len(tally.acked) + n
        _wait_for(lambda: len(tally.acked) >= target, lambda: f"{n} more acknowledgements; {tally.summary()}")

    try:
        acks_grow_by(8)
        # A fast restart under load: sessions are cut, in-flight queries fail.
        postgres.restart("fast")
        acks_grow_by(8)
        # A crash, left down until the clients have been turned away a few times.
        failed_before = len(tally.failures)
        postgres.stop("immediate")
        _wait_for(lambda: len(tally.failures) >= failed_before + LOAD_CLIENTS, "clients to see the outage")
        # Meanwhile a full page and an API client get the same message, as a page and as JSON.
        cookies = {site.cookie: site.sessions[0]}
        page = httpx.get(f"{site.base}/annotate/", cookies=cookies, timeout=60)
        api = httpx.get(
            f"{site.base}/api/", headers={"accept": "application/json"}, cookies=cookies, timeout=60
        )
        postgres.start()
        acks_grow_by(8)
        # Idle across a restart: the workers' kept connections are dead, and the first
        # requests after it must still succeed (CONN_HEALTH_CHECKS reconnects).
        tally.paused.set()
        _wait_for(lambda: sum(tally.idle.values()) == LOAD_CLIENTS, "clients to pause")
        postgres.restart("immediate")
        tally.watch = True
        tally.paused.clear()
        acks_grow_by(8)
    finally:
        tally.paused.clear()
        stop.set()
        for client in clients:
            client.join(timeout=120)
    assert not any(client.is_alive() for client in clients)

    # During the outages clients were told so, in words, with a 503; never a 500.
    assert set(tally.statuses) <= {200, 503}, tally.failures[:3]
    assert tally.statuses[503] >= LOAD_CLIENTS
    assert all(status == 503 and MESSAGE in body for status, body in tally.failures)
    assert tally.transport_errors == []
    # The first requests after a restart did not fail.
    assert tally.after_restart and set(tally.after_restart) == {200}
    assert tally.refusals == []
    assert page.status_code == 503 and "<html" in page.text and MESSAGE in page.text
    assert api.status_code == 503 and MESSAGE in api.json()["detail"]

    rows = postgres.query("SELECT client_id::text, comparison_id FROM annotation_judgment")
    saved = Counter(client_id for client_id, _ in rows)
    # Every acknowledged judgment is there exactly once; nothing is there that was never sent.
    assert len(tally.acked) == len(set(tally.acked)) >= 32
    assert all(saved[client_id] == 1 for client_id in tally.acked)
    assert set(saved) <= tally.sent
    assert len(rows) >= len(tally.acked)
    # No comparison took more judgments than its overlap, and its counter agrees with its rows.
    per_comparison = Counter(comparison_id for _, comparison_id in rows)
    assert max(per_comparison.values()) <= OVERLAP
    counters = dict(postgres.query("SELECT id, judgment_count FROM annotation_comparison"))
    assert all(counters[pk] == per_comparison.get(pk, 0) for pk in counters)


# --- the page in real Chromium -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_it_shows_the_outage_beside_submit_and_saves_once_when_the_database_returns(site, browser):
    postgres = site.postgres
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.add_cookies([{"name": site.cookie, "value": site.sessions[-1], "url": site.base}])
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{site.base}/annotate/round/{site.round_id}/")
        page.wait_for_selector("body[data-annot-ready='1']")
        page.keyboard.press("2")  # "A is slightly better"
        page.fill("#rationale", "A answers the question; B wanders off.")
        client_id = page.input_value("input[name=client_id]")

        postgres.stop("fast")
        page.click("#submit-judgment")
        note = page.wait_for_selector("#annot-retry")
        assert MESSAGE in note.text_content()
        assert "What you entered is kept" in note.text_content()
        assert page.input_value("#rationale") == "A answers the question; B wanders off."
        assert page.is_checked("input[name=choice][value=a_slight]")
        assert page.input_value("input[name=client_id]") == client_id

        postgres.start()
        page.wait_for_selector("#work .annot-notice", timeout=90_000)
        assert page.text_content("#work .annot-notice").strip() in ACKS
    finally:
        context.close()

    rows = postgres.query(
        "SELECT j.client_id::text, j.rationale, j.strength FROM annotation_judgment j"
        " JOIN auth_user u ON u.id = j.annotator_id WHERE u.username = %s",
        [f"restart-{len(site.sessions) - 1}"],
    )
    assert rows == [(client_id, "A answers the question; B wanders off.", "slight")]


# --- which database errors count as an outage ---------------------------------------------------


@pytest.mark.parametrize(
    ("driver_error", "outage"),
    [
        (psycopg.OperationalError("connection refused"), True),  # no SQLSTATE: the server never answered
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), False),  # a live server's answer: a bug
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (sqlite3.OperationalError("no such table: auth_user"), False),  # an unmigrated SQLite file
    ],
)
def test_it_answers_503_only_when_postgres_cannot_be_reached(rf, driver_error, outage):
    from django.db import InterfaceError, OperationalError

    from webapp.middleware import DatabaseUnavailableMiddleware

    wrapper = InterfaceError if isinstance(driver_error, psycopg.InterfaceError) else OperationalError
    try:
        raise wrapper(*driver_error.args) from driver_error  # as Django wraps the driver's errors
    except wrapper as error:
        response = DatabaseUnavailableMiddleware(lambda request: None).process_exception(rf.get("/"), error)
    if outage:
        assert response.status_code == 503 and response["Retry-After"]
        assert MESSAGE in response.content.decode()
    else:
        assert response is None  # Django's own handling: a 500, logged with its traceback


# --- seeding, run in a subprocess against the private database ----------------------------------


def _seed(n_comparisons: int = 600, n_users: int = LOAD_CLIENTS + 1) -> dict:
    """Migrate, then one open round of pairwise comparisons and logged-in annotators."""
    import django

    django.setup()
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from annotation.models import Comparison, ComparisonItem, Project, Prompt, Response, Round
    from training.models import Checkpoint
    from webapp.roles import ANNOTATOR

    call_command("migrate", verbosity=0)
    project = Project.objects.create(
        name="Restart drill", overlap=OVERLAP, guidelines="Pick the better answer."
    )
    round = Round.objects.create(project=project, number=1, status=Round.Status.OPEN)
    checkpoint = Checkpoint.objects.create(project=project, version=1, uri="/nonexistent", origin="base")
    prompts = Prompt.objects.bulk_create(
        Prompt(project=project, conversation=[{"role": "user", "content": f"Question {i}?"}])
        for i in range(n_comparisons)
    )
    responses = Response.objects.bulk_create(
        Response(prompt=p, round=round, checkpoint=checkpoint, sample_index=s, text=f"Answer {s} to {p.pk}.")
        for p in prompts
        for s in range(2)
    )
    comparisons = Comparison.objects.bulk_create(Comparison(round=round, prompt=p) for p in prompts)
    ComparisonItem.objects.bulk_create(
        ComparisonItem(comparison=c, response=responses[2 * i + s], position=s)
        for i, c in enumerate(comparisons)
        for s in range(2)
    )
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"restart-{i}", password="!") for i in range(n_users)
    )
    Group.objects.get_or_create(name=ANNOTATOR)[0].user_set.add(*users)
    # Sessions made directly (a password check costs ~0.5 s of CPU by design).
    store = import_module(settings.SESSION_ENGINE).SessionStore
    sessions = []
    for user in users:
        session = store()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        sessions.append(session.session_key)
    return {"round": round.pk, "cookie": settings.SESSION_COOKIE_NAME, "sessions": sessions}


if __name__ == "__main__" and sys.argv[1:] == ["seed"]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    print(json.dumps(_seed()))

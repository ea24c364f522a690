"""Load test of annotation over HTTP on the real stack, then a check that nothing was lost.

    .venv/bin/python tests/benchmarks/annotate_http.py [--seconds 30] [--mode crowd|closed|both]
        [--connections persistent|per-request|both] [--label-studio-per-s X | --issue-baseline]

Brings up what a deployment runs, on this machine: gunicorn with production settings
(DEBUG off, collected static files) on PostgreSQL, a Celery worker on Redis, then drives
simulated annotators with a small asyncio HTTP client. Every request opens a new TCP
connection (no keep-alive, as the Label Studio figures below were taken). An annotator
loads the round once (GET), then loops: POST the judgment for the item on screen; the
answer already carries the next item (that is how the page works with HTMX), so one
round trip is "submit + next", and its latency is what the table reports.

Modes:
  crowd   200 annotators, each reading an item for 2 s before judging it (the first one
          too: nobody judges what they have not read). Target: p95 < 100 ms, no errors.
  closed  100 annotators with no pause: the most the server takes. Target: 10x Label Studio
          1.23 on the same machine (issue #9 took 11.7/s at 100 clients on these 2 cores).
          The host's speed drifts from day to day, so by default this run then measures
          Label Studio itself (label_studio_http.py at 100 clients, same client, same
          seconds, its database vacuumed after seeding as ours is) and takes those figures;
          --label-studio-per-s gives one measured earlier, --issue-baseline takes 11.7/s
          (both per-request figures, used for every row).

Each mode runs twice (--connections): with Tandem's persistent database connections (as
shipped: each gunicorn process keeps one for 60 s) and with one connection per request
(?conn_max_age=0), as Label Studio ships; Label Studio is measured both ways too (a copy of
its settings module gives it persistent connections), and each closed-loop row's ratio is to
Label Studio at the same policy. Tandem's table is printed before Label Studio is measured.
Every seed and load run holds the bench lock (--lock). Beside judgments/s the table gives
requests/s (Tandem: one request per judgment, the answer carries the next item; Label
Studio: two, next and submit) and the CPU each judgment cost the web server, all of
PostgreSQL (its whole process tree, backends that came and went included), the client and
anything else.

--history N gives every annotator N judgments in an earlier round of the project first, as
after weeks of work: what an annotator did before must not make each of their pages dearer.

After each mode it checks the database against what the clients saw: every submit the
server acknowledged ("Saved.") is stored exactly once, nothing is stored that was not
acknowledged, no comparison has more judgments than its overlap, and the only leases
left are the items on annotators' screens at the end (nothing dangling).

DATABASE_URL (default postgres://postgres@127.0.0.1:5432/tandem_load_bench, created if
missing) and CELERY_BROKER_URL (default redis://127.0.0.1:6379/14) say where; the
benchmark's project and users are replaced on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.benchmarks.bench_lock import DEFAULT_LOCK, bench_lock  # noqa: E402
from tests.benchmarks.http_load import (  # noqa: E402
    ensure_database,
    http_request,
    machine_busy_seconds,
    percentile_ms,
    postgres_pid,
    tree_cpu_seconds,
    wait_until_up,
)

PROJECT = "HTTP load benchmark"
LABEL_STUDIO_PER_S = {10: 15.5, 100: 11.7}  # Label Studio 1.23, same 2 cores, Postgres + uWSGI (issue #9)
ACTION = re.compile(rb'hx-post="(/annotate/comparison/(\d+)/judge/)"')
ORDER = re.compile(rb'name="order" value="([\d,]+)"')
CLIENT_ID = re.compile(rb'name="client_id" value="([0-9a-f-]{36})"')


def _production_env(args, static_root: str) -> dict:
    return {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "STATIC_ROOT": static_root,
        "LOG_LEVEL": "WARNING",
    }


def _seed(n_comparisons: int, n_users: int, overlap: int, history: int = 0) -> tuple[int, list[str]]:
    """A project with one open round of pairwise comparisons, and logged-in annotators' session keys.

    ``history``: each annotator also judged that many comparisons of an earlier, closed round
    of the project, two days ago (as after weeks of work; 0: everyone starts fresh)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection

    from annotation.models import Comparison, ComparisonItem, Project, Prompt, Response, Round
    from annotation.rendering import markdown_to_safe_html
    from training.models import Checkpoint

    call_command("migrate", verbosity=0)
    Response.objects.filter(prompt__project__name=PROJECT).delete()  # responses protect their checkpoint
    Project.objects.filter(name=PROJECT).delete()
    get_user_model().objects.filter(username__startswith="load-").delete()
    project = Project.objects.create(name=PROJECT, overlap=overlap, guidelines="Pick the **better** answer.")
    earlier = Round.objects.create(project=project, number=1, status=Round.Status.CLOSED)
    round = Round.objects.create(project=project, number=2, status=Round.Status.OPEN)
    checkpoint = Checkpoint.objects.create(project=project, version=1, uri="/nonexistent", origin="base")
    prompts = Prompt.objects.bulk_create(
        Prompt(
            project=project, conversation=[{"role": "user", "content": f"Question {i}: explain *recursion*."}]
        )
        for i in range(max(n_comparisons, history))
    )
    earlier_comparisons = Comparison.objects.bulk_create(
        Comparison(round=earlier, prompt=p, judgment_count=n_users) for p in prompts[:history]
    )
    prompts = prompts[:n_comparisons]
    body = "Recursion is when a function calls itself.\n\n```python\ndef f(n):\n    return 1 if n < 2 else n * f(n - 1)\n```"
    texts = {(i, s): f"{body}\n\nVariant {i}.{s}." for i in range(n_comparisons) for s in range(2)}
    responses = Response.objects.bulk_create(
        Response(  # rendered when written, as generation does
            prompt=p,
            round=round,
            checkpoint=checkpoint,
            sample_index=s,
            text=texts[i, s],
            html=markdown_to_safe_html(texts[i, s]),
        )
        for i, p in enumerate(prompts)
        for s in range(2)
    )
    comparisons = Comparison.objects.bulk_create(Comparison(round=round, prompt=p) for p in prompts)
    ComparisonItem.objects.bulk_create(
        ComparisonItem(comparison=c, response=responses[2 * i + s], position=s)
        for i, c in enumerate(comparisons)
        for s in range(2)
    )
    group, _ = Group.objects.get_or_create(name="annotator")
    users = get_user_model().objects.bulk_create(
        get_user_model()(username=f"load-{i}", password="!") for i in range(n_users)
    )
    group.user_set.add(*users)
    with connection.cursor() as cursor:
        if history:
            cursor.execute(
                """INSERT INTO annotation_judgment (comparison_id, annotator_id, source, ranking, is_tie,
                       both_bad, rationale, criteria, order_shown, created_at, updated_at)
                   SELECT c, u, 'human', '[]', false, false, '', '{}', '[]', now() - interval '2 days',
                       now() - interval '2 days'
                   FROM unnest(%s::bigint[]) c CROSS JOIN unnest(%s::bigint[]) u""",
                [[c.pk for c in earlier_comparisons], [u.pk for u in users]],
            )
        # As autovacuum would shortly after a round opens (and after the last run's rows went).
        cursor.execute("VACUUM ANALYZE")
    # Log everyone in up front: a password check costs ~0.3 s of CPU by design.
    sessions = []
    for user in users:
        session = import_module(settings.SESSION_ENGINE).SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        sessions.append(session.session_key)
    return round.pk, sessions


# --- the client --------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)  # client ids the server said it saved
    sent: list[str] = field(default_factory=list)
    requests: int = 0  # every request sent: the first page and each submit
    errors: dict[str, int] = field(default_factory=dict)
    on_screen: dict[int, int] = field(default_factory=dict)  # annotator index -> comparison id shown last

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _request(port: int, method: str, path: str, session: str, body: bytes = b"") -> tuple[int, bytes]:
    csrf = "x" * 32  # an unmasked CSRF secret: cookie and header must match
    headers = f"Cookie: sessionid={session}; csrftoken={csrf}\r\nX-CSRFToken: {csrf}\r\nHX-Request: true\r\n"
    return await http_request(port, method, path, headers, body, "application/x-www-form-urlencoded")


async def _annotator(
    index: int, port: int, round_id: int, session: str, stop_at: float, pause: float, tally: Tally
):
    tally.requests += 1
    status, page = await _request(port, "GET", f"/annotate/round/{round_id}/", session)
    if status != 200:
        tally.error(f"GET {status}")
        return
    while time.monotonic() < stop_at:
        action, order, client_id = ACTION.search(page), ORDER.search(page), CLIENT_ID.search(page)
        if not (action and order and client_id):
            tally.on_screen.pop(index, None)
            return  # nothing left for this annotator
        tally.on_screen[index] = int(action.group(2))
        if pause:
            await asyncio.sleep(pause)  # reading the item on screen, the first one included
            if time.monotonic() >= stop_at:
                break
        client = client_id.group(1).decode()
        form = f"client_id={client}&order={order.group(1).decode()}&choice=a_slight&time_spent_ms=1500"
        tally.sent.append(client)
        started = time.monotonic()
        tally.requests += 1
        try:
            status, answer = await _request(port, "POST", action.group(1).decode(), session, form.encode())
        except OSError as exc:
            tally.error(type(exc).__name__)
            await asyncio.sleep(0.05)
            continue
        tally.latencies.append(time.monotonic() - started)
        if status == 200 and b"Saved." in answer:
            tally.acknowledged.append(client)
            page = answer
        else:
            tally.error(f"POST {status}")
    if ACTION.search(page):
        tally.on_screen[index] = int(ACTION.search(page).group(2))


async def _drive(
    port: int, round_id: int, sessions: list[str], seconds: float, pause: float
) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    stop_at = started + seconds
    # Annotators arrive over the first second or pause, not all in one instant.
    spread = max(pause, 1.0) / len(sessions)

    async def arrive(i, session):
        await asyncio.sleep(i * spread)
        await _annotator(i, port, round_id, session, stop_at, pause, tally)

    async def analyze_once_tables_have_grown():
        # A deployment that has run for a while has statistics for its leases and judgments;
        # autovacuum takes a minute to notice a fresh round's, longer than a benchmark mode.
        await asyncio.sleep(min(5.0, seconds / 4))
        await asyncio.to_thread(_analyze)

    await asyncio.gather(analyze_once_tables_have_grown(), *(arrive(i, s) for i, s in enumerate(sessions)))
    return tally, time.monotonic() - started


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    connection.close()


# --- the check ---------------------------------------------------------------------------


def _check_database(round_id: int, tally: Tally, usernames: list[str]) -> list[str]:
    """What is wrong in the database given what the clients saw (empty when all is well)."""
    from collections import Counter

    from django.db.models import F
    from django.utils import timezone

    from annotation.models import Comparison, Judgment, Lease

    problems = []
    stored = Counter(
        str(c)
        for c in Judgment.objects.filter(comparison__round_id=round_id).values_list("client_id", flat=True)
    )
    doubled = [c for c, n in stored.items() if n > 1]
    lost = set(tally.acknowledged) - set(stored)
    unacknowledged = set(stored) - set(tally.acknowledged)
    if doubled:
        problems.append(f"{len(doubled)} judgments stored twice")
    if lost:
        problems.append(f"{len(lost)} acknowledged judgments missing")
    if unacknowledged:
        problems.append(f"{len(unacknowledged)} judgments stored but never acknowledged")
    over = Comparison.objects.filter(
        round_id=round_id, judgment_count__gt=F("round__project__overlap")
    ).count()
    if over:
        problems.append(f"{over} comparisons over their overlap")
    miscounted = sum(
        1
        for c in Comparison.objects.filter(round_id=round_id)
        .only("judgment_count")
        .prefetch_related("judgments")
        if c.judgment_count != len(c.judgments.all())
    )
    if miscounted:
        problems.append(f"{miscounted} comparisons whose judgment count is off")
    live = set(
        Lease.objects.filter(comparison__round_id=round_id, expires_at__gt=timezone.now()).values_list(
            "annotator__username", "comparison_id"
        )
    )
    shown = {(usernames[i], c) for i, c in tally.on_screen.items()}
    if live - shown:
        problems.append(f"{len(live - shown)} leases held for items nobody has on screen")
    return problems


# --- the stack ---------------------------------------------------------------------------


def _start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


# How gunicorn's processes hold their database connections. Tandem keeps each for 60 s (one
# connection per process); Label Studio ships opening one per request.
CONNECTIONS = {"persistent": "", "per-request": "conn_max_age=0"}


def _with_connections(database_url: str, connections: str) -> str:
    extra = CONNECTIONS[connections]
    if not extra:
        return database_url
    return database_url + ("&" if "?" in database_url else "?") + extra


def _run_mode(args, env: dict, name: str, clients: int, pause: float, connections: str) -> dict:
    """Seed, serve with gunicorn, drive ``clients`` for ``args.seconds``, check the database."""
    server_env = {**env, "DATABASE_URL": _with_connections(args.database_url, connections)}
    with bench_lock(args.lock, f"{name}, {connections} connections"):
        round_id, sessions = _seed(args.comparisons, clients, overlap=3, history=args.history)
        server = _start(
            [sys.executable, "-m", "gunicorn", "webapp.wsgi", "-w", str(args.workers), "-b", f"127.0.0.1:{args.port}",
             "--backlog", "2048", "--log-level", "warning"],
            server_env,
        )  # fmt: skip
        try:
            wait_until_up(f"http://127.0.0.1:{args.port}/healthz", "gunicorn", server=server)
            # CPU spent per judgment by each part, counted as label_studio_http.py counts it:
            # what the figures would be on idle cores.
            postgres = postgres_pid(args.database_url)
            web_before, db_before = tree_cpu_seconds(server.pid), tree_cpu_seconds(postgres)
            busy_before, client_before = machine_busy_seconds(), time.process_time()
            tally, elapsed = asyncio.run(_drive(args.port, round_id, sessions, args.seconds, pause))
            cpu = {
                "web": tree_cpu_seconds(server.pid) - web_before,
                "database": tree_cpu_seconds(postgres) - db_before,  # all of PostgreSQL, as for Label Studio
                "client": time.process_time() - client_before,
            }
            # Whatever else ran meanwhile (the worker, or what does not take the lock).
            cpu["other"] = max(0.0, machine_busy_seconds() - busy_before - sum(cpu.values()))
        finally:
            _stop(server)
    problems = _check_database(round_id, tally, [f"load-{i}" for i in range(clients)])
    return {
        "name": name,
        "connections": connections,
        "clients": clients,
        "pause": pause,
        "tally": tally,
        "elapsed": elapsed,
        "cpu": cpu,
        "problems": problems,
    }


def _label_studio_baseline(args, policies: list[str]) -> tuple[dict[str, float], str]:
    """Label Studio's annotations/s at 100 clients for each connection policy, and their source."""
    if args.label_studio_per_s is not None:
        return dict.fromkeys(policies, args.label_studio_per_s), "given by --label-studio-per-s, per request"
    if args.issue_baseline:
        issue_figure = LABEL_STUDIO_PER_S[100]
        return dict.fromkeys(policies, issue_figure), "issue #9's figure, per request, not this run"
    from tests.benchmarks import label_studio_http

    options = label_studio_http.parser().parse_args(
        ["--clients", "100", "--seconds", str(args.seconds), "--lock", args.lock]
        + ["--connections", policies[0] if len(policies) == 1 else "both"]
    )
    server_kind, rows = label_studio_http.measure(options)
    label_studio_http.report(options, server_kind, rows)
    problems = [p for row in rows for p in row["problems"]]
    if problems:
        sys.exit("FAILED: Label Studio: " + "; ".join(problems))
    measured = {row["connections"]: row["tally"].accepted / row["elapsed"] for row in rows}
    return measured, "measured in this run"


def _report(args, rows: list[dict]) -> None:
    load = os.getloadavg()[0]
    print(
        f"\ngunicorn {args.workers} sync workers, production settings, PostgreSQL, Celery worker on Redis; "
        f"{os.cpu_count()} CPUs, load average {load:.1f}; {args.seconds:.0f} s per mode; a new connection per request"
        + (f"; each annotator with {args.history} earlier judgments" if args.history else "")
    )
    print(
        f"{'mode':<7} {'db connections':<14} {'clients':>7} {'pause':>5} {'judgments':>9} {'per s':>7} "
        f"{'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>7}  database"
    )
    for row in rows:
        tally, elapsed = row["tally"], row["elapsed"]
        n, latencies = len(tally.acknowledged), tally.latencies
        check = (
            "; ".join(row["problems"])
            or "every acknowledged judgment stored once, overlap kept, no dangling lease"
        )
        print(
            f"{row['name']:<7} {row['connections']:<14} {row['clients']:>7} {row['pause']:>4.0f}s {n:>9} "
            f"{n / elapsed:>7.1f} {tally.requests / elapsed:>7.1f} {percentile_ms(latencies, 0.5):>7.0f} "
            f"{percentile_ms(latencies, 0.95):>7.0f} {percentile_ms(latencies, 0.99):>7.0f} "
            f"{100 * sum(tally.errors.values()) / max(1, tally.requests):>6.2f}%  {check}"
        )
        if tally.errors:
            print(f"        errors: {tally.errors}")
        if n:
            cpu = row["cpu"]
            parts = ", ".join(f"{part} {1000 * seconds / n:.1f}" for part, seconds in cpu.items())
            server_ms = 1000 * (cpu["web"] + cpu["database"]) / n
            print(
                f"        CPU per judgment (ms): {parts}; the server's share alone would take "
                f"{1000 * (os.cpu_count() or 1) / server_ms:.0f} judgments/s on {os.cpu_count()} idle cores"
            )
        if row["cpu"]["other"] / (elapsed * (os.cpu_count() or 1)) > 0.05:
            print("        WARNING: other processes took over 5% of the CPUs during this run")


def _report_ratios(rows: list[dict], baseline: dict[str, float], source: str) -> None:
    print("\nclosed loop, 100 clients: Tandem against Label Studio 1.23 at the same connection policy")
    for row in (row for row in rows if row["name"] == "closed"):
        per_s = len(row["tally"].acknowledged) / row["elapsed"]
        against = baseline[row["connections"]]
        print(
            f"  {row['connections']:<12} Tandem {per_s:6.1f}/s, Label Studio {against:5.1f}/s ({source}): "
            f"{per_s / against:.1f}x (target 10x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30, help="how long each mode runs")
    parser.add_argument("--mode", choices=["crowd", "closed", "both"], default="both")
    parser.add_argument(
        "--connections",
        choices=[*CONNECTIONS, "both"],
        default="both",
        help="Tandem's database connections: persistent (as shipped), per-request (as Label Studio), both",
    )
    # One worker per core plus one: on 2 cores 3 took the most (closed loop, 15-20 s runs:
    # 2 -> 136/s, 3 -> 141-156/s, 4 -> 121-144/s, 5 -> 128-140/s, 8 -> 109/s); each more process
    # costs every request CPU in cache misses and switches.
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) + 1, help="gunicorn workers")
    parser.add_argument("--port", type=int, default=8765)
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--label-studio-per-s",
        type=float,
        help="Label Studio's annotations/s at 100 clients, measured earlier: skips measuring it in this run",
    )
    baseline.add_argument(
        "--issue-baseline",
        action="store_true",
        help=f"take issue #9's {LABEL_STUDIO_PER_S[100]}/s instead of measuring Label Studio in this run",
    )
    parser.add_argument("--comparisons", type=int, default=6000)
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="judgments each annotator made in an earlier round before this run (default 0: a fresh start)",
    )
    parser.add_argument("--lock", default=DEFAULT_LOCK, help="flock held around each seed and load run")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tandem_load_bench"),
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    )
    args = parser.parse_args()
    if not args.database_url.startswith("postgres"):
        sys.exit("--database-url must name a PostgreSQL database (it is created if missing).")
    ensure_database(args.database_url)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # servers stop as on Ctrl-C

    static_root = tempfile.mkdtemp(prefix="tandem-static-")
    env = _production_env(args, static_root)
    os.environ.update(
        {k: env[k] for k in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS")}
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    import django

    django.setup()
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    worker = _start(
        [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-Q", "default", "-c", "1", "--loglevel", "WARNING"],
        env,
    )  # fmt: skip

    modes = {"crowd": (200, 2.0), "closed": (100, 0.0)}
    chosen = list(modes) if args.mode == "both" else [args.mode]
    policies = list(CONNECTIONS) if args.connections == "both" else [args.connections]
    try:
        rows = [_run_mode(args, env, name, *modes[name], policy) for name in chosen for policy in policies]
    finally:
        _stop(worker)
    _report(args, rows)
    if "closed" in chosen:  # the baseline after Tandem's runs, its worker stopped: nothing of ours is running
        _report_ratios(rows, *_label_studio_baseline(args, policies))
    failures = [f"{row['name']} ({row['connections']}): {p}" for row in rows for p in row["problems"]]
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()

"""Simulated annotators over HTTP against gunicorn + Postgres: judgments/s and next+submit latency.

    DATABASE_URL=postgres://root@127.0.0.1:5432/tandem_annot_bench \\
        .venv/bin/python tests/benchmarks/annotate_http.py [--seconds 20] [--workers 5]

Each simulated annotator holds a session (made in the database beforehand), then loops the way the page does with HTMX:
GET the round (the first item), then POST each judgment; the POST's answer already
carries the next comparison, so one submit round-trip is "next + submit". Clients keep
their connection open (httpx), as a browser does.

Modes: closed loop with no pauses at 10 and 50 clients (the most the server takes), and
100 annotators who each pause 2 s between judgments (a realistic crowd).
The database is the one in DATABASE_URL (created if missing, then migrated); the
benchmark's project and users are replaced on every run. DEBUG stays on so the session
cookie works over plain http; it only adds Django's bounded query log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

PROJECT = "HTTP benchmark"
ACTION = re.compile(r'hx-post="(/annotate/comparison/\d+/judge/)"')
ORDER = re.compile(r'name="order" value="([\d,]+)"')


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _seed(n_comparisons: int, n_users: int, overlap: int) -> tuple[int, list[str]]:
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connection

    from annotation.models import Comparison, ComparisonItem, Project, Prompt, Response, Round
    from training.models import Checkpoint

    call_command("migrate", verbosity=0)
    Response.objects.filter(prompt__project__name=PROJECT).delete()  # responses protect their checkpoint
    Project.objects.filter(name=PROJECT).delete()
    users = get_user_model().objects.filter(username__startswith="bench-")
    users.delete()
    project = Project.objects.create(name=PROJECT, overlap=overlap, guidelines="Pick the **better** answer.")
    round = Round.objects.create(project=project, number=1, status=Round.Status.OPEN)
    checkpoint = Checkpoint.objects.create(project=project, version=1, uri="/nonexistent", origin="base")
    prompts = Prompt.objects.bulk_create(
        Prompt(
            project=project, conversation=[{"role": "user", "content": f"Question {i}: explain *recursion*."}]
        )
        for i in range(n_comparisons)
    )
    body = "Recursion is when a function calls itself.\n\n```python\ndef f(n):\n    return 1 if n < 2 else n * f(n - 1)\n```"
    responses = Response.objects.bulk_create(
        Response(prompt=p, round=round, checkpoint=checkpoint, sample_index=s, text=f"{body}\n\nVariant {s}.")
        for p in prompts
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
        get_user_model()(username=f"bench-{i}", password="!") for i in range(n_users)
    )
    group.user_set.add(*users)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would shortly after a round opens
    # Log everyone in up front: a password check costs ~0.5 s of CPU by design, which
    # would otherwise swamp the first seconds of every mode.
    sessions = []
    for user in users:
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        sessions.append(session.session_key)
    return round.pk, sessions


async def _annotator(client, base: str, round_id: int, stop_at: float, pause: float, latencies, counts):
    html = (await client.get(f"{base}/annotate/round/{round_id}/", headers={"hx-request": "true"})).text
    headers = {"x-csrftoken": client.cookies["csrftoken"], "hx-request": "true"}
    while time.monotonic() < stop_at:
        action, order = ACTION.search(html), ORDER.search(html)
        if not action or not order:
            return  # nothing left for this annotator
        data = {
            "client_id": str(uuid.uuid4()),
            "order": order.group(1),
            "choice": "a_slight",
            "time_spent_ms": "1500",
        }
        started = time.monotonic()
        response = await client.post(f"{base}{action.group(1)}", data=data, headers=headers)
        latencies.append(time.monotonic() - started)
        if response.status_code != 200 or "Saved." not in response.text:
            counts["errors"] += 1
        else:
            counts["judgments"] += 1
        html = response.text
        if pause:
            await asyncio.sleep(pause)


async def _run_mode(
    base: str, round_id: int, session_keys: list[str], clients: int, seconds: float, pause: float
) -> dict:
    import httpx

    latencies: list[float] = []
    counts = {"judgments": 0, "errors": 0}
    limits = httpx.Limits(max_connections=1)
    sessions = [
        httpx.AsyncClient(limits=limits, timeout=60, cookies={"sessionid": key})
        for key in session_keys[:clients]
    ]
    started = time.monotonic()
    stop_at = started + seconds
    try:
        await asyncio.gather(
            *(_annotator(s, base, round_id, stop_at, pause, latencies, counts) for s in sessions)
        )
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions))
    elapsed = time.monotonic() - started
    latencies.sort()
    pct = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0  # noqa: E731
    return {
        "clients": clients,
        "pause_s": pause,
        "judgments": counts["judgments"],
        "errors": counts["errors"],
        "per_s": counts["judgments"] / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else 0.0,
    }


def _wait_until_up(base: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not come up")


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--comparisons", type=int, default=5000)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a Postgres database (it is created if missing).")
    _ensure_database(url)
    modes = [(10, 0.0), (50, 0.0), (100, 2.0)]
    base = f"http://127.0.0.1:{args.port}"
    results = []
    for clients, pause in modes:
        round_id, session_keys = _seed(args.comparisons, max(c for c, _ in modes), overlap=3)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "webapp.wsgi",
                "-w",
                str(args.workers),
                "-b",
                f"127.0.0.1:{args.port}",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env={**os.environ, "LOG_LEVEL": "WARNING"},
        )
        try:
            _wait_until_up(base)
            results.append(asyncio.run(_run_mode(base, round_id, session_keys, clients, args.seconds, pause)))
        finally:
            server.terminate()
            server.wait(timeout=30)
    load = os.getloadavg()[0]
    print(
        f"gunicorn sync workers: {args.workers}; cpus: {os.cpu_count()}; load average {load:.1f}; {args.seconds:.0f} s per mode"
    )
    print(
        f"{'clients':>7} {'pause':>6} {'judgments':>9} {'errors':>6} {'per s':>7} {'p50 ms':>7} {'p95 ms':>7}"
    )
    for r in results:
        print(
            f"{r['clients']:>7} {r['pause_s']:>5.0f}s {r['judgments']:>9} {r['errors']:>6} {r['per_s']:>7.1f} "
            f"{r['p50_ms']:>7.0f} {r['p95_ms']:>7.0f}"
        )


if __name__ == "__main__":
    main()

"""Label Studio 1.23 under the load annotate_http.py puts on Tandem, on this machine, now.

    .venv/bin/python tests/benchmarks/label_studio_http.py [--clients 10 100] [--seconds 30]

Issue #9 sets Tandem's target as 10x what Label Studio 1.23 takes on the same 2 cores
(15.5 annotations/s at 10 clients, 11.7/s at 100). The host's speed drifts between days,
so this measures Label Studio here, in the same session as annotate_http.py, the same way:

- Label Studio 1.23.0 from PyPI in its own virtualenv outside the repository (--venv,
  default /tmp/tandem-bench/label-studio; reused when it already holds 1.23.0), served by
  uWSGI as its Docker image's deploy/uwsgi.ini does (master, 2 processes per core, 1 thread
  each, lazy apps, thunder lock, uWSGI's own HTTP router in front; no nginx), or by gunicorn
  with the same processes when uWSGI does not build here (the header says which).
- Its own PostgreSQL database (--database-url, default
  postgres://postgres@127.0.0.1:5432/label_studio_bench, created if missing, migrated; after
  each seeding VACUUM ANALYZE, as annotate_http.py does for Tandem), production settings (core.settings.label_studio, DEBUG off; Sentry off: no internet).
- A pairwise project (<Pairwise> over two texts, as in its "Human Preference collection for
  RLHF" template) with as many tasks as annotate_http.py has comparisons (6,000, imported
  through its import API; --tasks) and 3 annotations per task, as there; one annotator account
  per client in one organization, each with a personal access token (a JWT: 1.23 turns legacy
  tokens off for new organizations). Label Studio's next-task queries scan the project's
  unfinished tasks, so it gets slower as projects grow: compare at the same size.
- N clients in a closed loop with no pause, a new TCP connection per request: get the next
  task of the labeling stream (GET /api/projects/{id}/next), post an annotation for it
  (POST /api/tasks/{id}/annotations/); only a 201 counts as accepted.

It prints annotations/s, p50/p95/p99 of a cycle (next + submit) and of the submit alone,
the error rate, the CPU each annotation cost the web server, the database (all of
PostgreSQL: Label Studio opens a connection per request), the client and anything else
running (a warning when that is over 5% of the machine), and checks in the database that
exactly the accepted annotations are stored. The project is replaced on
every run; the annotator accounts are reused.

The machine is shared with other timings: every CPU-heavy step (pip, migrations, seeding,
each load run) holds an exclusive flock on /tmp/bench.lock (--lock). Every process started
here is stopped on exit, Ctrl-C included.

--connections persistent runs it with each process keeping its database connection for 60 s
(a copy of its production settings module with that added), as Tandem does; --connections both
runs each. annotate_http.py runs this at 100 clients with both, by default, in the same run
as Tandem's closed loop, and takes each figure as the baseline at the same policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
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

VERSION = "1.23.0"
PROJECT = "Tandem HTTP load benchmark"
ORGANIZATION = "Tandem benchmark"
OWNER = "owner@tandem-bench.local"
ANNOTATOR = "load-{}@tandem-bench.local"
ISSUE_PER_S = {10: 15.5, 100: 11.7}  # Label Studio 1.23 in issue #9, same 2 cores, Postgres + uWSGI
LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="comparison" toName="answer1,answer2"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
</View>"""
RESULT = [
    {"from_name": "comparison", "to_name": "comparison", "type": "pairwise", "value": {"selected": "left"}}
]
ANSWER = "Recursion is when a function calls itself.\n\n```python\ndef f(n):\n    return 1 if n < 2 else n * f(n - 1)\n```"


# --- setting Label Studio up -------------------------------------------------------------


def _installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    found = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('label-studio'))"],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def _ensure_label_studio(venv: Path, lock: str, server: str) -> str:
    """Label Studio in its own virtualenv, and the server to run it with: "uwsgi" or "gunicorn"."""
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if _installed_version(venv) != VERSION:
        print(
            f"installing label-studio=={VERSION} into {venv} (a few minutes) ...", file=sys.stderr, flush=True
        )
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        with bench_lock(lock, "pip"):
            subprocess.run(pip + [f"label-studio=={VERSION}"], check=True)
    if server != "gunicorn":
        if (venv / "bin" / "uwsgi").exists():
            return "uwsgi"
        with bench_lock(lock, "pip"):
            if subprocess.run(pip + ["uwsgi"]).returncode == 0:  # builds from source: needs a C compiler
                return "uwsgi"
        if server == "uwsgi":
            sys.exit("uWSGI did not build here (try --server gunicorn)")
        print("uWSGI did not build here: falling back to gunicorn", file=sys.stderr, flush=True)
    if not (venv / "bin" / "gunicorn").exists():
        with bench_lock(lock, "pip"):
            subprocess.run(pip + ["gunicorn"], check=True)
    return "gunicorn"


def _package_dir(venv: Path) -> Path:
    """Label Studio's Django project (manage.py, core/), which it expects on sys.path."""
    found = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import label_studio, os; print(os.path.dirname(label_studio.__file__))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(found.stdout.strip())


# Label Studio opens a database connection per request (Django's CONN_MAX_AGE 0, and no
# setting changes it). For a run with persistent connections, as Tandem's, its production
# settings module is copied with these lines added (a copy, not a module importing it: the
# settings module is read by Sentry's set-up while it is still being imported).
PERSISTENT_CONNECTIONS = """

# Added by Tandem's benchmark: each process keeps its database connection for 60 s.
DATABASES["default"]["CONN_MAX_AGE"] = 60
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
"""


def _with_connections(env: dict, connections: str, package_dir: Path, data_dir: Path) -> dict:
    """``env`` for a run with ``connections``: "per-request" (as shipped) or "persistent"."""
    if connections == "per-request":
        return env
    shipped = package_dir / "core" / "settings" / "label_studio.py"
    module = data_dir / "tandem_bench_persistent_connections.py"
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text(shipped.read_text() + PERSISTENT_CONNECTIONS)
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": module.stem,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(data_dir), env.get("PYTHONPATH")])),
    }


TANDEM_ONLY = {"ALLOWED_HOSTS", "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "STATIC_ROOT", "LOG_LEVEL"}


def _label_studio_env(database_url: str, package_dir: Path, data_dir: Path) -> dict:
    from urllib.parse import urlsplit

    url = urlsplit(database_url)
    # Not what annotate_http.py set for Tandem in this process (ALLOWED_HOSTS, SECRET_KEY, ...).
    inherited = {k: v for k, v in os.environ.items() if k not in TANDEM_ONLY}
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",  # as its Docker image sets
        "DJANGO_DB": "default",  # PostgreSQL, from the POSTGRE_* variables
        "POSTGRE_NAME": url.path.lstrip("/"),
        "POSTGRE_USER": url.username or "postgres",
        "POSTGRE_PASSWORD": url.password or "",
        "POSTGRE_HOST": url.hostname or "127.0.0.1",
        "POSTGRE_PORT": str(url.port or 5432),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "SENTRY_DSN": "",  # on by default, but there is no internet to report to here
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",  # asks pypi.org at startup otherwise
        "PYTHONWARNINGS": "ignore",  # google.api_core on 3.11, queries in AppConfig.ready()
    }


def _migrate(venv: Path, package_dir: Path, env: dict, lock: str) -> None:
    with bench_lock(lock, "migrate"):
        subprocess.run(
            [venv / "bin" / "python", "manage.py", "migrate", "-v", "0"], cwd=package_dir, env=env, check=True
        )


def _seed(venv: Path, package_dir: Path, env: dict, lock: str, tasks: int, users: int, overlap: int) -> dict:
    """Run _seed_inside in Label Studio's interpreter: {"project": id, "tokens": [...]}."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out, bench_lock(lock, "seed"):
        spec = json.dumps({"tasks": tasks, "users": users, "overlap": overlap, "out": out.name})
        subprocess.run(
            [venv / "bin" / "python", __file__, "--seed-inside-label-studio", spec],
            cwd=package_dir,
            env=env,
            check=True,
        )
        return json.loads(Path(out.name).read_text())


def _seed_inside(spec: dict) -> None:
    """In Label Studio's virtualenv: a fresh pairwise project, its tasks, annotators with tokens."""
    from datetime import timedelta

    import django

    sys.path.insert(0, os.getcwd())  # Label Studio's Django project, as manage.py would have it
    django.setup()
    from django.test import Client
    from jwt_auth.models import LSAPIToken
    from organizations.functions import create_organization
    from organizations.models import Organization
    from projects.models import Project
    from users.models import User

    def account(email, org=None):
        # No password: nobody logs in with it, and hashing 100 of them would cost half a minute.
        user = User.objects.filter(email=email).first() or User.objects.create_user(email=email)
        if org is not None and user.active_organization_id != org.id:
            org.add_user(user)
            user.active_organization = org
            user.save(update_fields=["active_organization"])
        return user

    def bearer(user):
        # A personal access token is a JWT refresh token; requests carry an access token
        # derived from it (what the SDK gets from /api/token/refresh), here good for 12 h.
        access = LSAPIToken.for_user(user).access_token
        access.set_exp(lifetime=timedelta(hours=12))
        return f"Bearer {access}"

    owner = account(OWNER)
    org = Organization.objects.filter(title=ORGANIZATION).first() or create_organization(ORGANIZATION, owner)
    account(OWNER, org)
    annotators = [account(ANNOTATOR.format(i), org) for i in range(spec["users"])]
    Project.objects.filter(organization=org, title=PROJECT).delete()

    api = Client(HTTP_AUTHORIZATION=bearer(owner))  # its own API, in process: no server needed yet
    answer = api.post(
        "/api/projects/",
        {"title": PROJECT, "label_config": LABEL_CONFIG, "maximum_annotations": spec["overlap"]},
        content_type="application/json",
    )
    assert answer.status_code == 201, answer.content[:500]
    project = answer.json()["id"]
    tasks = [
        {
            "prompt": f"Question {i}: explain *recursion*.",
            "answer1": f"{ANSWER}\n\nVariant {i}.0.",
            "answer2": f"{ANSWER}\n\nVariant {i}.1.",
        }
        for i in range(spec["tasks"])
    ]
    answer = api.post(f"/api/projects/{project}/import", tasks, content_type="application/json")
    assert answer.status_code == 201 and answer.json()["task_count"] == len(tasks), answer.content[:500]
    Path(spec["out"]).write_text(json.dumps({"project": project, "tokens": [bearer(u) for u in annotators]}))


def _server_command(
    server: str, venv: Path, package_dir: Path, port: int, processes: int, threads: int
) -> list:
    if server == "gunicorn":
        return [venv / "bin" / "gunicorn", "core.wsgi:application", "--chdir", package_dir,
                "-b", f"127.0.0.1:{port}", "-w", str(processes), "--threads", str(threads),
                "--backlog", "2048", "--log-level", "warning"]  # fmt: skip
    # The options of its deploy/uwsgi.ini (Docker image), bound to localhost; no stats server.
    return [
        venv / "bin" / "uwsgi", "--http", f"127.0.0.1:{port}",
        "--chdir", package_dir, "--module", "core.wsgi:application",
        "--master", "--single-interpreter", "--processes", str(processes), "--threads", str(threads),
        "--vacuum", "--die-on-term", "--buffer-size", "65535", "--http-timeout", "300",
        "--auto-procname", "--procname-prefix", "ls-bench-", "--need-app", "--env", "APP_WEBSERVER=uwsgi",
        "--ignore-sigpipe", "--ignore-write-errors", "--disable-write-exception",
        "--harakiri", "120", "--post-buffering", "4096", "--disable-logging", "--log-5xx",
        "--enable-threads", "--thunder-lock", "--lazy-apps",
        "--max-requests", "5000", "--reload-on-rss", "2048", "--worker-reload-mercy", "300",
    ]  # fmt: skip


def _start(cmd: list, package_dir: Path, env: dict, log: Path) -> subprocess.Popen:
    # Its own session: the whole tree (master, workers, HTTP router) is stopped as one group.
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, cwd=package_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the master, which stops its workers; SIGKILL to whatever of its group is left."""
    process.terminate()  # not to the whole group: a uWSGI worker takes SIGTERM as "reload gracefully"
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# --- the client --------------------------------------------------------------------------


@dataclass
class Tally:
    cycles: list[float] = field(default_factory=list)  # next + submit, for every answered submit
    submits: list[float] = field(default_factory=list)
    accepted: int = 0
    requests: int = 0  # every request sent: next and submit
    exhausted: int = 0  # clients the labeling stream had nothing more for
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _request(port: int, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
    headers = f"Authorization: {token}\r\nAccept: application/json\r\n"
    return await http_request(port, method, path, headers, body, "application/json")


async def _annotator(port: int, project: int, token: str, stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            tally.requests += 1
            status, answer = await _request(port, "GET", f"/api/projects/{project}/next", token)
            if status == 404:
                tally.exhausted += 1
                return  # the labeling stream has nothing left for this annotator
            if status != 200:
                tally.error(f"next {status}")
                continue
            task = json.loads(answer)["id"]
            body = json.dumps({"result": RESULT, "lead_time": 1.5, "project": project}).encode()
            submitted = time.monotonic()
            tally.requests += 1
            status, _ = await _request(
                port, "POST", f"/api/tasks/{task}/annotations/?project={project}", token, body
            )
        except (OSError, ValueError, IndexError) as exc:  # refused, reset, or an unreadable answer
            tally.error(type(exc).__name__)
            await asyncio.sleep(0.05)
            continue
        done = time.monotonic()
        tally.cycles.append(done - started)
        tally.submits.append(done - submitted)
        if status == 201:
            tally.accepted += 1
        else:
            tally.error(f"submit {status}")


async def _drive(
    port: int, project: int, tokens: list[str], seconds: float, database_url: str
) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    stop_at = started + seconds
    spread = 1.0 / len(tokens)  # clients arrive over the first second, not all in one instant

    async def arrive(i, token):
        await asyncio.sleep(i * spread)
        await _annotator(port, project, token, stop_at, tally)

    async def analyze_once_tables_have_grown():
        # As annotate_http.py does for Tandem: statistics for the tables the run fills.
        await asyncio.sleep(min(5.0, seconds / 4))
        await asyncio.to_thread(_analyze, database_url)

    await asyncio.gather(analyze_once_tables_have_grown(), *(arrive(i, t) for i, t in enumerate(tokens)))
    return tally, time.monotonic() - started


# --- the database ------------------------------------------------------------------------


def _analyze(database_url: str, *, vacuum: bool = False) -> None:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE" if vacuum else "ANALYZE")


def _check_database(database_url: str, project: int, tally: Tally, overlap: int) -> list[str]:
    """What is wrong in the database given what the clients saw (empty when all is well)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        (stored,) = conn.execute(
            "SELECT count(*) FROM task_completion WHERE project_id = %s", [project]
        ).fetchone()
        (twice,) = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM task_completion WHERE project_id = %s"
            " GROUP BY task_id, completed_by_id HAVING count(*) > 1) AS t",
            [project],
        ).fetchone()
        (over,) = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM task_completion WHERE project_id = %s"
            " GROUP BY task_id HAVING count(*) > %s) AS t",
            [project, overlap],
        ).fetchone()
    problems = []
    if stored != tally.accepted:
        problems.append(f"{stored} annotations stored for {tally.accepted} accepted")
    if twice:
        problems.append(f"{twice} tasks annotated twice by the same annotator")
    if over:
        problems.append(f"{over} tasks over their {overlap} annotations")
    return problems


async def _warm_up(port: int, token: str, processes: int) -> None:
    """Every worker has served a request (lazy apps: each loads Label Studio after the fork)."""
    for _ in range(3):
        await asyncio.gather(*(_request(port, "GET", "/api/version/", token) for _ in range(2 * processes)))


# --- the run -----------------------------------------------------------------------------


def _run(
    args, server_kind: str, venv: Path, package_dir: Path, env: dict, clients: int, connections: str
) -> dict:
    print(f"seeding {args.tasks} tasks and {clients} annotators ...", file=sys.stderr, flush=True)
    seeded = _seed(venv, package_dir, env, args.lock, args.tasks, clients, args.overlap)
    project, tokens = seeded["project"], seeded["tokens"]
    # As annotate_http.py does for Tandem after seeding: the last run's deleted project gone, statistics fresh.
    _analyze(args.database_url, vacuum=True)
    cmd = _server_command(server_kind, venv, package_dir, args.port, args.processes, args.threads)
    with bench_lock(args.lock, f"load {clients} clients"):
        print(f"starting {server_kind} (its log: {args.log}) ...", file=sys.stderr, flush=True)
        server = _start(cmd, package_dir, env, args.log)
        try:
            wait_until_up(f"http://127.0.0.1:{args.port}/health/", "Label Studio", server=server, timeout=120)
            asyncio.run(_warm_up(args.port, tokens[0], args.processes))
            postgres = postgres_pid(args.database_url)
            web_before, db_before = tree_cpu_seconds(server.pid), tree_cpu_seconds(postgres)
            busy_before, client_before = machine_busy_seconds(), time.process_time()
            print(
                f"driving it with {clients} clients for {args.seconds:.0f} s ...", file=sys.stderr, flush=True
            )
            tally, elapsed = asyncio.run(_drive(args.port, project, tokens, args.seconds, args.database_url))
            cpu = {
                "web": tree_cpu_seconds(server.pid) - web_before,
                "database": tree_cpu_seconds(postgres) - db_before,
                "client": time.process_time() - client_before,
            }
            # Whatever else ran meanwhile (the lock only keeps out those who take it).
            cpu["other"] = max(0.0, machine_busy_seconds() - busy_before - sum(cpu.values()))
        finally:
            _stop(server)
    return {
        "clients": clients,
        "connections": connections,
        "tally": tally,
        "elapsed": elapsed,
        "cpu": cpu,
        "problems": _check_database(args.database_url, project, tally, args.overlap),
    }


def report(args, server_kind: str, rows: list[dict]) -> None:
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''} each"
    why = "--server gunicorn" if args.server == "gunicorn" else "NOT its uWSGI: uWSGI did not build here"
    how = {
        "uwsgi": f"uWSGI (its deploy/uwsgi.ini: master, HTTP router) {args.processes} processes, {threads}",
        "gunicorn": f"gunicorn ({why}) {args.processes} workers, {threads}",
    }[server_kind]
    print(
        f"\nLabel Studio {VERSION}, {how}, production settings, PostgreSQL; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; {args.seconds:.0f} s per run; a new HTTP connection per request"
    )
    print(
        f"{'clients':>7} {'db connections':<14} {'accepted':>8} {'per s':>6} {'req/s':>6}   "
        f"{'next+submit p50/p95/p99 ms':>26}   "
        f"{'submit p50/p95/p99 ms':>21} {'errors':>7}  database"
    )
    for row in rows:
        tally, n = row["tally"], row["tally"].accepted
        requests = tally.requests  # two per annotation (next, submit), and the failed ones
        cycle = "/".join(f"{percentile_ms(tally.cycles, q):.0f}" for q in (0.5, 0.95, 0.99))
        submit = "/".join(f"{percentile_ms(tally.submits, q):.0f}" for q in (0.5, 0.95, 0.99))
        check = "; ".join(row["problems"]) or "every accepted annotation stored once"
        print(
            f"{row['clients']:>7} {row['connections']:<14} {n:>8} {n / row['elapsed']:>6.1f} "
            f"{requests / row['elapsed']:>6.1f}   "
            f"{cycle:>26}   {submit:>21} "
            f"{100 * sum(tally.errors.values()) / max(1, requests):>6.2f}%  {check}"
        )
        if tally.errors:
            print(f"        errors: {tally.errors}")
        if tally.exhausted:
            print(f"        {tally.exhausted} clients ran out of tasks: raise --tasks")
        if n:
            parts = ", ".join(f"{part} {1000 * seconds / n:.1f}" for part, seconds in row["cpu"].items())
            print(f"        CPU per annotation (ms): {parts}")
        other = row["cpu"]["other"] / (row["elapsed"] * (os.cpu_count() or 1))
        if other > 0.05:
            print(f"        WARNING: other processes took {100 * other:.0f}% of the CPUs during this run")
        if row["clients"] in ISSUE_PER_S and row["connections"] == "per-request":
            print(
                f"        issue #9 measured {ISSUE_PER_S[row['clients']]}/s at {row['clients']} clients; "
                f"10x this run: {10 * n / row['elapsed']:.0f}/s"
            )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[100], help="one run per count, in order")
    parser.add_argument("--seconds", type=float, default=30, help="how long each run drives the server")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/tandem-bench/label-studio"))
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--server", choices=["auto", "uwsgi", "gunicorn"], default="auto", help="auto: uWSGI if it builds"
    )
    # deploy/uwsgi.ini: processes = 2 per core, threads = 1 (UWSGI_PROCESSES, UWSGI_NUMBER_OF_THREADS)
    parser.add_argument("--processes", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--connections",
        choices=["per-request", "persistent", "both"],
        default="per-request",
        help="database connections: per request (as Label Studio ships), kept 60 s per process "
        "(as Tandem does), or both",
    )
    # As many as annotate_http.py's comparisons: Label Studio slows down as a project grows.
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--overlap", type=int, default=3, help="annotations per task (maximum_annotations)")
    parser.add_argument("--lock", default=DEFAULT_LOCK, help="flock held around every CPU-heavy step")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "LABEL_STUDIO_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/label_studio_bench"
        ),
    )
    parser.add_argument("--seed-inside-label-studio", metavar="SPEC", help=argparse.SUPPRESS)
    return parser


def measure(args) -> tuple[str, list[dict]]:
    """Label Studio installed, migrated and driven once per ``args.clients``: (server kind, rows).

    annotate_http.py calls this for its baseline, in the same run as its own figures."""
    if not args.database_url.startswith("postgres"):
        sys.exit("--database-url must name a PostgreSQL database (it is created if missing).")
    venv = args.venv.resolve()
    server_kind = _ensure_label_studio(venv, args.lock, args.server)
    package_dir = _package_dir(venv)
    ensure_database(args.database_url)
    env_dir = venv.parent / "label-studio-data"
    env = _label_studio_env(args.database_url, package_dir, env_dir)
    args.log = venv.parent / "label-studio-server.log"
    print(f"migrating {args.database_url} ...", file=sys.stderr, flush=True)
    _migrate(venv, package_dir, env, args.lock)
    policies = ["per-request", "persistent"] if args.connections == "both" else [args.connections]
    return server_kind, [
        _run(
            args,
            server_kind,
            venv,
            package_dir,
            _with_connections(env, policy, package_dir, env_dir),
            clients,
            policy,
        )
        for clients in args.clients
        for policy in policies
    ]


def main() -> None:
    args = parser().parse_args()
    if args.seed_inside_label_studio:
        return _seed_inside(json.loads(args.seed_inside_label_studio))
    # A plain `kill` stops the servers too: the finally blocks run as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    server_kind, rows = measure(args)
    report(args, server_kind, rows)
    if any(row["problems"] for row in rows):
        sys.exit("FAILED: " + "; ".join(p for row in rows for p in row["problems"]))


if __name__ == "__main__":
    main()

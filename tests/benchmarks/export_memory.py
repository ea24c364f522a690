"""Export throughput and peak memory against the number of judgments (Postgres only).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tandem_exports_bench \
        .venv/bin/python tests/benchmarks/export_memory.py [--rows 100000 1000000]

For each size: creates that many judgments in Postgres server-side (INSERT ... SELECT
generate_series: ``--per-comparison`` annotators judge each pairwise comparison), then
exports them as TRL JSONL and as Parquet, each in a fresh subprocess that reports its
own peak resident memory (``getrusage``) and rows/s. Peak memory must not grow with the
row count: the last table prints each size's peak against the smallest size's, so the
default measures two sizes ten times apart. Holds the bench lock (``--lock``).
The database named in DATABASE_URL is created if missing and its benchmark projects
are replaced on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.benchmarks.bench_lock import DEFAULT_LOCK, bench_lock  # noqa: E402
from tests.benchmarks.http_load import ensure_database  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup() -> None:
    import secrets

    import django

    # Production settings (DEBUG off, as DATABASE_URL names a server): no query log grows in memory.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))

    django.setup()


def _drop_project(name: str) -> None:
    """Delete a benchmark project child tables first (responses protect their checkpoints)."""
    from annotation.models import Comparison, ComparisonItem, Judgment, Project, Response
    from training.models import Checkpoint, Export

    project = Project.objects.filter(name=name).first()
    if project is None:
        return
    Judgment.objects.filter(comparison__prompt__project=project).delete()
    ComparisonItem.objects.filter(comparison__prompt__project=project).delete()
    Comparison.objects.filter(prompt__project=project).delete()
    Response.objects.filter(prompt__project=project).delete()
    Export.objects.filter(project=project).delete()
    Checkpoint.objects.filter(project=project).delete()
    project.delete()


def create_judgments(n: int, per_comparison: int) -> int:
    """A project with ``n`` judgments on ``n / per_comparison`` pairwise comparisons; returns its id."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotation.models import Project, Round
    from training.models import Checkpoint

    name = f"bench-{n}"
    _drop_project(name)
    comparisons = n // per_comparison
    user_model = get_user_model()
    users = [
        user_model.objects.get_or_create(username=f"bench-annotator-{i}")[0].pk for i in range(per_comparison)
    ]
    with transaction.atomic():
        project = Project.objects.create(name=name, overlap=per_comparison)
        round = Round.objects.create(project=project, number=1, status=Round.Status.OPEN)
        checkpoint = Checkpoint.objects.create(project=project, version=1, uri="/nonexistent", origin="base")
        with connection.cursor() as cur:
            cur.execute(
                """
                INSERT INTO annotation_prompt (project_id, conversation, source, split, tags, created_at)
                SELECT %s, jsonb_build_array(jsonb_build_object(
                           'role', 'user', 'content', 'Question number ' || g || ': how do I keep a basil plant alive?')),
                       'bench', 'train', '[]'::jsonb, now()
                FROM generate_series(1, %s) g
                """,
                [project.pk, comparisons],
            )
            cur.execute(
                """
                INSERT INTO annotation_response
                    (prompt_id, round_id, checkpoint_id, sample_index, text, generation_params, finish_reason, created_at)
                SELECT p.id, %s, %s, i, 'Answer ' || i || ' to prompt ' || p.id || ': ' || repeat('water it when the soil is dry, ', 8),
                       '{}'::jsonb, 'eos', now()
                FROM annotation_prompt p CROSS JOIN generate_series(0, 1) i
                WHERE p.project_id = %s
                """,
                [round.pk, checkpoint.pk, project.pk],
            )
            cur.execute(
                """
                INSERT INTO annotation_comparison (round_id, prompt_id, source, is_gold, judgment_count, created_at)
                SELECT %s, p.id, 'generated', false, %s, now() FROM annotation_prompt p WHERE p.project_id = %s
                """,
                [round.pk, per_comparison, project.pk],
            )
            cur.execute(
                """
                INSERT INTO annotation_comparisonitem (comparison_id, response_id, position)
                SELECT c.id, r.id, r.sample_index
                FROM annotation_comparison c JOIN annotation_response r ON r.prompt_id = c.prompt_id
                WHERE c.round_id = %s
                """,
                [round.pk],
            )
            cur.execute(
                """
                INSERT INTO annotation_judgment
                    (comparison_id, annotator_id, source, ranking, strength, is_tie, both_bad, rationale,
                     criteria, order_shown, time_spent_ms, created_at, updated_at)
                SELECT c.id, u.id, 'human',
                       CASE WHEN x < 0.75 THEN jsonb_build_array(jsonb_build_array(a.response_id), jsonb_build_array(b.response_id))
                            ELSE jsonb_build_array(jsonb_build_array(b.response_id), jsonb_build_array(a.response_id)) END,
                       CASE WHEN x < 0.4 THEN 'much' ELSE 'slight' END, false, false, 'clearer', '{}'::jsonb,
                       jsonb_build_array(a.response_id, b.response_id), 5000, now(), now()
                FROM annotation_comparison c
                JOIN annotation_comparisonitem a ON a.comparison_id = c.id AND a.position = 0
                JOIN annotation_comparisonitem b ON b.comparison_id = c.id AND b.position = 1
                CROSS JOIN (SELECT unnest(%s::bigint[]) AS id) u
                CROSS JOIN LATERAL (SELECT random() + 0 * c.id + 0 * u.id AS x) r
                WHERE c.round_id = %s
                """,
                [users, round.pk],
            )
        cur = connection.cursor()
        cur.execute("ANALYZE")
    return project.pk


def run_child(export_id: int) -> None:
    """In a fresh process: build one export and print its figures as JSON."""
    _setup()
    from training.exports import export_run
    from training.models import Export

    export = Export.objects.select_related("project").get(pk=export_id)
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    export = export_run(export)
    seconds = time.perf_counter() - start
    if export.status != Export.Status.SUCCEEDED:
        raise SystemExit(f"export failed: {export.error}")
    size = Path(export.uri).stat().st_size
    Path(export.uri).unlink()
    print(
        json.dumps(
            {
                "rows": export.rows,
                "judgments": export.progress_total,
                "seconds": seconds,
                "peak_rss_mb": _peak_rss_mb(),
                "rss_after_imports_mb": rss_before,
                "zip_mb": size / 2**20,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="Judgment counts to compare."
    )
    parser.add_argument("--per-comparison", type=int, default=5, help="Judgments per comparison.")
    parser.add_argument("--formats", default="trl_jsonl,parquet")
    parser.add_argument("--lock", default=DEFAULT_LOCK, help="flock held while it measures")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("Set DATABASE_URL to a Postgres database (it is created if missing).")
    if args.child:
        run_child(args.child)
        return

    ensure_database(url)
    artifacts = tempfile.mkdtemp(prefix="tandem-export-bench-")
    os.environ["ARTIFACTS_DIR"] = artifacts
    _setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if len(args.rows) < 2:
        print("one size only: nothing shows whether memory grows with the row count", flush=True)
    with bench_lock(args.lock, "export"):
        results = measure(args)
    report(args, results)


def measure(args) -> list[dict]:
    from training.models import Export

    results = []
    for n in args.rows:
        start = time.perf_counter()
        project_id = create_judgments(n, args.per_comparison)
        print(f"{n:>9,} judgments created in {time.perf_counter() - start:.1f} s", flush=True)
        for fmt in args.formats.split(","):
            export = Export.objects.create(project_id=project_id, format=fmt)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(export.pk)],
                check=True,
                capture_output=True,
                text=True,
                env=os.environ,
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            figures.update(size=n, format=fmt)
            results.append(figures)
            print(
                f"  {fmt:<10} {figures['rows']:>9,} pairs from {figures['judgments']:,} judgments "
                f"in {figures['seconds']:.1f} s = {figures['judgments'] / figures['seconds']:,.0f} judgments/s; "
                f"peak RSS {figures['peak_rss_mb']:.0f} MiB (after imports {figures['rss_after_imports_mb']:.0f}), "
                f"zip {figures['zip_mb']:.0f} MiB",
                flush=True,
            )
    return results


def report(args, results: list[dict]) -> None:
    smallest = min(args.rows)
    print("\npeak RSS relative to the smallest size (flat memory means about 1.0):")
    for fmt in args.formats.split(","):
        base = next(r for r in results if r["format"] == fmt and r["size"] == smallest)
        for r in (r for r in results if r["format"] == fmt):
            print(
                f"  {fmt:<10} {r['size']:>9,}: {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x "
                f"(growth above imports {r['peak_rss_mb'] - r['rss_after_imports_mb']:.0f} MiB)"
            )


if __name__ == "__main__":
    main()

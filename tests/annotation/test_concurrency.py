"""Many annotators at once against Postgres: overlap is met exactly, nobody judges twice, nothing lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from django.db import connection, connections

from annotation.judgments import Answer, judgment_submit
from annotation.leases import comparison_next_for, progress_for
from annotation.models import Comparison, Judgment, Lease
from tests.factories import make_annotators, make_project, make_round
from tests.services import service_missing

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

THREADS = 24
COMPARISONS = 50
OVERLAP = 3


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        service_missing("needs Postgres (SELECT ... FOR UPDATE SKIP LOCKED); CI sets DATABASE_URL")


def test_it_fills_every_comparison_to_its_overlap_under_concurrency(postgres_only):
    project = make_project("Crowd", overlap=OVERLAP, max_open_leases=1)
    round = make_round(project, COMPARISONS)
    annotators = make_annotators(THREADS)
    submitted: list[tuple[int, int, uuid.UUID]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def work(user):
        try:
            start.wait()
            while True:
                lease = comparison_next_for(user, round)
                if lease is None:
                    # Nothing claimable right now; finished only when nothing is left for me
                    # (items others hold come back if they give up; here they all submit).
                    if progress_for(user, round).remaining == 0:
                        return
                    time.sleep(0.005)
                    continue
                client_id = uuid.uuid4()
                a, b = lease.order
                judgment_submit(
                    annotator=user,
                    comparison=lease.comparison,
                    answer=Answer(ranking=[[a], [b]], strength="slight"),
                    client_id=client_id,
                    order_shown=lease.order,
                )
                with lock:
                    submitted.append((user.pk, lease.comparison_id, client_id))
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(user,)) for user in annotators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []

    judgments = list(
        Judgment.objects.filter(comparison__round=round).values_list(
            "annotator_id", "comparison_id", "client_id"
        )
    )
    per_comparison = Counter(cid for _, cid, _ in judgments)
    assert len(per_comparison) == COMPARISONS and set(per_comparison.values()) == {OVERLAP}
    assert all(c.judgment_count == OVERLAP for c in Comparison.objects.filter(round=round))
    pairs = Counter((uid, cid) for uid, cid, _ in judgments)
    assert max(pairs.values()) == 1  # nobody judged a comparison twice
    assert sorted(submitted) == sorted(judgments)  # every submitted judgment is there, nothing extra
    assert len(submitted) == COMPARISONS * OVERLAP
    assert not Lease.objects.exists()
    assert len({uid for uid, _, _ in submitted}) > 1

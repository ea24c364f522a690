"""Judgments made through the product (``judgment_submit``, ``import_preferences``) for export tests."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from annotation.importers import import_preferences
from annotation.judgments import Answer, judgment_submit
from annotation.models import Comparison, Lease
from tests.factories import make_round

HH_RLHF = (
    Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "hh-rlhf-harmless-base-test.jsonl.gz"
)

IMPORTED_ROWS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "margin": 2.0},
]


def hand_out(user, comparison: Comparison, order: list[int]) -> Lease:
    """Lease ``comparison`` to ``user`` in ``order`` (response ids) as the annotator page would have:
    only what was handed out can be judged."""
    return Lease.objects.create(
        comparison=comparison, annotator=user, order=order, expires_at=timezone.now() + timedelta(minutes=10)
    )


def submit(user, comparison: Comparison, order: list[int], *, strength=None, tie=False, both_bad=False):
    """Rank the comparison's responses (``order`` lists positions, best first; tie ranks all as one group)."""
    ids = list(comparison.items.order_by("position").values_list("response_id", flat=True))
    ranking = [[ids[p] for p in order]] if tie else [[ids[p]] for p in order]
    answer = Answer(
        ranking=ranking,
        strength=strength,
        is_tie=tie,
        both_bad=both_bad,
        rationale="clearer and kinder",
        criteria={"helpfulness": 3},
    )
    hand_out(user, comparison, ids)
    return judgment_submit(
        annotator=user,
        comparison=comparison,
        answer=answer,
        client_id=uuid.uuid4(),
        order_shown=ids,
        time_spent_ms=4200,
    ).judgment


@pytest.fixture
def judged(project, annotator, other_annotator, tmp_path, settings):
    """A project with human judgments in two rounds and two imported pairs.

    Round 1 (pairwise): c0 judged by both annotators (agree: 0 much better), c1 by both
    (disagree, slight), c2 a tie by alice, c3 both bad by alice. Round 2 (K-wise, 3
    responses): one full ranking by alice. Expected pairs: 2 + 2 + 0 + 0 + 3 + 2 imported = 9.
    """
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    project.overlap = 2
    project.save()
    round1 = make_round(project, 4)
    c0, c1, c2, c3 = round1.comparisons.order_by("id")
    submit(annotator, c0, [0, 1], strength="much")
    submit(other_annotator, c0, [0, 1], strength="much")
    submit(annotator, c1, [0, 1], strength="slight")
    submit(other_annotator, c1, [1, 0], strength="slight")
    submit(annotator, c2, [0, 1], tie=True)
    submit(annotator, c3, [1, 0], both_bad=True)
    round2 = make_round(project, 1, k=3)
    submit(annotator, round2.comparisons.get(), [2, 0, 1])
    data = "".join(json.dumps(row) + "\n" for row in IMPORTED_ROWS).encode()
    result = import_preferences(project=project, file=io.BytesIO(data), filename="tiny.jsonl", name="tiny")
    assert result.imported == 2, result.summary
    return project


def unzip(path, dest: Path) -> Path:
    with zipfile.ZipFile(path) as zf:
        zf.extractall(dest)
    return dest

"""HH-RLHF in through the product's importer, out as a TRL export: the same pairs come back."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from annotation.importers import import_preferences
from tests.exports.conftest import HH_RLHF, unzip
from tests.services import needs
from training.exports import export_run
from training.models import Export
from training.snapshots import snapshot_build

pytestmark = [
    pytest.mark.django_db,
    needs(HH_RLHF.exists(), f"{HH_RLHF} is not there"),
]


def _norm(text: str) -> str:
    # The importer strips each turn (the format's separators); compare the words.
    return " ".join(text.split())


def test_hh_rlhf_comes_back_pair_for_pair(project, tmp_path, settings):
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    result = import_preferences(project=project, file=HH_RLHF, format="hh-rlhf", skip_bad=True)
    bad_lines = {line for line, _ in result.errors}
    assert result.imported + result.bad == 2312

    with gzip.open(HH_RLHF, "rt", encoding="utf-8") as fh:
        original = Counter(
            (_norm(row["chosen"]), _norm(row["rejected"]))
            for n, row in ((n, json.loads(line)) for n, line in enumerate(fh, 1))
            if n not in bad_lines
        )

    export = export_run(Export.objects.create(project=project, format=Export.Format.TRL_JSONL))
    assert export.status == Export.Status.SUCCEEDED, export.error
    assert export.rows == result.imported
    lines = (unzip(export.uri, tmp_path / "x") / "data/train.jsonl").read_text().splitlines()
    exported = Counter(
        (_norm(r["prompt"] + r["chosen"]), _norm(r["prompt"] + r["rejected"])) for r in map(json.loads, lines)
    )
    assert exported == original

    snapshot = snapshot_build(project=project)
    assert snapshot.pair_count == result.imported
    assert snapshot.options["loss_weighting"] == "per_pair"

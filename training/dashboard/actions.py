"""Writes the dashboard makes besides launching runs and publishing checkpoints: manage annotators."""

from __future__ import annotations

from django.db import transaction

from annotation.models import AnnotatorProfile


@transaction.atomic
def annotator_deactivate(*, user, exclude_from_snapshots: bool = True) -> None:
    """Stop an annotator signing in and, by default, leave their judgments out of future snapshots.

    Their existing judgments stay in the database (past snapshots are pinned by hash).
    """
    user.is_active = False
    user.save(update_fields=["is_active"])
    if exclude_from_snapshots:
        annotator_set_excluded(user=user, excluded=True)


def annotator_reactivate(*, user) -> None:
    user.is_active = True
    user.save(update_fields=["is_active"])


def annotator_set_excluded(*, user, excluded: bool) -> None:
    AnnotatorProfile.objects.update_or_create(user=user, defaults={"excluded_from_snapshots": excluded})

"""Annotators flag a comparison for the admins (broken, harmful, unanswerable)."""

from __future__ import annotations

from annotation.models import Comparison, Report


def comparison_report(*, annotator, comparison: Comparison, reason: str) -> Report:
    """Record a report; the item stays with the annotator, who can still judge or skip it."""
    return Report.objects.create(comparison=comparison, annotator=annotator, reason=reason.strip()[:2000])

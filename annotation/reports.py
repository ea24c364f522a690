"""Annotators flag a comparison for the admins (broken, harmful, unanswerable)."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from annotation.models import Comparison, Report

MAX_REASON = 2000


class ReportRefused(Exception):
    """The report was not recorded; the message says why."""


def comparison_report(*, annotator, comparison: Comparison, reason: str) -> tuple[Report, bool]:
    """Record a report on an item handed out to the annotator (held now, or judged or skipped
    before); (report, created).

    One open report per item and annotator: reporting again replaces the reason of the open
    one, so a double click or a script cannot pile reports on the admins. The item stays with
    the annotator, who can still judge or skip it.
    """
    handed_out = Comparison.objects.filter(
        Q(leases__annotator=annotator) | Q(judgments__annotator=annotator) | Q(skips__annotator=annotator),
        pk=comparison.pk,
    ).exists()
    if not handed_out:
        raise ReportRefused("You can report only items handed out to you.")
    with transaction.atomic():
        report, created = Report.objects.select_for_update().get_or_create(
            comparison=comparison,
            annotator=annotator,
            resolved_at=None,
            defaults={"reason": reason.strip()[:MAX_REASON]},
        )
        if not created:
            report.reason = reason.strip()[:MAX_REASON]
            report.save(update_fields=["reason"])
    return report, created

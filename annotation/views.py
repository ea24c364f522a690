"""The annotator's pages. Every URL works as a full page (plain form posts, no JavaScript);
with HTMX the same views answer with the ``#work`` partial, so a submit swaps in the
next comparison without a reload."""

from __future__ import annotations

import time
import uuid

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import leases
from annotation.forms import SAME, JudgmentForm, choice_keys, initial_from_judgment, letters, posted_order
from annotation.judgments import (
    EditRefused,
    SubmitRefused,
    judgment_submit,
    judgment_update,
    judgments_editable_by,
    progress_and_recent,
)
from annotation.models import Comparison, Judgment, Lease, Round
from annotation.rendering import markdown_to_safe_html
from annotation.reports import ReportRefused, comparison_report
from webapp.roles import ANNOTATOR, role_required

WORK_TEMPLATE = "annotation/work.html"
# Jinja2 (webapp/jinja2.py): drawn after every submit, where Django's engine cost a fifth of the CPU.
WORK_PARTIAL = "annotation/partials/work.jinja"


# --- access ---------------------------------------------------------------------------------


def _comparison_for(user, comparison_id: int, *, content: bool = True) -> Comparison:
    """A comparison of an open round of a project open to ``user``, with what the page shows; else 404.

    ``content=False`` leaves out the prompt and the responses (see ``leases.comparison_open_to``).
    """
    comparison = leases.comparison_open_to(user, comparison_id, content=content)
    if comparison is None:
        raise Http404("No such comparison in a round open to you.")
    return comparison


# --- pages ----------------------------------------------------------------------------------


@role_required(ANNOTATOR)
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    rounds = list(leases.rounds_open_to(request.user).order_by("project__name", "-number"))
    rows = [(r, leases.progress_for(request.user, r)) for r in rounds]
    first_open = next((r.pk for r, progress in rows if progress.remaining), None)
    preparing = list(leases.rounds_preparing_for(request.user).order_by("project__name", "number"))
    return render(
        request, "annotation/index.html", {"rows": rows, "first_open": first_open, "preparing": preparing}
    )


@role_required(ANNOTATOR)
@require_GET
def work(request: HttpRequest, round_id: int) -> HttpResponse:
    """The current comparison of a round: the annotator's live lease, or a newly claimed one."""
    round = get_object_or_404(leases.rounds_open_to(request.user), pk=round_id)
    return _render_next(request, round)


@role_required(ANNOTATOR)
@require_POST
def judge(request: HttpRequest, comparison_id: int) -> HttpResponse:
    # A saved judgment answers with the next comparison: this one's texts are read only to show it again.
    comparison = _comparison_for(request.user, comparison_id, content=False)
    project = comparison.round.project
    form = JudgmentForm(request.POST, project=project, response_ids=_response_ids(comparison))
    if not form.is_valid():
        return _render_comparison(request, leases.comparison_content(comparison), form=form)
    try:
        submitted = judgment_submit(
            annotator=request.user,
            comparison=comparison,
            answer=form.answer(),
            client_id=form.cleaned_data["client_id"],
            order_shown=form.cleaned_data["order"],
            time_spent_ms=form.time_spent(),
        )
    except SubmitRefused as refused:
        return _render_comparison(
            request, leases.comparison_content(comparison), form=form, refusal=refused.message
        )
    notice = "Saved." if submitted.created else "Already saved."
    return _after_action(request, comparison.round, notice)


@role_required(ANNOTATOR)
@require_POST
def skip(request: HttpRequest, comparison_id: int) -> HttpResponse:
    comparison = _comparison_for(request.user, comparison_id)
    leases.comparison_skip(
        annotator=request.user, comparison=comparison, reason=request.POST.get("reason", "")
    )
    return _after_action(request, comparison.round, "Skipped; it goes to someone else.")


@role_required(ANNOTATOR)
@require_POST
def report(request: HttpRequest, comparison_id: int) -> HttpResponse:
    comparison = _comparison_for(request.user, comparison_id)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        text, status = "Say briefly what is wrong with this item.", 200
    else:
        try:
            _report, created = comparison_report(annotator=request.user, comparison=comparison, reason=reason)
        except ReportRefused as refused:
            text, status = str(refused), 200
        else:
            text = "Reported to the admins, thank you." if created else "Your report on this item is updated."
            text, status = text + " You can still judge or skip this item.", 200
    if request.htmx:
        return render(request, "annotation/partials/report_status.html", {"text": text}, status=status)
    messages.info(request, text)
    return redirect("annotate-round", round_id=comparison.round_id)


@role_required(ANNOTATOR)
@require_POST
def extend(request: HttpRequest, comparison_id: int) -> HttpResponse:
    """Heartbeat from an active page: keep the lease alive (204), or say it is gone (409)."""
    comparison = _comparison_for(request.user, comparison_id, content=False)
    lease = leases.lease_extend(annotator=request.user, comparison=comparison)
    return HttpResponse(status=204 if lease else 409)


@role_required(ANNOTATOR)
@require_http_methods(["GET", "POST"])
def edit(request: HttpRequest, judgment_id: int) -> HttpResponse:
    """Reopen one of the annotator's recent judgments (only their own, only while the round is open)."""
    judgment = get_object_or_404(Judgment, pk=judgment_id, annotator=request.user)
    comparison = _comparison_for(request.user, judgment.comparison_id)
    project = comparison.round.project
    if request.method == "GET":
        form = JudgmentForm(project=project, response_ids=_response_ids(comparison))
        form.initial = initial_from_judgment(judgment, project)
        editable = judgment.pk in {j.pk for j in judgments_editable_by(request.user, comparison.round)}
        refusal = "" if editable else "Only your last few judgments in an open round can be edited."
        return _render_comparison(request, comparison, form=form, judgment=judgment, refusal=refusal)
    form = JudgmentForm(request.POST, project=project, response_ids=_response_ids(comparison))
    if form.is_valid() and form.cleaned_data["order"] == judgment.order_shown:
        try:
            judgment_update(judgment=judgment, answer=form.answer(), time_spent_ms=form.time_spent())
        except EditRefused as refused:
            return _render_comparison(request, comparison, form=form, judgment=judgment, refusal=str(refused))
        response = _after_action(request, comparison.round, "Your judgment was updated.")
        if request.htmx:  # back on the round's page: a reload must not reopen the edit
            response["HX-Push-Url"] = reverse("annotate-round", args=[comparison.round_id])
        return response
    return _render_comparison(request, comparison, form=form, judgment=judgment)


# --- rendering ------------------------------------------------------------------------------


def _after_action(request: HttpRequest, round: Round, notice: str) -> HttpResponse:
    if request.htmx:
        return _render_next(request, round, notice=notice)
    messages.success(request, notice)
    return redirect("annotate-round", round_id=round.pk)


def _render_next(request: HttpRequest, round: Round, *, notice: str = "") -> HttpResponse:
    context = {"round": round, "project": round.project, "notice": notice}
    try:
        lease = leases.comparison_next_for(request.user, round)
    except leases.LeaseCapReached as capped:
        lease, context["empty_reason"] = None, str(capped)
    if lease is None:
        context.update(_sidebar(request.user, round))
        return _render_work(request, context)
    return _render_comparison(request, lease.comparison, lease=lease, notice=notice)


def _response_ids(comparison: Comparison) -> list[int]:
    return [item.response_id for item in comparison.items.all()]


def _render_comparison(
    request: HttpRequest,
    comparison: Comparison,
    *,
    form: JudgmentForm | None = None,
    lease: Lease | None = None,
    judgment: Judgment | None = None,
    refusal: str = "",
    notice: str = "",
    status: int = 200,
) -> HttpResponse:
    round, project = comparison.round, comparison.round.project
    response_ids = _response_ids(comparison)
    posted = form is not None and form.is_bound
    if judgment is not None:
        order = judgment.order_shown
    else:
        order = posted_order(form.data if posted else None, response_ids)
        if order is None:
            lease = lease or leases.lease_for(request.user, comparison)
            order = lease.order if lease and sorted(lease.order) == sorted(response_ids) else response_ids
    # What the inputs show: what was posted, a judgment being edited, else nothing chosen yet.
    values = form.data if posted else form.initial if form is not None else {}
    by_id = {item.response_id: item.response for item in comparison.items.all()}
    names = letters(len(order))
    items = [
        {
            "letter": names[i],
            "id": rid,
            "html": by_id[rid].safe_html(),
            "rank": str(values.get(f"rank_{rid}") or ""),
        }
        for i, rid in enumerate(order)
    ]
    choices = [
        {"value": v, "label": label, "key": key, "checked": values.get("choice") == v}
        for v, label, key in choice_keys(project)
    ]
    criteria = [
        {
            "index": i,
            "name": name,
            "options": [{"value": c, "label": c, "checked": values.get(f"crit_{i}") == c} for c in names]
            + [{"value": SAME, "label": "Same", "checked": values.get(f"crit_{i}") == SAME}],
        }
        for i, name in enumerate(project.criteria or [])
    ]
    turns = [
        {"role": turn.get("role", "user"), "html": markdown_to_safe_html(str(turn.get("content", "")))}
        for turn in comparison.prompt.conversation
        if isinstance(turn, dict)
    ]
    client_id = (values.get("client_id") if posted else None) or str(uuid.uuid4())
    context = {
        "round": round,
        "project": project,
        "comparison": comparison,
        "pairwise": len(order) == 2,
        "items": items,
        "ranks": range(1, len(order) + 1),
        "order_csv": ",".join(map(str, order)),
        "choices": choices,
        "criteria": criteria,
        "turns": turns,
        "form": form,
        "both_bad": str(values.get("both_bad", "")).lower() in {"on", "true", "1"},
        "rationale": values.get("rationale", ""),
        "client_id": client_id,
        "shown_at": int(time.time() * 1000),
        "judgment": judgment,
        "action": reverse("annotate-edit", args=[judgment.pk])
        if judgment
        else reverse("annotate-judge", args=[comparison.pk]),
        "refusal": refusal,
        "notice": notice,
        "lease": lease,
    }
    context.update(_sidebar(request.user, round))
    return _render_work(request, context, status=status)


def _sidebar(user, round: Round) -> dict:
    progress, recent = progress_and_recent(user, round)
    total = progress.done_in_round + progress.remaining
    return {
        "progress": progress,
        "progress_pct": int(100 * progress.done_in_round / total) if total else 100,
        "recent": recent,
    }


def _render_work(request: HttpRequest, context: dict, status: int = 200) -> HttpResponse:
    context["guidelines_html"] = markdown_to_safe_html(context["project"].guidelines)
    work = render_to_string(WORK_PARTIAL, context, request, using="jinja2")
    if request.htmx and not request.htmx.boosted:
        return HttpResponse(work, status=status)
    return render(request, WORK_TEMPLATE, {**context, "work": mark_safe(work)}, status=status)  # noqa: S308 - autoescaped by Jinja2

"""Dashboard views: short, admin-only; the work lives in services (launch, runs, actions, data modules).

Pages that change while you look (a run) render a partial when ``request.htmx`` is
set, so every URL also works as a full page.
"""

from __future__ import annotations

import json
from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from annotation.models import Project, Prompt, Response
from training import launch as launching
from training import quality
from training.checkpoints import checkpoint_publish, checkpoint_retire
from training.dashboard import actions
from training.dashboard.overview import project_summaries
from training.forms import LAUNCH_FORMS
from training.leaderboard_data import leaderboard_for
from training.models import Checkpoint, Metric, TrainingRun
from training.reward_models import run_reward_model
from training.run_kinds import BY_SLUG
from training.runs import QueueUnavailable, run_cancel, runs_reap_lost
from webapp.roles import ADMIN, role_required

admin_only = role_required(ADMIN)

LOG_LINES = 40
METRICS_PAGE = 5000
SAMPLE_PROMPTS = 12

# The dashboard's launch pages, by URL slug, in the order the project page lists them.
LAUNCH_TITLES = {slug: entry.title for slug, entry in BY_SLUG.items()}


# --- access helpers ---------------------------------------------------------------------------


def _project(project_id: int) -> Project:
    return get_object_or_404(Project, pk=project_id)


def _run(run_id: int) -> TrainingRun:
    return get_object_or_404(TrainingRun.objects.select_related("project", "created_by"), pk=run_id)


def _annotator(user_id: int):
    return get_object_or_404(get_user_model(), pk=user_id)


def _next_or(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next", "")
    # Only same-site paths: never bounce an admin to another host. A browser reads "/\\host"
    # as "//host", so a leading slash is not enough; Django's own check knows the tricks.
    same_site = target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if same_site else fallback


# --- overview and projects --------------------------------------------------------------------


@admin_only
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    runs_reap_lost()  # a run whose worker died shows as failed, not as running forever
    return render(request, "dashboard/overview.html", {"summaries": project_summaries()})


@admin_only
@require_GET
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project(project_id)
    ctx = {
        "project": project,
        "rounds": project.rounds.annotate(comparison_count=Count("comparisons"))[:10],
        "runs": project.runs.select_related("created_by")[:10],
        "checkpoints": project.checkpoints.select_related("produced_by")[:6],
        "prompt_count": project.prompts.count(),
        "launches": LAUNCH_TITLES,
    }
    return render(request, "dashboard/project.html", ctx)


# --- launching --------------------------------------------------------------------------------


def _start(slug: str, form, project: Project, user):
    config = form.config()
    if slug == "round":
        return launching.round_launch(
            project=project, checkpoints=form.cleaned_data["checkpoints"], config=config, created_by=user
        )
    return launching.run_start(kind=BY_SLUG[slug].kind, project=project, config=config, created_by=user)


def _errors_onto(form, exc: ValidationError) -> None:
    """A service's field errors shown next to the form's fields (or above the form)."""
    errors = exc.message_dict if hasattr(exc, "error_dict") else {None: exc.messages}
    for name, messages_ in errors.items():
        for message in messages_:
            form.add_error(name if name in form.fields else None, message)


@admin_only
def launch(request: HttpRequest, project_id: int, kind: str) -> HttpResponse:
    if kind not in LAUNCH_FORMS:
        raise Http404("No such launch.")
    project = _project(project_id)
    form_class = LAUNCH_FORMS[kind]
    problem = None
    if request.method == "POST":
        form = form_class(request.POST, project=project)
        if form.is_valid():
            try:
                started = _start(kind, form, project, request.user)
            except launching.QueueUnavailable:
                problem = (
                    "The queue cannot be reached, so nothing was started and nothing was saved. "
                    "Check that the broker and a worker are running, then launch again."
                )
            except launching.LaunchUnavailable as exc:
                problem = str(exc)
            except ValidationError as exc:
                _errors_onto(form, exc)
            else:
                if isinstance(started, TrainingRun):
                    messages.success(request, f"{started} is queued.")
                    return redirect("dashboard-run", run_id=started.pk)
                messages.success(request, f"{started} is being prepared.")
                return redirect("dashboard-project", project_id=project.pk)
    elif request.method == "GET":
        form = form_class(project=project)
    else:
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    ctx = {
        "project": project,
        "form": form,
        "kind": kind,
        "title": BY_SLUG[kind].title,
        "blurb": BY_SLUG[kind].blurb,
        "launches": LAUNCH_TITLES,
        "problem": problem,
    }
    status = 503 if problem else (400 if form.is_bound else 200)
    return render(request, "dashboard/launch.html", ctx, status=status)


# --- runs -------------------------------------------------------------------------------------


@admin_only
@require_GET
def runs(request: HttpRequest) -> HttpResponse:
    runs_reap_lost()
    queryset = TrainingRun.objects.select_related("project", "created_by")
    project = None
    if request.GET.get("project", "").isdigit():
        project = _project(int(request.GET["project"]))
        queryset = queryset.filter(project=project)
    status = request.GET.get("status", "")
    if status in TrainingRun.Status.values:
        queryset = queryset.filter(status=status)
    page = Paginator(queryset, 50).get_page(request.GET.get("page"))
    ctx = {"page": page, "project": project, "status": status, "statuses": TrainingRun.Status.choices}
    return render(request, "dashboard/runs.html", ctx)


def eta_of(run: TrainingRun, now=None) -> timedelta | None:
    """Time left, extrapolated from the pace so far; None before there is a pace to go on."""
    if run.status != TrainingRun.Status.RUNNING or not run.started_at:
        return None
    if not run.progress_done or not run.progress_total or run.progress_done >= run.progress_total:
        return None
    elapsed = ((now or timezone.now()) - run.started_at).total_seconds()
    if elapsed <= 0:
        return None
    return timedelta(seconds=elapsed * (run.progress_total - run.progress_done) / run.progress_done)


def human_duration(delta: timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{max(seconds, 1)} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


def _live_context(run: TrainingRun) -> dict:
    lines = run.log_tail.splitlines()[-LOG_LINES:]
    took = run.finished_at - run.started_at if run.finished_at and run.started_at else None
    return {
        "run": run,
        "eta": human_duration(eta_of(run)),
        "took": human_duration(took),
        "log_lines": lines,
        "poll": run.is_active,
    }


@admin_only
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    runs_reap_lost()  # polled every few seconds while the run is active: a dead worker shows up here
    run = _run(run_id)
    if request.htmx:
        # The polled part: status, progress, stage, log. Rendered without hx-trigger once
        # the run has ended, which stops the polling.
        return render(request, "dashboard/_run_live.html", _live_context(run))
    ctx = _live_context(run) | {
        "project": run.project,
        "config_json": json.dumps(run.config, indent=2, sort_keys=True),
        "metric_names": list(
            Metric.objects.filter(run=run).order_by("name").values_list("name", flat=True).distinct()
        ),
        "children": run.children.all(),
        "checkpoints_made": run.checkpoints.all(),
        "reward_model": run_reward_model(run),
    }
    return render(request, "dashboard/run.html", ctx)


@admin_only
@require_GET
def run_metrics(request: HttpRequest, run_id: int) -> JsonResponse:
    """Metric points of a run, oldest first, for the charts to append.

    ``?after=<cursor>`` returns only points written since the cursor of the previous
    answer (a metric row id, so a value logged late for an old step is not missed);
    ``?since=<step>`` returns points of later steps only.
    """
    run = get_object_or_404(TrainingRun.objects.only("pk", "status"), pk=run_id)
    points = Metric.objects.filter(run_id=run.pk).order_by("pk")
    after, since = request.GET.get("after", ""), request.GET.get("since", "")
    if after.isdigit():
        points = points.filter(pk__gt=int(after))
    if since.isdigit():
        points = points.filter(step__gt=int(since))
    rows = list(points.values_list("pk", "name", "step", "value")[: METRICS_PAGE + 1])
    more = len(rows) > METRICS_PAGE
    rows = rows[:METRICS_PAGE]
    series: dict[str, list[list[float]]] = {}
    for _pk, name, step, value in rows:
        series.setdefault(name, []).append([step, value])
    cursor = rows[-1][0] if rows else (int(after) if after.isdigit() else 0)
    return JsonResponse(
        {
            "run": run.pk,
            "status": run.status,
            "active": run.is_active,
            "cursor": cursor,
            "more": more,
            "last_step": max((r[2] for r in rows), default=None),
            "series": series,
        }
    )


@admin_only
@require_POST
def run_cancel_view(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run(run_id)
    if run.is_active:
        run_cancel(run)
        messages.success(request, f"Asked {run} to stop; it stops within seconds.")
    else:
        messages.info(request, f"{run} had already ended.")
    return redirect(_next_or(request, run_url(run)))


@admin_only
@require_POST
def run_retry_view(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run(run_id)
    if run.status not in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
        messages.info(request, "Only a failed or cancelled run can be retried.")
    else:
        try:
            launching.run_retry_launch(run)
        except launching.QueueUnavailable:
            messages.error(request, "The queue cannot be reached, so the run was not queued again.")
        else:
            messages.success(request, f"{run} is queued again.")
    return redirect(_next_or(request, run_url(run)))


def run_url(run: TrainingRun) -> str:
    from django.urls import reverse

    return reverse("dashboard-run", kwargs={"run_id": run.pk})


# --- checkpoints ------------------------------------------------------------------------------


def lineage(checkpoints: list[Checkpoint]) -> list[tuple[Checkpoint, int]]:
    """Checkpoints in tree order (each parent before its children) with their depth."""
    by_parent: dict[int | None, list[Checkpoint]] = {}
    ids = {c.pk for c in checkpoints}
    for c in sorted(checkpoints, key=lambda c: c.version):
        by_parent.setdefault(c.parent_id if c.parent_id in ids else None, []).append(c)
    ordered: list[tuple[Checkpoint, int]] = []
    stack = [(c, 0) for c in reversed(by_parent.get(None, []))]
    while stack:
        node, depth = stack.pop()
        ordered.append((node, depth))
        stack.extend((child, depth + 1) for child in reversed(by_parent.get(node.pk, [])))
    return ordered


@admin_only
@require_GET
def checkpoints(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project(project_id)
    rows = list(
        project.checkpoints.select_related("produced_by", "reward_model", "reward_model__run", "parent")
        .annotate(response_count=Count("responses"))
        .order_by("version")
    )
    return render(request, "dashboard/checkpoints.html", {"project": project, "tree": lineage(rows)})


@admin_only
@require_POST
def checkpoint_publish_view(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("project"), pk=checkpoint_id)
    try:
        publication = checkpoint_publish(checkpoint=checkpoint)
    except QueueUnavailable as exc:
        messages.error(request, f"{checkpoint} is published, but its comparison round was not opened: {exc}")
    else:
        if publication.round is not None:
            messages.success(
                request,
                f"{checkpoint} is published; round {publication.round.number} compares it with its parent.",
            )
        elif publication.published:
            messages.success(request, f"{checkpoint} is published: new rounds can compare it.")
            if publication.no_round_reason:
                messages.warning(request, f"No comparison round was opened: {publication.no_round_reason}")
    return redirect(_next_or(request, f"/dashboard/projects/{checkpoint.project_id}/checkpoints/"))


@admin_only
@require_POST
def checkpoint_retire_view(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("project"), pk=checkpoint_id)
    if checkpoint_retire(checkpoint=checkpoint):
        messages.success(request, f"{checkpoint} is retired: it stays on record but joins no new round.")
    return redirect(_next_or(request, f"/dashboard/projects/{checkpoint.project_id}/checkpoints/"))


@admin_only
@require_GET
def samples(request: HttpRequest, project_id: int) -> HttpResponse:
    """Responses of two checkpoints to the same prompts, side by side."""
    project = _project(project_id)
    choices = list(project.checkpoints.order_by("-version"))
    by_id = {c.pk: c for c in choices}

    def pick(name: str, default):
        value = request.GET.get(name, "")
        return by_id.get(int(value)) if value.isdigit() else default

    left = pick("a", choices[1] if len(choices) > 1 else (choices[0] if choices else None))
    right = pick("b", choices[0] if choices else None)
    rows = []
    if left and right:
        shared = (
            Prompt.objects.filter(project=project, responses__checkpoint=left)
            .filter(responses__checkpoint=right)
            .distinct()
            .order_by("-id")[:SAMPLE_PROMPTS]
        )
        prompts = list(
            Prompt.objects.filter(pk__in=[p.pk for p in shared])
            .prefetch_related(
                Prefetch(
                    "responses",
                    queryset=Response.objects.filter(checkpoint__in=[left, right]).order_by(
                        "sample_index", "id"
                    ),
                )
            )
            .order_by("-id")
        )
        for prompt in prompts:
            responses = list(prompt.responses.all())
            rows.append(
                (
                    prompt,
                    next((r for r in responses if r.checkpoint_id == left.pk), None),
                    next((r for r in responses if r.checkpoint_id == right.pk), None),
                )
            )
    ctx = {"project": project, "choices": choices, "left": left, "right": right, "rows": rows}
    return render(request, "dashboard/samples.html", ctx)


# --- leaderboard and annotators ---------------------------------------------------------------


@admin_only
@require_GET
def leaderboard(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project(project_id)
    board = leaderboard_for(project)
    return render(request, "dashboard/leaderboard.html", {"project": project, "board": board})


@admin_only
@require_GET
def annotators(request: HttpRequest, project_id: int) -> HttpResponse:
    project = _project(project_id)
    ctx = {
        "project": project,
        "rows": quality.annotator_quality(project),
        "rounds": quality.project_round_alphas(project),
    }
    return render(request, "dashboard/annotators.html", ctx)


@admin_only
@require_POST
def annotator_deactivate_view(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _annotator(user_id)
    if user == request.user:
        messages.error(request, "You cannot deactivate your own account.")
    else:
        actions.annotator_deactivate(
            user=user, exclude_from_snapshots=request.POST.get("exclude", "1") == "1"
        )
        messages.success(
            request,
            f"{user.get_username()} can no longer sign in; their judgments are left out of new snapshots.",
        )
    return redirect(_next_or(request, "/dashboard/"))


@admin_only
@require_POST
def annotator_reactivate_view(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _annotator(user_id)
    actions.annotator_reactivate(user=user)
    messages.success(request, f"{user.get_username()} can sign in again.")
    return redirect(_next_or(request, "/dashboard/"))


@admin_only
@require_POST
def annotator_exclusion_view(request: HttpRequest, user_id: int) -> HttpResponse:
    user = _annotator(user_id)
    excluded = request.POST.get("excluded") == "1"
    actions.annotator_set_excluded(user=user, excluded=excluded)
    verb = "left out of" if excluded else "included in"
    messages.success(request, f"{user.get_username()}'s judgments are {verb} new snapshots.")
    return redirect(_next_or(request, "/dashboard/"))

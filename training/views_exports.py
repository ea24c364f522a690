"""/exports/: researchers and admins build preference datasets and download them.

The list of exports is a partial: while an export runs, it polls itself over HTMX
(and stops once none is running), so the page also works without JavaScript.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from training.exports import export_create, export_file
from training.forms_exports import ExportForm
from training.models import Export
from training.runs import QueueUnavailable
from webapp.roles import ADMIN, RESEARCHER, role_required

researchers = role_required(RESEARCHER, ADMIN)
PAGE_SIZE = 25


def _exports_page(request: HttpRequest):
    exports = Export.objects.select_related("project").order_by("-created_at", "-id")
    return Paginator(exports, PAGE_SIZE).get_page(request.GET.get("page"))


@researchers
@require_http_methods(["GET", "POST"])
def exports_index(request: HttpRequest) -> HttpResponse:
    form = ExportForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            export = export_create(
                project=form.cleaned_data["project"],
                format=form.cleaned_data["format"],
                filters=form.filters(),
                licence=form.cleaned_data["licence"],
                created_by=request.user,
            )
        except QueueUnavailable as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Export #{export.pk} queued; it appears below when ready.")
        return redirect("exports")
    page = _exports_page(request)
    context = {"form": form, "page": page, "polling": any(e.status in _ACTIVE for e in page)}
    if request.htmx and request.method == "GET":
        return render(request, "exports/_list.html", context)
    return render(request, "exports/index.html", context, status=400 if form.errors else 200)


_ACTIVE = (Export.Status.QUEUED, Export.Status.RUNNING)


@researchers
@require_GET
def export_download(request: HttpRequest, export_id: int) -> FileResponse:
    path = export_file(get_object_or_404(Export, pk=export_id))
    if path is None:
        raise Http404("This export has no file to download.")
    return FileResponse(
        open(path, "rb"), as_attachment=True, filename=path.name, content_type="application/zip"
    )

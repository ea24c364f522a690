from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from webapp.roles import ADMIN, ANNOTATOR, RESEARCHER, roles_of


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send each person to where their work is."""
    roles = roles_of(request.user)
    for role, url_name in ((ADMIN, "dashboard"), (ANNOTATOR, "annotate"), (RESEARCHER, "exports")):
        if role in roles:
            try:
                return redirect(url_name)
            except Exception:  # that part of the site is not installed yet
                continue
    return render(request, "home.html", {"roles": sorted(roles)})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})

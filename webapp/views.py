from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from webapp.roles import ADMIN, ANNOTATOR, RESEARCHER, roles_of

# Where each role's work is, in order of precedence for people with several roles.
START_PAGES = ((ADMIN, "dashboard"), (ANNOTATOR, "annotate"), (RESEARCHER, "exports"))


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Send each person to where their work is."""
    roles = roles_of(request.user)
    for role, url_name in START_PAGES:
        if role in roles:
            return redirect(url_name)
    return render(request, "home.html", {"roles": sorted(roles)})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})

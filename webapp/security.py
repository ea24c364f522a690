"""Content-Security-Policy on every response: defence in depth behind the templates' escaping.

Every text people or models write is escaped (autoescape) or sanitised
(``annotation.rendering``) before it reaches a page. Should one ever slip through,
the browser still refuses to run it: scripts load only from this site's static files,
never inline and never from another host; no plugin, no ``<base>`` rewrite, no
framing, no form posting elsewhere. Inline ``style`` attributes stay allowed: the
templates draw progress bars with them, and htmx, the admin and Swagger UI use them too.

Tandem's pages need nothing looser: htmx, the dashboard's charts (uPlot) and the
annotation page's script are static files, the Django admin ships no inline script,
and /api/docs/ serves Swagger UI from ``drf_spectacular_sidecar`` with its start-up
script as a separate file (``SpectacularSwaggerSplitView``). ``tests/browser/
test_xss_sweep.py`` visits every page in Chromium and fails on any policy violation.

Also here: the error reporter's filter, so a crash report never carries a secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.views.debug import SafeExceptionReporterFilter

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        # Swagger UI and the admin draw some icons as data: SVGs.
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)


class ContentSecurityPolicyMiddleware:
    """Sets ``Content-Security-Policy`` unless the view set its own."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class SecretMaskingFilter(SafeExceptionReporterFilter):
    """Django's filter masks settings named like KEY, TOKEN, PASS; this one also masks every URL,
    DSN and broker setting, whose values carry passwords (``postgres://user:secret@host/db``)."""

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|DSN|BROKER|BACKEND_RESULT|DATABASES|CACHES",
        flags=re.IGNORECASE,
    )

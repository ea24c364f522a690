"""A database that cannot be reached answers 503 with a short message, never a 500 traceback.

While Postgres restarts, every request that needs it fails; the annotator's page shows
this message beside Submit and retries with the same client id (static/js/annotate.js),
so a judgment whose answer was lost is not saved twice. Django reconnects by itself on
the next request (CONN_HEALTH_CHECKS, webapp/env.py).
"""

from __future__ import annotations

import logging

import psycopg
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import format_html

logger = logging.getLogger(__name__)

MESSAGE = "The database is not reachable right now, so this request was not completed. Try again in a moment."
RETRY_AFTER_S = 5
# SQLSTATEs that mean "no usable connection": class 08 (connection exception) and the
# server shutting down or starting up. Deadlocks, serialization failures and timeouts are
# OperationalErrors too, but they are answers from a live server: they stay 500s.
_UNREACHABLE = ("08", "57P01", "57P02", "57P03")


def database_unreachable(exception: BaseException) -> bool:
    """Whether ``exception`` says Postgres could not be reached (not that it refused a query)."""
    if not isinstance(exception, (OperationalError, InterfaceError)):
        return False
    # Django re-raises the driver's error "from" it. Only Postgres's count: SQLite's
    # OperationalErrors ("no such table", "database is locked") are not outages.
    cause = exception.__cause__
    if not isinstance(cause, psycopg.Error):
        return False
    # The driver's error has no SQLSTATE when the server never answered (refused, lost).
    return (
        isinstance(cause, psycopg.InterfaceError)
        or cause.sqlstate is None
        or cause.sqlstate.startswith(_UNREACHABLE)
    )


class DatabaseUnavailableMiddleware:
    """Turn an unreachable database into a 503 (HTML page, HTMX partial or JSON).

    The answer is built without the database: no session, no user, no context processors.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not database_unreachable(exception):
            return None
        logger.warning(
            "Database unreachable, answered 503 to %s %s: %s", request.method, request.path, exception
        )
        if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
            response = JsonResponse({"detail": MESSAGE}, status=503)
        elif getattr(request, "htmx", False):
            response = HttpResponse(_fragment(), status=503)
        else:
            response = HttpResponse(_page(), status=503)
        response["Retry-After"] = str(RETRY_AFTER_S)
        response["Cache-Control"] = "no-store"
        return response


def _fragment() -> str:
    return format_html('<p class="message error" role="alert" id="database-unavailable">{}</p>', MESSAGE)


def _page() -> str:
    return format_html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{} · Tandem</title></head>'
        "<body><main><h1>{}</h1>{}</main></body></html>",
        "Database unavailable",
        "Database unavailable",
        _fragment(),
    )

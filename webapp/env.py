"""Strict readers for settings that come from the environment.

Each helper either returns a well-formed value or raises ImproperlyConfigured
naming the variable, so a typo stops start-up instead of running half-configured.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of true/false/1/0/yes/no, not {raw!r}.")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}.") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Parameters travel apart from the SQL and each connection prepares a statement it has run
# five times: PostgreSQL then skips parsing and planning it, which was most of its CPU per
# annotation (tests/benchmarks/annotate_http.py). Behind a pooler that cannot keep prepared
# statements, ?prepare_threshold=none in DATABASE_URL turns preparing off.
POSTGRES_STATEMENT_OPTIONS = {"server_side_binding": True, "prepare_threshold": 5}


def _postgres_options(query: str) -> dict:
    """libpq parameters from the URL's query string, with Django's own options typed."""
    options: dict = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    if "server_side_binding" in options:
        raw = options["server_side_binding"].strip().lower()
        if raw not in _TRUE | _FALSE:
            raise ImproperlyConfigured(
                f"DATABASE_URL server_side_binding must be true or false, not {raw!r}."
            )
        options["server_side_binding"] = raw in _TRUE
    if "prepare_threshold" in options:
        raw = options["prepare_threshold"].strip().lower()
        if raw in {"", "none", "off"}:
            options["prepare_threshold"] = None
        elif raw.isdigit():
            options["prepare_threshold"] = int(raw)
        else:
            raise ImproperlyConfigured(
                f"DATABASE_URL prepare_threshold must be a whole number or none, not {raw!r}."
            )
    return options


def database_from_url(url: str) -> dict:
    """A Django DATABASES entry from ``postgres://user:pass@host:port/name`` or ``sqlite:///path``."""
    parsed = urlparse(url)
    if parsed.scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parsed.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL names no database (postgres://host/NAME).")
        options = {**POSTGRES_STATEMENT_OPTIONS, **_postgres_options(parsed.query)}
        conn_max_age = options.pop("conn_max_age", "60").strip()
        if not conn_max_age.isdigit():
            raise ImproperlyConfigured(
                f"DATABASE_URL conn_max_age must be a whole number of seconds, not {conn_max_age!r}."
            )
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            # Each process keeps its connection this long (0: one per request, as Label Studio does).
            "CONN_MAX_AGE": int(conn_max_age),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    if parsed.scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
        path = unquote(parsed.path)[1:]
        if not path:
            raise ImproperlyConfigured("DATABASE_URL sqlite:/// needs a file path.")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    raise ImproperlyConfigured(
        f"DATABASE_URL scheme {parsed.scheme!r} is not supported; use postgres:// or sqlite:///."
    )

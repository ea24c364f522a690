"""Settings modes: the embedded default needs nothing; a real deployment fails fast."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.env import database_from_url, env_bool

REPO = Path(__file__).resolve().parents[2]
SETTINGS_VARS = (
    "DEBUG",
    "SECRET_KEY",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "ALLOWED_HOSTS",
    "ARTIFACTS_DIR",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def _python(code: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_VARS and not k.startswith("CELERY_")}
    clean.update(TANDEM_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="webapp.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120
    )


READ_SETTINGS = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"], "db": str(settings.DATABASES["default"]["NAME"]),
    "broker": settings.CELERY_BROKER_URL, "artifacts": str(settings.ARTIFACTS_DIR), "debug": settings.DEBUG,
    "acks_late": settings.CELERY_TASK_ACKS_LATE, "prefetch": settings.CELERY_WORKER_PREFETCH_MULTIPLIER,
    "hard": settings.CELERY_TASK_TIME_LIMIT, "soft": settings.CELERY_TASK_SOFT_TIME_LIMIT,
    "visibility": settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout"),
}))
"""


def test_it_runs_embedded_with_nothing_set(tmp_path):
    result = _python(READ_SETTINGS, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["engine"] == "django.db.backends.sqlite3"
    assert found["broker"].startswith("sqla+sqlite:///")
    broker_file = found["broker"].removeprefix("sqla+sqlite:///")
    assert Path(broker_file).parent == Path(found["db"]).parent == tmp_path / "var"
    assert broker_file != found["db"], "the broker must not share the app's database file"
    assert found["artifacts"] == str(tmp_path / "var" / "artifacts")


def test_it_configures_a_real_deployment_from_the_environment(tmp_path):
    result = _python(
        READ_SETTINGS,
        tmp_path,
        DEBUG="false",
        SECRET_KEY="x" * 60,
        DATABASE_URL="postgres://tandem:s%40cret@db.internal:5433/tandem",
        CELERY_BROKER_URL="redis://redis:6379/0",
        ARTIFACTS_DIR="/srv/artifacts",
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["engine"] == "django.db.backends.postgresql" and found["db"] == "tandem"
    assert found["broker"] == "redis://redis:6379/0"
    assert found["artifacts"] == "/srv/artifacts"
    assert found["acks_late"] is True and found["prefetch"] == 1
    # A task must be killed before Redis would hand it to a second worker.
    assert found["soft"] < found["hard"] < found["visibility"]


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL"])
def test_it_refuses_to_start_in_production_without(missing, tmp_path):
    env = {"DEBUG": "false", "SECRET_KEY": "x" * 60, "DATABASE_URL": "postgres://h/tandem"}
    del env[missing]
    result = _python(READ_SETTINGS, tmp_path, **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and missing in result.stderr


def test_it_passes_the_deploy_check_with_production_settings(tmp_path):
    result = _python(
        "import sys; from django.core.management import execute_from_command_line;"
        "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])",
        tmp_path,
        DEBUG="false",
        SECRET_KEY="k7#Qp!2vZ9@rT4wX8&yB1nM6$eL3sJ0hG5fD_aC-uV+oI=zq" * 2,
        DATABASE_URL="postgres://tandem@127.0.0.1:5432/tandem",
        ALLOWED_HOSTS="tandem.example.org",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_rejects_a_malformed_boolean(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG"):
        env_bool("DEBUG", True)


def test_it_parses_database_urls():
    pg = database_from_url("postgres://u:p%2Fw@host:5433/name?sslmode=require")
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "u",
        "p/w",
        "host",
        "5433",
        "name",
    )
    assert pg["OPTIONS"] == {"sslmode": "require", "server_side_binding": True, "prepare_threshold": 5}
    behind_a_pooler = database_from_url("postgres://h/db?prepare_threshold=none&server_side_binding=off")
    assert behind_a_pooler["OPTIONS"] == {"server_side_binding": False, "prepare_threshold": None}
    with pytest.raises(ImproperlyConfigured, match="prepare_threshold"):
        database_from_url("postgres://h/db?prepare_threshold=soon")
    assert pg["CONN_MAX_AGE"] == 60
    per_request = database_from_url("postgres://h/db?conn_max_age=0")
    assert per_request["CONN_MAX_AGE"] == 0 and "conn_max_age" not in per_request["OPTIONS"]
    with pytest.raises(ImproperlyConfigured, match="conn_max_age"):
        database_from_url("postgres://h/db?conn_max_age=forever")
    assert database_from_url("sqlite:////tmp/x.sqlite3")["NAME"] == "/tmp/x.sqlite3"
    with pytest.raises(ImproperlyConfigured, match="mysql"):
        database_from_url("mysql://h/db")


def test_it_starts_the_web_process_without_torch(tmp_path):
    code = """
import sys, django
django.setup()
from django.urls import get_resolver
resolver = get_resolver()
resolver.url_patterns  # import every view module
import training.tasks, webapp.wsgi  # what the web process loads to enqueue work
heavy = sorted(name for name in ("torch", "transformers", "trl", "datasets") if name in sys.modules)
print(",".join(heavy))
"""
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the web process imported {result.stdout.strip()}"

"""schemathesis against /api/schema/ with a researcher's and an admin's token, in-process over WSGI: no 5xx.

Randomised on every run (a failure prints the example that broke it); the admin's token lets the
write endpoints' bodies be fuzzed too (launches are recorded, never sent to a queue).
"""

from __future__ import annotations

import pytest

from tests.api.conftest import token_client

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 12


@pytest.fixture
def keep_connection():
    """The WSGI handler closes the connection after each request; the test transaction needs it open
    (Django's own test client does the same)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.parametrize("role", ["researcher", "admin_user"])
def test_no_server_errors(request, role, world, settings, no_queue, keep_connection):
    import schemathesis
    from django.core.wsgi import get_wsgi_application
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings

    settings.ALLOWED_HOSTS = ["*"]
    key = token_client(request.getfixturevalue(role))._credentials["HTTP_AUTHORIZATION"]
    headers = {"Authorization": key}
    schema = schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json", get_wsgi_application(), headers=headers
    )
    failures = []
    calls = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hsettings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(headers=headers)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, case.query, response.status_code))

        check()
    assert operations >= 20
    assert len(calls) >= 3 * operations and 200 in calls and 400 in calls
    assert failures == []

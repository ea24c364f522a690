"""Signing in under a burst of parallel guesses, and with the cache's Redis down.

Both against real Redis: the machine's (its own database number and key prefix) for the
burst, and a private ``redis-server`` this test stops for the outage. Under ``CI=true`` a
missing Redis fails these tests; it never skips them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from http.cookiejar import CookieJar
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, Request, build_opener

import pytest
from django.contrib.auth.signals import user_logged_in, user_login_failed

from tests.conftest import PASSWORD
from tests.faults.test_broker import PrivateRedis

pytestmark = pytest.mark.django_db(transaction=True)

SHARED_REDIS = "redis://127.0.0.1:6379/13"


def _redis_cache(settings, url: str) -> None:
    from django.core.cache import cache

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",  # nothing another run wrote
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    cache.clear() if url == SHARED_REDIS else None


def _csrf_form(base_url: str):
    """A browser-like session on /login/: its opener (with the CSRF cookie) and the form's token."""
    opener = build_opener(HTTPCookieProcessor(CookieJar()))
    html = opener.open(f"{base_url}/login/", timeout=30).read().decode()
    token = html.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    return opener, token


def test_a_burst_of_parallel_sign_ins_checks_no_more_passwords_than_the_limit(
    annotator, live_server, settings
):
    """Sixteen sign-ins for one username at once (15 wrong, the right one among them), like
    gunicorn's 4 x 4 threads against a shared Redis: at most 5 passwords are checked."""
    _redis_cache(settings, SHARED_REDIS)
    checked, lock = [], threading.Lock()

    def seen(outcome):
        def record(**kwargs):
            with lock:
                checked.append(outcome)

        return record

    failed, logged_in = seen("failed"), seen("signed in")
    user_login_failed.connect(failed, dispatch_uid="burst-failed")
    user_logged_in.connect(logged_in, dispatch_uid="burst-in")
    sessions = [_csrf_form(live_server.url) for _ in range(16)]
    start = threading.Barrier(len(sessions))
    statuses = [None] * len(sessions)

    def attempt(i: int) -> None:
        opener, token = sessions[i]
        password = PASSWORD if i == len(sessions) - 1 else f"guess-{i}"
        body = urlencode({"csrfmiddlewaretoken": token, "username": annotator.username, "password": password})
        request = Request(
            f"{live_server.url}/login/", data=body.encode(), headers={"Referer": f"{live_server.url}/login/"}
        )
        start.wait()
        try:
            statuses[i] = opener.open(request, timeout=120).status
        except HTTPError as error:
            statuses[i] = error.code

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(sessions))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    finally:
        user_login_failed.disconnect(dispatch_uid="burst-failed")
        user_logged_in.disconnect(dispatch_uid="burst-in")
    assert None not in statuses, statuses
    assert len(checked) <= settings.LOGIN_FAILURES_PER_USERNAME, checked
    assert statuses.count(429) >= len(sessions) - settings.LOGIN_FAILURES_PER_USERNAME, statuses


@pytest.mark.browser
def test_people_sign_in_in_the_browser_while_the_caches_redis_is_down(
    annotator, live_server, settings, browser, tmp_path, caplog
):
    redis = PrivateRedis(tmp_path)
    redis.start()
    _redis_cache(settings, redis.url)
    redis.stop()

    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        with caplog.at_level(logging.WARNING, logger="webapp.login"):
            page.goto(f"{live_server.url}/login/")
            page.fill("input[name=username]", annotator.username)
            page.fill("input[name=password]", "not-the-password")
            page.press("input[name=password]", "Enter")
            page.wait_for_selector("text=did not match")  # a wrong password: a plain refusal, no 500
            page.fill("input[name=username]", annotator.username)
            page.fill("input[name=password]", PASSWORD)
            page.press("input[name=password]", "Enter")
            page.wait_for_url(f"{live_server.url}/annotate/")
    finally:
        context.close()
    assert "the shared cache cannot be reached" in caplog.text

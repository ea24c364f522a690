"""Sign-in is throttled: five wrong passwords pause a username, twenty pause an address,
the pause ignores the password, and the time it ends is on the page."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.test import Client
from django.urls import reverse

from tests.conftest import PASSWORD
from tests.services import service_missing

pytestmark = pytest.mark.django_db

WRONG = "not-the-password"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    # The throttle does not care how passwords are hashed; the default hasher costs ~0.5 s a try here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _sign_in(client: Client, username: str, password: str, url: str = "/login/", **extra):
    return client.post(url, {"username": username, "password": password}, **extra)


def _fail(client: Client, username: str, times: int, **extra) -> None:
    for _ in range(times):
        response = _sign_in(client, username, WRONG, **extra)
        assert response.status_code == 200, response.status_code
        assert b"did not match" in response.content


def _without_csrf_tokens(response) -> str:
    return re.sub(r"[A-Za-z0-9]{64}", "<token>", response.content.decode())


def _signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def attempts():
    """Every authenticate() outcome while the test runs: a blocked attempt must produce none."""
    seen: list[str] = []

    def failed(**kwargs):
        seen.append("failed")

    def logged_in(**kwargs):
        seen.append("logged_in")

    user_login_failed.connect(failed, dispatch_uid="test-attempts-failed")
    user_logged_in.connect(logged_in, dispatch_uid="test-attempts-in")
    yield seen
    user_login_failed.disconnect(dispatch_uid="test-attempts-failed")
    user_logged_in.disconnect(dispatch_uid="test-attempts-in")


def test_it_pauses_a_username_after_five_wrong_passwords_even_for_the_right_one(annotator, attempts):
    client = Client()
    _fail(client, annotator.username, 5)
    assert attempts == ["failed"] * 5

    right = _sign_in(client, annotator.username, PASSWORD)
    wrong = _sign_in(client, annotator.username, WRONG)

    for response in (right, wrong):
        assert response.status_code == 429
        assert "Try again at" in response.content.decode()
        assert 0 < int(response["Retry-After"]) <= 15 * 60
    # The same answer whatever the password, and the password was never checked.
    assert _without_csrf_tokens(right) == _without_csrf_tokens(wrong)
    assert attempts == ["failed"] * 5
    assert not _signed_in(client)
    assert client.get(reverse("annotate")).status_code == 302


def test_it_counts_a_username_however_it_is_capitalised(annotator):
    client = Client()
    _fail(client, annotator.username.upper(), 5)
    assert _sign_in(client, annotator.username, PASSWORD).status_code == 429


def test_it_leaves_other_people_alone(annotator, other_annotator):
    _fail(Client(), annotator.username, 5)
    # Same address, another account: still 5 failures short of the address's 20.
    client = Client()
    response = _sign_in(client, other_annotator.username, PASSWORD)
    assert response.status_code == 302 and _signed_in(client)


def test_it_lets_the_person_in_once_the_window_has_passed(annotator, monkeypatch):
    client = Client()
    _fail(client, annotator.username, 5)
    assert _sign_in(client, annotator.username, PASSWORD).status_code == 429

    later = time.time() + 15 * 60 + 1
    monkeypatch.setattr(time, "time", lambda: later)
    response = _sign_in(client, annotator.username, PASSWORD)
    assert response.status_code == 302 and _signed_in(client)


def test_a_success_clears_the_usernames_count(annotator):
    client = Client()
    _fail(client, annotator.username, 4)
    assert _sign_in(client, annotator.username, PASSWORD).status_code == 302
    _fail(Client(), annotator.username, 4)
    assert _sign_in(Client(), annotator.username, PASSWORD).status_code == 302


def test_it_pauses_an_address_whatever_usernames_it_tries(annotator, settings):
    settings.LOGIN_FAILURES_PER_IP = 3
    client = Client(REMOTE_ADDR="203.0.113.7")
    for name in ("ghost-1", "ghost-2", annotator.username):
        _fail(client, name, 1)
    # Unknown usernames count like real ones, so the pause says nothing about who exists.
    assert _sign_in(client, "ghost-3", WRONG).status_code == 429
    assert _sign_in(client, annotator.username, PASSWORD).status_code == 429
    # A header anyone can send does not move the address while no proxy is trusted.
    spoofed = _sign_in(client, annotator.username, PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert spoofed.status_code == 429
    # Another address is not paused.
    assert _sign_in(Client(REMOTE_ADDR="203.0.113.8"), annotator.username, PASSWORD).status_code == 302


def test_behind_a_trusted_proxy_it_counts_the_forwarded_address(annotator, settings):
    settings.LOGIN_FAILURES_PER_IP = 2
    settings.NUM_PROXIES = 1
    proxy = Client(REMOTE_ADDR="10.0.0.2")
    # The client may prepend anything; the proxy appends the address it saw last.
    _fail(proxy, "ghost-1", 1, HTTP_X_FORWARDED_FOR="1.1.1.1, 203.0.113.7")
    _fail(proxy, "ghost-2", 1, HTTP_X_FORWARDED_FOR="2.2.2.2, 203.0.113.7")
    assert _sign_in(proxy, "ghost-3", WRONG, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 429
    # Everyone else behind the same proxy still signs in.
    response = _sign_in(proxy, annotator.username, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.8")
    assert response.status_code == 302


def test_the_admin_login_shares_the_count(admin_user):
    client = Client()
    for _ in range(3):
        assert _sign_in(client, admin_user.username, WRONG, url="/admin/login/").status_code == 200
    _fail(client, admin_user.username, 2)
    response = _sign_in(client, admin_user.username, PASSWORD, url="/admin/login/")
    assert response.status_code == 429
    assert _sign_in(client, admin_user.username, PASSWORD).status_code == 429


# --- production configuration, in processes of their own ------------------------------------

PRODUCTION_REQUESTS = """
import json, sys, django
django.setup()
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings, setup_test_environment
setup_test_environment()  # lets the test client's host in
# collectstatic has not run here: plain static file names instead of the manifest's hashed ones.
override_settings(STORAGES={**settings.STORAGES, "staticfiles": {
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}).enable()
ask = json.loads(sys.argv[1])

def cookies(response):
    return {
        name: {"secure": bool(m["secure"]), "httponly": bool(m["httponly"]), "samesite": m["samesite"]}
        for name, m in response.cookies.items()
    }

client, found = Client(), {"cache": settings.CACHES["default"]["BACKEND"]}
if "username" in ask:
    found["plain_http"] = [client.get("/login/").status_code, client.get("/login/")["Location"]]
    page = client.get("/login/", secure=True)
    found["page"] = [page.status_code, dict(page.headers), cookies(page)]
    signin = client.post("/login/", {"username": ask["username"], "password": ask["password"]}, secure=True)
    found["signin"] = [signin.status_code, cookies(signin)]
found["attempts"] = [
    client.post(
        "/login/", {"username": ask["ghost"], "password": "wrong"}, secure=True, REMOTE_ADDR=ask["ip"]
    ).status_code
    for _ in range(ask["failures"])
]
print(json.dumps(found))
"""


def _database_url() -> str:
    """The test database as a URL, for a process that shares it."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _with_production_hash(user) -> None:
    # This module hashes with MD5 for speed; the production process knows only the real hashers.
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(PASSWORD, hasher.salt())
    user.save(update_fields=["password"])


def _production(tmp_path, ask: dict, **env) -> dict:
    """Run PRODUCTION_REQUESTS under DEBUG=false with a real secret and the test database."""
    from tests.foundation.test_settings import _python

    ask = {"ghost": f"ghost-{uuid.uuid4().hex[:8]}", "ip": "192.0.2.1", "failures": 0} | ask
    result = _python(
        PRODUCTION_REQUESTS.replace("sys.argv[1]", repr(json.dumps(ask))),
        tmp_path,
        DEBUG="false",
        SECRET_KEY="k7#Qp!2vZ9@rT4wX8&yB1nM6$eL3sJ0hG5fD_aC-uV+oI=zq" * 2,
        DATABASE_URL=_database_url(),
        ALLOWED_HOSTS="tandem.example.org",
        **env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_production_cookies_and_headers_are_locked_down(annotator, tmp_path):
    _with_production_hash(annotator)
    found = _production(tmp_path, {"username": annotator.username, "password": PASSWORD})

    assert found["plain_http"][0] == 301 and found["plain_http"][1].startswith("https://")
    status, headers, page_cookies = found["page"]
    assert status == 200
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert page_cookies["csrftoken"] == {"secure": True, "httponly": False, "samesite": "Lax"}

    status, signin_cookies = found["signin"]
    assert status == 302
    assert signin_cookies["sessionid"] == {"secure": True, "httponly": True, "samesite": "Lax"}


def _redis_for_tests() -> str:
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        service_missing("no Redis named in CELERY_BROKER_URL")
    return url


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["files", "redis"])
def test_production_processes_share_the_sign_in_count(cache, tmp_path):
    """Like two gunicorn workers: one sees the first failure, the other the second and then the pause."""
    env = {"LOGIN_FAILURES_PER_USERNAME": "2"}  # each failure costs a real password hash
    if cache == "redis":
        env["CACHE_URL"] = _redis_for_tests()
    ask = {"ghost": f"ghost-{uuid.uuid4().hex[:8]}", "ip": f"192.0.2.{uuid.uuid4().int % 250 + 1}"}
    first = _production(tmp_path, ask | {"failures": 1}, **env)
    assert first["cache"].endswith("RedisCache" if cache == "redis" else "FileBasedCache")
    assert first["attempts"] == [200]
    second = _production(tmp_path, ask | {"failures": 2}, **env)
    assert second["attempts"] == [200, 429]

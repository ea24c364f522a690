"""Sign-in is throttled: five wrong passwords pause a username, twenty pause an address,
the pause ignores the password, and the time it ends is on the page."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.test import Client
from django.urls import reverse

from tests.conftest import PASSWORD

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

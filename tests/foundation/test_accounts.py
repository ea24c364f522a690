"""Roles, the create_user command and the login pages."""

import pytest
from django.core.management import call_command
from django.test import Client

from webapp.roles import has_role


@pytest.mark.parametrize("role", ["annotator", "admin", "researcher"])
def test_it_creates_a_user_with_a_role(db, role):
    from django.contrib.auth import get_user_model

    call_command("create_user", "grace", role=role, password="a-long-test-password")
    user = get_user_model().objects.get(username="grace")
    assert has_role(user, role)
    assert user.is_staff == (role == "admin")
    assert user.check_password("a-long-test-password")


def test_it_refuses_an_unknown_role(db):
    with pytest.raises(Exception, match="invalid choice"):
        call_command("create_user", "grace", role="wizard", password="x")


@pytest.mark.parametrize(
    "username, password, message",
    [
        ("grace", "123", "too short"),
        ("grace", "password123", "too common"),
        ("gr ace<script>", "a-long-test-password", "Enter a valid username"),
        ("g" * 151, "a-long-test-password", "at most 150 characters"),
    ],
)
def test_create_user_refuses_weak_passwords_and_bad_names(db, username, password, message):
    from django.contrib.auth import get_user_model
    from django.core.management import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("create_user", username, role="annotator", password=password)
    assert not get_user_model().objects.exists()


def test_it_serves_the_login_page_in_the_site_style(client):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"Log in to Tandem" in response.content and b"tandem.css" in response.content


def test_it_logs_a_user_in_and_out_with_csrf(annotator):
    from tests.conftest import PASSWORD

    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/login/")
    token = page.cookies["csrftoken"].value
    response = browser.post(
        "/login/", {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert browser.get("/").wsgi_request.user.username == "alice"
    token = browser.cookies["csrftoken"].value
    assert browser.post("/logout/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert not browser.get("/login/").wsgi_request.user.is_authenticated


def test_it_says_when_the_password_is_wrong(annotator):
    response = Client().post("/login/", {"username": "alice", "password": "wrong"})
    assert b"did not match" in response.content


def test_a_session_ends_when_it_expires_or_is_signed_out_elsewhere(annotator):
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from tests.conftest import PASSWORD

    kept, expired, other_device = Client(), Client(), Client()
    for browser in (kept, expired, other_device):
        assert browser.post("/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    Session.objects.filter(session_key=expired.cookies["sessionid"].value).update(
        expire_date=timezone.now() - timezone.timedelta(seconds=1)
    )
    Session.objects.filter(session_key=other_device.cookies["sessionid"].value).delete()

    assert kept.get("/annotate/").status_code == 200
    for browser in (expired, other_device):
        response = browser.get("/annotate/")
        assert response.status_code == 302 and response["Location"].startswith("/login/")

"""Every dashboard URL is for admins: anonymous users go to the login page, everyone else gets 403."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import PASSWORD


@pytest.fixture
def urls(project, base_checkpoint, child_checkpoint, running_run, annotator):
    """(method, url) for every dashboard URL, with real objects behind it."""
    p, r, c = project.pk, running_run.pk, child_checkpoint.pk
    return [
        ("get", reverse("dashboard")),
        ("get", reverse("dashboard-runs")),
        ("get", reverse("dashboard-run", args=[r])),
        ("get", reverse("dashboard-run-metrics", args=[r])),
        ("post", reverse("dashboard-run-cancel", args=[r])),
        ("post", reverse("dashboard-run-retry", args=[r])),
        ("get", reverse("dashboard-project", args=[p])),
        *[
            ("get", reverse("dashboard-launch", args=[p, kind]))
            for kind in ("round", "reward-model", "ppo", "loop")
        ],
        *[
            ("post", reverse("dashboard-launch", args=[p, kind]))
            for kind in ("round", "reward-model", "ppo", "loop")
        ],
        ("get", reverse("dashboard-checkpoints", args=[p])),
        ("get", reverse("dashboard-samples", args=[p])),
        ("get", reverse("dashboard-leaderboard", args=[p])),
        ("get", reverse("dashboard-annotators", args=[p])),
        ("post", reverse("dashboard-publish", args=[c])),
        ("post", reverse("dashboard-retire", args=[c])),
        ("post", reverse("dashboard-deactivate", args=[annotator.pk])),
        ("post", reverse("dashboard-reactivate", args=[annotator.pk])),
        ("post", reverse("dashboard-exclusion", args=[annotator.pk])),
    ]


def test_it_lists_every_dashboard_url(urls):
    from training import urls as dashboard_urls

    names = {u.name for u in dashboard_urls.urlpatterns}
    covered = {name for name in names if any(reverse_name_matches(name, url) for _m, url in urls)}
    assert covered == names


def reverse_name_matches(name: str, url: str) -> bool:
    from django.urls import resolve

    return resolve(url).url_name == name


def test_it_sends_anonymous_users_to_login(urls, client):
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 302, (method, url)
        assert response.url.startswith(reverse("login")), (method, url)


@pytest.mark.parametrize("who", ["annotator", "researcher", "outsider"])
def test_it_refuses_everyone_but_admins(urls, who, request):
    user = request.getfixturevalue(who)
    client = Client()
    client.login(username=user.username, password=PASSWORD)
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 403, (who, method, url)


def test_it_refuses_a_deactivated_admin(urls, admin_user):
    client = Client()
    client.login(username=admin_user.username, password=PASSWORD)
    admin_user.is_active = False
    admin_user.save()
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302


def test_it_serves_every_page_to_admins(urls, admin_user):
    client = Client()
    client.login(username=admin_user.username, password=PASSWORD)
    for method, url in urls:
        if method != "get":
            continue
        response = client.get(url)
        assert response.status_code == 200, (url, response.content[:500])


def test_it_sends_admins_home_to_the_dashboard(admin_user):
    client = Client()
    client.login(username=admin_user.username, password=PASSWORD)
    response = client.get(reverse("home"))
    assert response.status_code == 302
    assert response.url == reverse("dashboard")

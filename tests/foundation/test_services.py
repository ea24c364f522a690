"""Under CI a guarantee test whose service is missing fails; elsewhere it skips (tests/services.py)."""

import pytest

from tests import services


def test_a_missing_service_fails_the_test_under_ci(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="Redis is not reachable"):
        services.service_missing("Redis is not reachable")


def test_a_missing_service_skips_the_test_on_a_developers_machine(monkeypatch):
    monkeypatch.setattr(services, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="Redis is not reachable"):
        services.service_missing("Redis is not reachable")

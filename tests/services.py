"""What a test does when a service it needs (PostgreSQL, Redis, a server program, a data file)
is missing: on a developer's machine it skips with the reason; under CI (``CI=true``) it fails,
so a green CI means every guarantee test really ran.

    service_missing("needs Postgres ...")          # inside a test or fixture
    @needs(HH_FILE.exists(), "needs the HH file")  # a mark, checked when the test starts
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def service_missing(reason: str):
    """Skip, or under CI fail, the running test because ``reason``."""
    if IN_CI:
        pytest.fail(f"{reason} (under CI a guarantee test fails when its service is missing)", pytrace=False)
    pytest.skip(reason)


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as ``pytestmark``) that needs a service; see ``service_missing``."""
    return pytest.mark.service(available, reason)

"""Shared fixtures. ML fixtures build tiny random models with the real SmolLM2 tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Test models are cached here between runs on a developer machine; CI starts empty.
TEST_CACHE = Path(__file__).resolve().parent / "artifacts"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_runtest_setup(item):
    """``@needs(available, reason)`` (tests/services.py): skip, or under CI fail, without the service."""
    from tests.services import service_missing

    for mark in item.iter_markers("service"):
        available, reason = mark.args
        if not available:
            service_missing(reason)


def _cached_dir(name: str, build) -> Path:
    path = TEST_CACHE / name
    if not path.exists():
        build(path)  # build() writes atomically, so a crash leaves no half directory
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The SmolLM2 tokenizer (chat template, pad token distinct from EOS)."""
    from transformers import AutoTokenizer

    from training.ml.checkpoints import atomic_directory, load_gguf_tokenizer, smollm2_gguf_path

    def build(path):
        tokenizer = load_gguf_tokenizer(smollm2_gguf_path())
        with atomic_directory(path) as tmp:
            tokenizer.save_pretrained(tmp)

    return AutoTokenizer.from_pretrained(_cached_dir("smollm2-tokenizer", build))


@pytest.fixture(scope="session")
def tiny_checkpoint(smollm2_tokenizer) -> Path:
    """Directory of a two-layer random Llama with the SmolLM2 tokenizer (read-only: copy to change)."""
    from training.ml.checkpoints import build_tiny_checkpoint

    return _cached_dir("tiny-llama-v1", lambda p: build_tiny_checkpoint(smollm2_tokenizer, p))


@pytest.fixture(scope="session")
def smollm2_checkpoint() -> Path:
    """The real SmolLM2-135M-Instruct converted from GGUF (~18 s the first time). For slow tests."""
    from training.ml.checkpoints import convert_gguf_checkpoint, smollm2_gguf_path

    return _cached_dir("smollm2-135m-instruct", lambda p: convert_gguf_checkpoint(smollm2_gguf_path(), p))


# --- The cast: one user per role, plus an outsider with none -----------------

PASSWORD = "correct-horse-battery-staple"


def _make_user(username: str, role: str | None):
    from django.contrib.auth import get_user_model

    from webapp.roles import create_user_with_role

    if role is None:
        return get_user_model().objects.create_user(username=username, password=PASSWORD)
    return create_user_with_role(username=username, password=PASSWORD, role=role)


@pytest.fixture
def annotator(db):
    return _make_user("alice", "annotator")


@pytest.fixture
def other_annotator(db):
    return _make_user("bob", "annotator")


@pytest.fixture
def admin_user(db):
    return _make_user("ada", "admin")


@pytest.fixture
def researcher(db):
    return _make_user("rosalind", "researcher")


@pytest.fixture
def outsider(db):
    return _make_user("mallory", None)


@pytest.fixture
def project(db):
    from annotation.models import Project

    return Project.objects.create(name="Helpful assistant", guidelines="Prefer the **more helpful** answer.")


# --- Real Chromium (Debian's package, driven by Playwright; never a downloaded browser) ---

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = TEST_CACHE / "screenshots"


@pytest.fixture
def point_broker_at(settings, monkeypatch):
    """Send this test's tasks to the broker at ``url`` (eager mode off).

    Celery reads CELERY_BROKER_URL from the environment before its settings, so both are set.
    """

    def point(url: str, **transport_options) -> None:
        settings.CELERY_TASK_ALWAYS_EAGER = False
        settings.CELERY_BROKER_URL = url
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        if transport_options:
            settings.CELERY_BROKER_TRANSPORT_OPTIONS = transport_options

    return point


@pytest.fixture(autouse=True)
def _isolated_cache(settings):
    """An empty in-process cache for every test (the sign-in throttle counts failures there),
    never the files under var/ or a Redis another run shares."""
    from django.core.cache import cache

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tests"}
    }
    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_broker_connections():
    """Tests may point Celery at another broker (point_broker_at); the app caches its
    connection pool, so drop it around every test to make the URL in force the one used."""
    from webapp.celery import app

    def reset():
        # As Celery itself does after a fork: forget the pools, so the next send builds
        # them for the broker URL in force (kombu keeps one pool per URL, still usable).
        app._pool = None
        app.amqp._producer_pool = None

    reset()
    yield
    reset()


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module. Playwright's sync API runs an event loop in this thread
    while it lives, so Django's async guard is lifted for exactly that long: the ORM calls of
    the test bodies are still plain synchronous calls."""
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()

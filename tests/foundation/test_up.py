"""The README's run command on a fresh folder: web and worker up, demo accounts log in, Ctrl-C stops both."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tandem_up(tmp_path, tiny_checkpoint):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DEBUG", "SECRET_KEY")}
    env = {k: v for k, v in env.items() if not k.startswith("CELERY_")}
    env.update(TANDEM_VAR_DIR=str(tmp_path / "var"), BASE_MODEL=str(tiny_checkpoint), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    yield process, f"http://127.0.0.1:{port}", lines, tmp_path / "var"
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _serves(url):
    try:
        return httpx.get(url + "/login/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_it_brings_up_web_and_worker_and_the_demo_accounts_log_in(tandem_up):
    process, url, lines, var = tandem_up
    _wait_for(lambda: _serves(url), 120, "the login page")
    _wait_for(lambda: any("ready." in line for line in lines), 60, "the worker")
    output = "".join(lines)
    accounts = json.loads((var / "demo-accounts.json").read_text())
    assert f"admin      password {accounts['admin']}" in output
    assert f"annotator  password {accounts['annotator']}" in output
    assert (var / "tandem.sqlite3").exists() and (var / "celery-broker.sqlite3").exists()

    for username in ("admin", "annotator"):
        with httpx.Client(base_url=url, follow_redirects=False) as browser:
            page = browser.get("/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            response = browser.post(
                "/login/",
                data={"username": username, "password": accounts[username], "csrfmiddlewaretoken": token},
            )
            assert response.status_code == 302, f"{username} could not log in"

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=40) == 0
    _wait_for(lambda: not _serves(url), 10, "the web server to stop")
    assert "Stopped web and worker." in "".join(lines)

"""One command for the whole product on one machine: migrate, seed the demo, start web and worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Set up the embedded demo and run the web server and a Celery worker together (Ctrl-C stops both)."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--no-demo", action="store_true", help="Skip the demo project and its round.")

    def handle(self, *args, bind, no_demo, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Database ready.")
        if not no_demo:
            self._demo()
        self._serve(bind)

    def _demo(self):
        from training.checkpoints import base_checkpoint_register
        from webapp.demo import demo_accounts, demo_seed

        project = demo_seed()
        self.stdout.write("Preparing the base model (converted once from the bundled SmolLM2 GGUF)...")
        base = base_checkpoint_register(project=project, source=settings.BASE_MODEL)
        self.stdout.write(f"Base model ready: {base.uri}")
        opened = _demo_round_open(project, base)
        if opened:
            self.stdout.write(f"Round {opened.number} of the demo is generating responses in the background.")
        accounts = demo_accounts()
        self.stdout.write(
            self.style.SUCCESS(
                "\nDemo accounts:\n"
                f"  admin      password {accounts['admin']}\n"
                f"  annotator  password {accounts['annotator']}\n"
            )
        )

    def _serve(self, bind):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "webapp",
                "worker",
                "-Q",
                "default,gpu",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
        )
        web = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "webapp.wsgi",
                "--bind",
                bind,
                "--workers",
                "2",
                "--threads",
                "4",
                "--access-logfile",
                "-",
            ],
            env=env,
        )
        self.stdout.write(
            self.style.SUCCESS(f"Tandem is up at http://{bind}/  (Ctrl-C stops web and worker)")
        )
        if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
            self.stdout.write("Embedded mode: SQLite and a file-based queue, for one machine only.")
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and worker.poll() is None and web.poll() is None:
                time.sleep(0.5)
        finally:
            for process in (web, worker):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in (web, worker):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        if not stopping:
            died = "worker" if worker.returncode is not None else "web server"
            self.stderr.write(f"The {died} stopped unexpectedly; both are stopped now.")
            sys.exit(1)
        self.stdout.write("Stopped web and worker.")


def _demo_round_open(project, base):
    """Open round 1 of the demo on first start (None when the project already has rounds)."""
    from training.rounds import demo_round_open

    return demo_round_open(project=project, checkpoint=base)

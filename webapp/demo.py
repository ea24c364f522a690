"""The demo project a new user finds after the first start: prompts, accounts, base model."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotation.importers import import_prompts
from annotation.models import Project
from webapp.roles import ADMIN, ANNOTATOR, create_user_with_role

DEMO_PROJECT_NAME = "Demo: helpful assistant"
DEMO_PROMPTS = Path(__file__).resolve().parent / "demo" / "prompts.jsonl"
DEMO_GUIDELINES = """\
Pick the response that a thoughtful, **helpful** assistant would give.

- Correct beats fluent: check facts, arithmetic and code.
- Concise beats padded, as long as nothing important is missing.
- Choose **slightly better** only when the two are truly close.
- Mark **both bad** when neither answer is acceptable, and say why in the rationale.
"""


def demo_accounts() -> dict[str, str]:
    """Usernames and passwords of the demo admin and annotator, generated once per install."""
    path = Path(settings.VAR_DIR) / "demo-accounts.json"
    if path.exists():
        return json.loads(path.read_text())
    accounts = {"admin": secrets.token_urlsafe(9), "annotator": secrets.token_urlsafe(9)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(accounts))
    path.chmod(0o600)
    return accounts


@transaction.atomic
def demo_seed() -> Project:
    """Create the demo project, its prompts and the two demo accounts (idempotent)."""
    project, created = Project.objects.get_or_create(
        name=DEMO_PROJECT_NAME,
        defaults={
            "description": "SmolLM2-135M-Instruct answers everyday questions; rank its answers.",
            "guidelines": DEMO_GUIDELINES,
            "criteria": ["helpfulness", "harmlessness"],
        },
    )
    if created:
        result = import_prompts(project=project, file=DEMO_PROMPTS, source="demo")
        if result.refused:  # the bundled file is ours: a bad row is a bug, not user input
            raise RuntimeError(f"The demo prompts did not import: {result.summary}")
    accounts = demo_accounts()
    create_user_with_role(username="admin", password=accounts["admin"], role=ADMIN)
    create_user_with_role(username="annotator", password=accounts["annotator"], role=ANNOTATOR)
    return project

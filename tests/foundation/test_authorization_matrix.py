"""Every URL, every role: the status each role gets, and no page showing a role what is not theirs.

``EXPECTED`` classifies every URL pattern the resolver knows, API router and Django admin
included; a new URL fails ``test_it_classifies_every_url_pattern`` until it is added here.

The world, built once for the module: *our* project, annotated by alice and bob (assigned,
not open to all), and *another* project annotated only by carol. Bob's rationale, skip reason
and report, carol's rationale, and the other project's name, guidelines, prompt and response
carry secret words (``SECRETS``). The roles that ask: anonymous, mallory (no role), carol (an
annotator, of the other project), alice (an annotator of ours), rosalind (researcher) and ada
(admin). Each role's requests run in a savepoint rolled back afterwards, so what one role's
POSTs change never reaches the next role.

What the code says each role may see (the truth the secrets are checked against):
annotators see their own projects' prompts and responses and their own judgments, never
another annotator's words or name and never another project; researchers read every
project's data through /api/ and /exports/, with annotators as per-project pseudonyms
(never names) and without skips or reports; admins see everything.
"""

from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import transaction
from django.test import Client, override_settings
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RoutePattern
from django.utils import timezone

from tests.exports.conftest import hand_out

# The sweep builds its own world once for the module; the mark makes pytest-django set up the database.
pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "outsider", "annotator_elsewhere", "annotator", "researcher", "admin")

LOGIN = "→ login"  # 302 to /login/?next=...
ADMIN_LOGIN = "→ admin login"  # 302 to /admin/login/?next=...
# Any other "→ /path" is a 302 to exactly that path; a bare 302 is "done, sent on" (not to a login page).


def by_role(*statuses) -> dict:
    """Statuses in the order of ROLES."""
    return dict(zip(ROLES, statuses, strict=True))


EVERYONE = by_role(200, 200, 200, 200, 200, 200)
ADMINS = by_role(LOGIN, 403, 403, 403, 403, 200)
ADMIN_ACTION = by_role(LOGIN, 403, 403, 403, 403, 302)
RESEARCHERS = by_role(LOGIN, 403, 403, 403, 200, 200)
DJANGO_ADMIN = by_role(ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 200)
API_READ = by_role(401, 403, 403, 403, 200, 200)
API_NOT_OFFERED = by_role(401, 403, 403, 403, 403, 405)  # read-only resources; no deletes anywhere


def annotators(get_or_post: int, elsewhere: int = 404) -> dict:
    """Annotator pages: alice gets ``get_or_post``; carol (other project) ``elsewhere``."""
    return by_role(LOGIN, 403, elsewhere, get_or_post, 403, 403)


POST_ONLY = annotators(405, elsewhere=405)  # the method is refused before the object is looked up


@dataclass(frozen=True)
class Ask:
    method: str
    expect: dict
    data: Callable | None = None  # world -> form data (or JSON for the API)


def api_write(method: str, admin_status: int, data=None, researcher: int = 403) -> Ask:
    return Ask(method, by_role(401, 403, 403, 403, researcher, admin_status), data)


# --- form data for the POSTs that change something -----------------------------------------


def answer(w, comparison) -> dict:
    order = ",".join(str(i) for i in w.order[comparison.pk])
    return {"client_id": str(uuid.uuid4()), "order": order, "choice": "a_much"}


def answer_edit(w, judgment) -> dict:
    order = ",".join(str(i) for i in judgment.order_shown)
    return {"client_id": str(uuid.uuid4()), "order": order, "choice": "b_slight", "rationale": "changed"}


# --- the table: every URL name (or unnamed route), in the order the requests are made ---------
# Within a role, order matters where one request changes what the next finds: alice's heartbeat
# (extend) comes before her judgment ends the lease, and logging out comes last.

EXPECTED: dict[str, list[Ask]] = {
    # webapp/urls.py
    "home": [Ask("GET", by_role(LOGIN, 200, 302, 302, 302, 302))],
    "healthz": [Ask("GET", EVERYONE)],
    "login": [
        Ask("GET", EVERYONE),
        Ask("POST", EVERYONE, lambda w: {"username": "nobody", "password": "wrong"}),
    ],
    # annotation/urls.py (alice's objects: her lease on c2, c3 to skip, c1 to report, her judgment)
    "annotate": [Ask("GET", annotators(200, elsewhere=200))],
    "annotate-round": [Ask("GET", annotators(200))],
    "annotate-extend": [Ask("GET", POST_ONLY), Ask("POST", annotators(204))],
    "annotate-judge": [Ask("GET", POST_ONLY), Ask("POST", annotators(302), lambda w: answer(w, w.c2))],
    "annotate-skip": [Ask("GET", POST_ONLY), Ask("POST", annotators(302), lambda w: {"reason": "dull"})],
    "annotate-report": [
        Ask("GET", POST_ONLY),
        Ask("POST", annotators(302), lambda w: {"reason": "typo in the prompt"}),
    ],
    "annotate-edit": [
        Ask("GET", annotators(200)),
        Ask("POST", annotators(302), lambda w: answer_edit(w, w.alice_judgment)),
    ],
    # training/urls.py: the dashboard, admins only
    "dashboard": [Ask("GET", ADMINS)],
    "dashboard-runs": [Ask("GET", ADMINS)],
    "dashboard-run": [Ask("GET", ADMINS)],
    "dashboard-run-metrics": [Ask("GET", ADMINS)],
    "dashboard-project": [Ask("GET", ADMINS)],
    "dashboard-launch": [
        Ask("GET", ADMINS),
        Ask("POST", by_role(LOGIN, 403, 403, 403, 403, 400), lambda w: {}),
    ],
    "dashboard-checkpoints": [Ask("GET", ADMINS)],
    "dashboard-samples": [Ask("GET", ADMINS)],
    "dashboard-leaderboard": [Ask("GET", ADMINS)],
    "dashboard-annotators": [Ask("GET", ADMINS)],
    "dashboard-run-cancel": [Ask("GET", by_role(LOGIN, 403, 403, 403, 403, 405)), Ask("POST", ADMIN_ACTION)],
    "dashboard-run-retry": [Ask("POST", ADMIN_ACTION)],
    "dashboard-publish": [Ask("POST", ADMIN_ACTION)],
    "dashboard-retire": [Ask("POST", ADMIN_ACTION)],
    "dashboard-deactivate": [Ask("POST", ADMIN_ACTION)],
    "dashboard-reactivate": [Ask("POST", ADMIN_ACTION)],
    "dashboard-exclusion": [Ask("POST", ADMIN_ACTION, lambda w: {"excluded": "1"})],
    # training/urls_exports.py: researchers and admins
    "exports": [
        Ask("GET", RESEARCHERS),
        Ask(
            "POST",
            by_role(LOGIN, 403, 403, 403, 302, 302),
            lambda w: {"project": w.project.pk, "format": "judgments", "include_imported": "on"},
        ),
    ],
    "export-download": [Ask("GET", RESEARCHERS)],
    # training/api.py: researchers read, admins write, researchers may also export.
    # Format-suffixed routes (projects.json) get the GETs only.
    "api-schema": [Ask("GET", EVERYONE)],  # the API's shape is public; its data is not
    "api-docs": [Ask("GET", EVERYONE)],
    "api-root": [Ask("GET", API_READ)],
    "api-project-list": [
        Ask("GET", API_READ),
        api_write("POST", 201, lambda w: {"name": "Made through the API"}),
    ],
    "api-project-detail": [
        Ask("GET", API_READ),
        api_write("PATCH", 200, lambda w: {"description": "Patched through the API"}),
        Ask("DELETE", API_NOT_OFFERED),
    ],
    "api-prompt-list": [
        Ask("GET", API_READ),
        api_write(
            "POST",
            201,
            lambda w: {"project": w.project.pk, "conversation": [{"role": "user", "content": "Hi?"}]},
        ),
    ],
    "api-prompt-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-round-list": [Ask("GET", API_READ), Ask("POST", API_NOT_OFFERED, lambda w: {})],
    "api-round-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-comparison-list": [Ask("GET", API_READ), Ask("POST", API_NOT_OFFERED, lambda w: {})],
    "api-comparison-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-judgment-list": [Ask("GET", API_READ), Ask("POST", API_NOT_OFFERED, lambda w: {})],
    "api-judgment-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-checkpoint-list": [Ask("GET", API_READ), Ask("POST", API_NOT_OFFERED, lambda w: {})],
    "api-checkpoint-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-reward-model-list": [Ask("GET", API_READ), Ask("POST", API_NOT_OFFERED, lambda w: {})],
    "api-reward-model-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-run-list": [
        Ask("GET", API_READ),
        api_write("POST", 201, lambda w: {"project": w.project.pk, "kind": "reward_model", "config": {}}),
    ],
    "api-run-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-export-list": [
        Ask("GET", API_READ),
        api_write("POST", 201, lambda w: {"project": w.project.pk, "format": "judgments"}, researcher=201),
    ],
    "api-export-detail": [Ask("GET", API_READ), Ask("DELETE", API_NOT_OFFERED)],
    "api-export-download": [Ask("GET", API_READ)],
    # Django admin: staff only (admin_view sends everyone else to its login page)
    "admin:index": [Ask("GET", DJANGO_ADMIN)],
    "admin:login": [
        Ask("GET", by_role(200, 200, 200, 200, 200, 302)),  # staff already in: on to the index
        Ask("POST", EVERYONE, lambda w: {"username": "nobody", "password": "wrong"}),
    ],
    # Non-staff asking to leave the admin are sent to its index (which sends them to its login).
    "admin:logout": [Ask("GET", by_role(*["→ /admin/"] * 5, 405))],
    "admin:password_change": [Ask("GET", DJANGO_ADMIN)],
    "admin:password_change_done": [Ask("GET", DJANGO_ADMIN)],
    "admin:autocomplete": [Ask("GET", {**DJANGO_ADMIN, "admin": 403})],  # no field named: refused
    "admin:jsi18n": [Ask("GET", DJANGO_ADMIN)],
    "admin:view_on_site": [Ask("GET", {**DJANGO_ADMIN, "admin": 404})],  # projects have no public page
    "admin:app_list": [Ask("GET", DJANGO_ADMIN)],
    "admin/(?P<url>.*)$": [Ask("GET", {**DJANGO_ADMIN, "admin": 404})],
    "admin:annotation_project_import_prompts": [Ask("GET", DJANGO_ADMIN)],
    "admin:annotation_project_import_preferences": [Ask("GET", DJANGO_ADMIN)],
    # Last: logging out ends the session the requests above used.
    "logout": [Ask("GET", by_role(*[405] * 6)), Ask("POST", by_role(*["→ /login/"] * 6))],
}

# Routes that are another pattern's path, answered by it: the throttled admin login.
SAME_AS = {"admin-login": "admin:login"}

# ModelAdmin pages (changelist, add, history, delete, change, and the bare object URL that
# redirects to change) are Django's, one set per registered model, guarded by admin_view:
# classified together. Every model's changelist is requested; these models' every page.
ADMIN_PAGES = ("changelist", "add", "history", "delete", "change")
ADMIN_SAMPLED_MODELS = ("annotation.judgment", "annotation.report", "annotation.skip", "annotation.project")
ADMIN_OBJECT_REDIRECT = by_role(ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, ADMIN_LOGIN, 302)


def admin_model_page(key: str, route: str) -> tuple[str, str] | None:
    """(model label, page) when the pattern is a ModelAdmin page, else None."""
    for model in admin.site._registry:
        label = model._meta.label_lower
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}_"
        if key.startswith(prefix) and key.removeprefix(prefix) in ADMIN_PAGES:
            return label, key.removeprefix(prefix)
        if route == f"admin/{model._meta.app_label}/{model._meta.model_name}/<path:object_id>/":
            return label, "object"
    if key == "admin:auth_user_password_change":
        return "auth.user", "password"
    return None


# --- the secrets, and who may see each ------------------------------------------------------

OURS = {"annotator", "researcher", "admin"}
THEIRS = {"annotator_elsewhere", "researcher", "admin"}
SECRETS = {
    # Our project: alice's to see, not carol's.
    "OURNAME-k2v8": OURS,
    "OURPROMPT-k2v8": OURS,
    "OURRESPONSE-k2v8": OURS,
    "ALICESAYS-k2v8": OURS,  # alice's own rationale
    # Bob's words: researchers read rationales (pseudonymised), skips and reports are the admins'.
    "BOBSAYS-k2v8": {"researcher", "admin"},
    "BOBSKIPS-k2v8": {"admin"},
    "BOBREPORTS-k2v8": {"admin"},
    # The other project: carol's, never alice's.
    "THEIRNAME-q9w3": THEIRS,
    "THEIRGUIDE-q9w3": THEIRS,
    "THEIRPROMPT-q9w3": THEIRS,
    "THEIRRESPONSE-q9w3": THEIRS,
    "CAROLSAYS-q9w3": {"researcher", "admin"},
}
# Names: an annotator's name is theirs and the admins'; researchers see pseudonyms only.
NAMES = {"alice": {"annotator", "admin"}, "bob": {"admin"}, "carol": {"annotator_elsewhere", "admin"}}


# --- the world ------------------------------------------------------------------------------


def _build_world(tmp_path) -> SimpleNamespace:
    from annotation.judgments import Answer, judgment_submit
    from annotation.leases import comparison_skip
    from annotation.models import Comparison, Lease
    from annotation.reports import comparison_report
    from tests.conftest import _make_user
    from tests.factories import make_checkpoint, make_project, make_round
    from training.exports import export_run
    from training.models import Checkpoint, Export, RewardModel, TrainingRun

    w = SimpleNamespace(tmp_path=tmp_path)
    w.alice, w.bob = _make_user("alice", "annotator"), _make_user("bob", "annotator")
    w.carol = _make_user("carol", "annotator")
    w.users = {
        "anonymous": None,
        "outsider": _make_user("mallory", None),
        "annotator_elsewhere": w.carol,
        "annotator": w.alice,
        "researcher": _make_user("rosalind", "researcher"),
        "admin": _make_user("ada", "admin"),
    }
    w.project = make_project("Project OURNAME-k2v8", overlap=2, open_to_all_annotators=False)
    w.project.annotators.set([w.alice, w.bob])
    w.other = make_project(
        "Project THEIRNAME-q9w3", guidelines="THEIRGUIDE-q9w3", open_to_all_annotators=False
    )
    w.other.annotators.set([w.carol])

    ours = [{"role": "user", "content": "OURPROMPT-k2v8: how do I boil an egg?"}]
    w.round = make_round(w.project, 3, conversation=ours, texts=["OURRESPONSE-k2v8 a", "OURRESPONSE-k2v8 b"])
    w.c1, w.c2, w.c3 = Comparison.objects.filter(round=w.round).order_by("id")
    theirs = [{"role": "user", "content": "THEIRPROMPT-q9w3: what is a lemma?"}]
    w.other_round = make_round(w.other, 1, conversation=theirs, texts=["THEIRRESPONSE-q9w3 a", "x"])
    w.cq = Comparison.objects.get(round=w.other_round)
    w.order = {
        c.pk: list(c.items.order_by("position").values_list("response_id", flat=True))
        for c in (w.c1, w.c2, w.c3, w.cq)
    }

    def judge(user, comparison, rationale):
        ids = w.order[comparison.pk]
        hand_out(user, comparison, ids)
        return judgment_submit(
            annotator=user,
            comparison=comparison,
            answer=Answer(ranking=[[ids[0]], [ids[1]]], strength="much", rationale=rationale),
            client_id=uuid.uuid4(),
            order_shown=ids,
            time_spent_ms=3000,
        ).judgment

    w.alice_judgment = judge(w.alice, w.c1, "ALICESAYS-k2v8")
    w.bob_judgment = judge(w.bob, w.c1, "BOBSAYS-k2v8")
    w.carol_judgment = judge(w.carol, w.cq, "CAROLSAYS-q9w3")
    w.bob_skip = comparison_skip(annotator=w.bob, comparison=w.c2, reason="BOBSKIPS-k2v8")
    w.bob_report, _ = comparison_report(annotator=w.bob, comparison=w.c1, reason="BOBREPORTS-k2v8")
    Lease.objects.create(
        comparison=w.c2,
        annotator=w.alice,
        order=w.order[w.c2.pk],
        expires_at=timezone.now() + timedelta(minutes=10),
    )

    base = make_checkpoint(w.project)
    Checkpoint.objects.filter(pk=base.pk).update(status=Checkpoint.Status.PUBLISHED)
    w.run = TrainingRun.objects.create(
        project=w.project, kind="reward_model", status="running", created_by=w.users["admin"]
    )
    w.draft = Checkpoint.objects.create(
        project=w.project, version=2, uri="/models/v2", parent=base, produced_by=w.run
    )
    w.reward_model = RewardModel.objects.create(
        project=w.project, run=w.run, base_checkpoint=base, uri="/models/rm", accuracy=0.8
    )
    w.export = export_run(Export.objects.create(project=w.project, format=Export.Format.JUDGMENTS))
    assert w.export.status == Export.Status.SUCCEEDED, w.export.error

    w.admin_objects = {
        "annotation.judgment": w.bob_judgment,
        "annotation.report": w.bob_report,
        "annotation.skip": w.bob_skip,
        "annotation.project": w.other,
        "auth.user": w.bob,
    }
    w.api_objects = {
        "api-project": w.project,
        "api-prompt": w.c1.prompt,
        "api-round": w.round,
        "api-comparison": w.c1,
        "api-judgment": w.bob_judgment,
        "api-checkpoint": base,
        "api-reward-model": w.reward_model,
        "api-run": w.run,
        "api-export": w.export,
    }
    return w


# URL arguments by name; the comparison depends on the page (see EXPECTED).
COMPARISON_FOR = {"annotate-judge": "c2", "annotate-extend": "c2", "annotate-skip": "c3"}


def argument(w, key: str, name: str, model: str | None) -> str:
    simple = {
        "round_id": lambda: w.round.pk,
        "comparison_id": lambda: getattr(w, COMPARISON_FOR.get(key, "c1")).pk,
        "judgment_id": lambda: w.alice_judgment.pk,
        "run_id": lambda: w.run.pk,
        "project_id": lambda: w.project.pk,
        "kind": lambda: "round",
        "checkpoint_id": lambda: w.draft.pk,
        "user_id": lambda: w.alice.pk,
        "export_id": lambda: w.export.pk,
        "format": lambda: "json",
        "content_type_id": lambda: ContentType.objects.get_for_model(type(w.project)).pk,
        "app_label": lambda: "annotation",
        "url": lambda: "no-such-page/",
        "id": lambda: w.bob.pk,  # admin: a user's password form
    }
    if name in simple:
        return str(simple[name]())
    if name == "pk":
        return str(w.api_objects[key.rsplit("-", 1)[0]].pk)
    if name == "object_id":
        if key.startswith("admin:annotation_project_import"):
            return str(w.project.pk)
        if key == "admin:view_on_site":
            return str(w.project.pk)
        return str(w.admin_objects[model].pk)
    raise AssertionError(f"No value for URL argument {name!r} of {key}: add one to argument().")


# --- walking the resolver -------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    key: str  # the pattern's (namespaced) name, or its route when it has none
    route: str  # the full route, as the resolver spells it
    pattern: URLPattern
    parts: tuple  # (pattern object of each level)


def every_route() -> list[Route]:
    routes: list[Route] = []

    def walk(patterns, parts: tuple, namespace: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                ns = ":".join(filter(None, [namespace, p.namespace]))
                walk(p.url_patterns, (*parts, p.pattern), ns)
            else:
                # Spelled as ResolverMatch.route spells it: "^" dropped where parts join.
                route = "".join(
                    str(x).removeprefix("^") if i else str(x) for i, x in enumerate((*parts, p.pattern))
                )
                key = f"{namespace}:{p.name}" if namespace and p.name else (p.name or route)
                routes.append(Route(key, route, p, (*parts, p.pattern)))

    walk(get_resolver().url_patterns, (), "")
    return routes


def fill(route: Route, value: Callable[[str], str]) -> str:
    """The route as a path, each argument replaced by ``value(name)``."""
    out = ""
    for part in route.parts:
        text = str(part)
        if isinstance(part, RoutePattern):  # path("<int:round_id>/")
            text = re.sub(r"<(?:\w+:)?(\w+)>", lambda m, part=part: converted(part, m.group(1), value), text)
        else:  # re_path / the API router: ^name/(?P<pk>[^/.]+)\.(?P<format>[a-z0-9]+)/?$
            text = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: value(m.group(1)), text)
            text = text.lstrip("^").rstrip("$").replace("/?", "/").replace("\\.", ".")
        out += text
    return "/" + out


def converted(part, name: str, value: Callable[[str], str]) -> str:
    """The value as the converter spells it (DRF's format suffix wants ".json", not "json")."""
    raw, regex = value(name), part.converters[name].regex
    return raw if re.fullmatch(regex, raw) or not re.fullmatch(regex, f".{raw}") else f".{raw}"


def requests_for(route: Route, w) -> list[tuple[str, Ask]]:
    """(path, ask) for every request the table wants of this route."""
    key = SAME_AS.get(route.key, route.key)
    model_page = admin_model_page(route.key, route.route)
    if model_page:
        model, page = model_page
        if page != "changelist" and model not in ADMIN_SAMPLED_MODELS:
            return []
        asks = [Ask("GET", ADMIN_OBJECT_REDIRECT if page == "object" else DJANGO_ADMIN)]
    elif route.key in SAME_AS:
        return []  # requested under the pattern it stands in for
    else:
        asks = EXPECTED[key]
        if "format" in (route.pattern.pattern.regex.groupindex or {}):
            asks = [a for a in asks if a.method == "GET"]
    path = fill(route, lambda name: argument(w, key, name, model_page[0] if model_page else None))
    try:
        found = resolve(path).route
    except Resolver404:
        found = None
    assert found == route.route, f"{path} does not lead back to {route.route}"
    return [(path, ask) for ask in asks]


# --- making the requests --------------------------------------------------------------------


@dataclass
class Hit:
    role: str
    key: str
    method: str
    path: str
    status: int
    location: str
    text: str


def body_text(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    if content[:2] == b"PK":  # a zip: what is inside counts
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return "\n".join(archive.read(n).decode("utf-8", "replace") for n in archive.namelist())
    return content.decode("utf-8", "replace")


def request(client: Client, method: str, path: str, data: dict | None):
    if path.startswith("/api/") and method != "GET":
        return client.generic(method, path, json.dumps(data or {}), content_type="application/json")
    if method == "GET":
        return client.get(path)
    if method == "DELETE":
        return client.delete(path)
    return client.post(path, data or {})


def as_role(w, role: str, asks: list[tuple[str, str, Ask]]) -> list[Hit]:
    client = Client(raise_request_exception=False)  # a crash is a 500 in the table, not an abort
    if w.users[role] is not None:
        client.force_login(w.users[role])
    hits = []
    for key, path, ask in asks:
        response = request(client, ask.method, path, ask.data(w) if ask.data else None)
        hits.append(
            Hit(
                role,
                key,
                ask.method,
                path,
                response.status_code,
                response.get("Location", ""),
                body_text(response),
            )
        )
    return hits


def fingerprint(w) -> dict:
    """What anyone would notice changed: rows of every kind, and the states POSTs flip."""
    from django.contrib.auth import get_user_model

    from annotation.models import Judgment, Lease, Project, Prompt, Report, Round, Skip
    from training.models import Checkpoint, Export, TrainingRun

    counts = {
        m.__name__: m.objects.count()
        for m in (Judgment, Lease, Project, Prompt, Report, Round, Skip, Checkpoint, Export, TrainingRun)
    }
    return counts | {
        "judgments": {
            pk: rest
            for pk, *rest in Judgment.objects.values_list(
                "pk", "annotator__username", "rationale", "ranking", "strength"
            )
        },
        "active users": sorted(
            get_user_model().objects.filter(is_active=True).values_list("username", flat=True)
        ),
        "checkpoints": sorted(Checkpoint.objects.values_list("pk", "status")),
        "runs": sorted(TrainingRun.objects.values_list("pk", "status", "cancel_requested")),
        "projects": sorted(Project.objects.values_list("pk", "name", "description")),
    }


# Requests alice makes for objects that are not hers: another project's, another person's.
def idor_asks(w) -> list[tuple[str, str, Ask]]:
    no = {"annotator": 404}
    cq = w.cq.pk
    return [
        ("round of another project", f"/annotate/round/{w.other_round.pk}/", Ask("GET", no)),
        (
            "judge another project",
            f"/annotate/comparison/{cq}/judge/",
            Ask("POST", no, lambda w: answer(w, w.cq)),
        ),
        (
            "skip another project",
            f"/annotate/comparison/{cq}/skip/",
            Ask("POST", no, lambda w: {"reason": "x"}),
        ),
        (
            "report another project",
            f"/annotate/comparison/{cq}/report/",
            Ask("POST", no, lambda w: {"reason": "x"}),
        ),
        ("extend another project", f"/annotate/comparison/{cq}/extend/", Ask("POST", no)),
        ("open bob's judgment", f"/annotate/judgment/{w.bob_judgment.pk}/edit/", Ask("GET", no)),
        (
            "change bob's judgment",
            f"/annotate/judgment/{w.bob_judgment.pk}/edit/",
            Ask("POST", no, lambda w: answer_edit(w, w.bob_judgment)),
        ),
        ("open carol's judgment", f"/annotate/judgment/{w.carol_judgment.pk}/edit/", Ask("GET", no)),
        (
            "change carol's judgment",
            f"/annotate/judgment/{w.carol_judgment.pk}/edit/",
            Ask("POST", no, lambda w: answer_edit(w, w.carol_judgment)),
        ),
    ]


@pytest.fixture(scope="module")
def sweep(django_db_setup, django_db_blocker, tmp_path_factory):
    """Every route × role (and alice's attempts on what is not hers), made once for the module
    inside a transaction rolled back at the end: (hits, fingerprints before/after each role)."""
    tmp_path = tmp_path_factory.mktemp("authz")
    overrides = override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "authz"}},
        ARTIFACTS_DIR=tmp_path / "artifacts",
    )
    with django_db_blocker.unblock(), overrides, transaction.atomic():
        w = _build_world(tmp_path)
        planned = [
            (route.key, path, ask) for route in ordered_routes() for path, ask in requests_for(route, w)
        ]
        before = fingerprint(w)
        hits, after = [], {}
        for role in ROLES:
            cache.clear()  # the sign-in throttle's counts are not in the database
            with transaction.atomic():
                hits += as_role(w, role, planned)
                after[role] = fingerprint(w)
                transaction.set_rollback(True)
        with transaction.atomic():
            idor = as_role(w, "annotator", idor_asks(w))
            after["idor"] = fingerprint(w)
            transaction.set_rollback(True)
        result = SimpleNamespace(hits=hits, idor=idor, before=before, after=after, planned=planned)
        transaction.set_rollback(True)
    return result


def ordered_routes() -> list[Route]:
    """Routes in the table's order (ModelAdmin pages where the admin's site entries are)."""
    order = {key: i for i, key in enumerate(EXPECTED)}
    admin_at = order["admin:index"]
    return sorted(
        every_route(),
        key=lambda r: order.get(
            SAME_AS.get(r.key, r.key), admin_at if admin_model_page(r.key, r.route) else -1
        ),
    )


# --- the tests ------------------------------------------------------------------------------


def test_it_classifies_every_url_pattern():
    unclassified = [
        f"{r.route} (name {r.key!r})"
        for r in every_route()
        if r.key not in EXPECTED and r.key not in SAME_AS and not admin_model_page(r.key, r.route)
    ]
    assert not unclassified, "Classify these URLs in EXPECTED: " + "; ".join(unclassified)
    known = {r.key for r in every_route()}
    assert not [k for k in EXPECTED if k not in known], "EXPECTED names URLs that no longer exist"


def _matches(expected, hit: Hit) -> bool:
    if expected == LOGIN:
        return hit.status == 302 and hit.location.startswith("/login/?next=")
    if expected == ADMIN_LOGIN:
        return hit.status == 302 and hit.location.startswith("/admin/login/?next=")
    if isinstance(expected, str):
        return hit.status == 302 and hit.location == expected.removeprefix("→ ")
    if expected == 302:  # done and sent on, not sent to a login page
        return hit.status == 302 and "login/" not in hit.location
    return hit.status == expected


@pytest.mark.slow  # the sweep: 147 requests x 6 roles, made once for the module
def test_it_answers_every_url_and_role_as_the_table_says(sweep):
    expected = {}
    for key, path, ask in sweep.planned:
        expected[(key, ask.method, path)] = ask.expect
    wrong = [
        f"{h.role:>19} {h.method:6} {h.path}: got {h.status} {h.location}, table says "
        f"{expected[(h.key, h.method, h.path)][h.role]}"
        for h in sweep.hits
        if not _matches(expected[(h.key, h.method, h.path)][h.role], h)
    ]
    assert not wrong, "\n" + "\n".join(wrong)
    assert len(sweep.hits) == len(ROLES) * len(sweep.planned)


@pytest.mark.slow  # the sweep: 147 requests x 6 roles, made once for the module
def test_it_never_shows_a_role_what_is_not_theirs(sweep):
    leaks = []
    for h in sweep.hits + sweep.idor:
        for secret, allowed in SECRETS.items():
            if h.role not in allowed and secret in h.text:
                leaks.append(f"{h.role} sees {secret} at {h.method} {h.path} ({h.status})")
        for name, allowed in NAMES.items():
            if h.role not in allowed and re.search(rf"\b{name}\b", h.text):
                leaks.append(f"{h.role} sees the name {name!r} at {h.method} {h.path} ({h.status})")
    assert not leaks, "\n" + "\n".join(leaks)
    # The sweep did reach the data: each secret is on some page of a role allowed to see it.
    seen = {s for h in sweep.hits if h.status == 200 for s in SECRETS if s in h.text and h.role in SECRETS[s]}
    assert seen == set(SECRETS)


@pytest.mark.slow  # the sweep: 147 requests x 6 roles, made once for the module
def test_roles_without_a_write_change_nothing(sweep):
    for role in ("anonymous", "outsider", "annotator_elsewhere"):
        assert sweep.after[role] == sweep.before, role


def _without(fp: dict, *keys: str) -> dict:
    return {k: v for k, v in fp.items() if k not in keys}


@pytest.mark.slow  # the sweep: 147 requests x 6 roles, made once for the module
def test_a_researcher_only_adds_exports(sweep):
    before, after = sweep.before, sweep.after["researcher"]
    assert after["Export"] == before["Export"] + 2  # one from /exports/, one through the API
    assert _without(after, "Export") == _without(before, "Export")


@pytest.mark.slow  # the sweep: 147 requests x 6 roles, made once for the module
def test_an_annotator_changes_only_their_own_work(sweep):
    before, after = sweep.before, sweep.after["annotator"]
    assert (after["Judgment"], after["Skip"], after["Report"]) == (
        before["Judgment"] + 1,
        before["Skip"] + 1,
        before["Report"] + 1,
    )

    def others(fp):
        return {pk: j for pk, j in fp["judgments"].items() if j[0] != "alice"}

    assert others(after) == others(before)
    mine = "Judgment", "Skip", "Report", "Lease", "judgments"
    assert _without(after, *mine) == _without(before, *mine)


@pytest.mark.slow  # the sweep: 147 requests x 6 roles, made once for the module
def test_annotators_get_404_for_other_projects_and_other_peoples_judgments(sweep):
    assert [(h.method, h.path, h.status) for h in sweep.idor if h.status != 404] == []
    assert sweep.after["idor"] == sweep.before


@pytest.mark.parametrize(
    "next_url, lands_on",
    [
        ("/dashboard/runs/", "/dashboard/runs/"),
        ("/\\evil.example/", None),  # browsers read /\ as //: another host
        ("//evil.example/", None),
        ("https://evil.example/", None),
    ],
)
def test_dashboard_actions_send_admins_back_only_within_the_site(admin_user, project, next_url, lands_on):
    from tests.factories import make_checkpoint

    checkpoint = make_checkpoint(project)
    client = Client()
    client.force_login(admin_user)
    response = client.post(f"/dashboard/checkpoints/{checkpoint.pk}/retire/", {"next": next_url})
    assert response.status_code == 302
    assert response["Location"] == (lands_on or f"/dashboard/projects/{project.pk}/checkpoints/")

"""Hostile text on every page, in real Chromium: nothing that people or models write ever runs.

One world is seeded in which every text a person or a model writes (project names,
guidelines, prompts, responses, rationales, skip and report reasons, usernames and
names, checkpoint notes, run configs, errors, logs and metric names, export filters,
admin log messages...) carries XSS payloads. Each role then opens every page it can
see (the list is derived from the URL conf: a page neither visited nor exempted with
a reason fails ``test_it_visits_every_page_of_the_url_conf``), and on each page:

- no alert/confirm/prompt opened and ``window.__xss`` stayed undefined, after the page's
  own scripts ran (keys pressed on the annotation page, charts drawn on the run page);
- no element carries an ``on*`` attribute or a ``javascript:`` URL, and no script, iframe,
  style, base, svg or img element came from the data;
- the Content-Security-Policy header was sent and nothing violated it, and no script
  error or console error happened (so the policy breaks no page either);
- a payload is there as visible text (escaped, not dropped), so a page cannot pass by
  showing nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from annotation.models import (
    AnnotatorProfile,
    Comparison,
    ComparisonItem,
    Judgment,
    Lease,
    Project,
    Prompt,
    Report,
    Response,
    Round,
    Skip,
)
from tests.conftest import PASSWORD
from training.forms import LAUNCH_FORMS
from training.models import Checkpoint, Export, Metric, PreferenceSnapshot, RewardModel, TrainingRun
from webapp.roles import create_user_with_role

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Each payload, if it ever ran, sets window.__xss or opens a dialog; the markers let the
# DOM check tell an element that came from the data from the page's own.
PAYLOADS = (
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    "<img src=x onerror=window.__xss=1>",
    '"><svg onload=window.__xss=1>',
    "'-alert(1)-'",
    "[x](javascript:window.__xss=1)",
    "[y](JaVaScRiPt:alert(1))",
    '<a href="javascript:window.__xss=1">link</a>',
    "{{7*7}}",
    "</textarea><script>window.__xss=1</script>",
    "<style>body{--xss:1;display:none}</style>",
    '<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    '<base href="https://evil.example/">',
)
HOSTILE = "\n\n".join(PAYLOADS)  # markdown fields: one payload per paragraph
LINE = " ".join(PAYLOADS)
SHORT = '"><svg onload=window.__xss=1> <img src=x onerror=window.__xss=1>'  # 64 characters
TINY = "<img src=x onerror=window.__xss=1>"  # 34 characters
CODE = '```html\n<script>window.__xss=1</script>\n```\n\n```"><img src=x onerror=window.__xss=1>\nx\n```'


def _hostile(label: str, limit: int | None = None) -> str:
    text = f"{label} {LINE}"
    return text if limit is None else text[:limit]


# --- the world --------------------------------------------------------------------------------


@dataclass
class World:
    annotator: object
    admin: object
    researcher: object
    outsider: object
    pairwise: Project
    kwise: Project
    pairwise_round: Round
    kwise_round: Round
    judgment: Judgment
    failed_run: TrainingRun
    running_run: TrainingRun
    export: Export
    prompt: Prompt
    comparison: Comparison
    checkpoint: Checkpoint
    reward_model: RewardModel


def _user(username: str, role: str | None, *, first: str = "", last: str = ""):
    if role is None:
        user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    else:
        user = create_user_with_role(username=username, password=PASSWORD, role=role)
    user.first_name, user.last_name, user.email = first, last, "someone@example.com"
    user.save()
    return user


def _conversation(label: str) -> list[dict]:
    return [
        {"role": "system", "content": f"{label} system {HOSTILE}"},
        {"role": "user", "content": f"{label} first question\n\n{HOSTILE}"},
        {"role": "assistant", "content": f"{label} answer\n\n{HOSTILE}\n\n{CODE}"},
        {"role": 'user" onmouseover="window.__xss=1', "content": f"{label} odd role {TINY}"},
        {"role": "user", "content": f"{label} <script>window.__xss=1</script>"},
    ]


def _comparison(round: Round, prompt: Prompt, checkpoints, *, texts, **fields) -> Comparison:
    comparison = Comparison.objects.create(round=round, prompt=prompt, **fields)
    for i, (checkpoint, text) in enumerate(zip(checkpoints, texts)):
        response = Response.objects.create(
            prompt=prompt,
            round=round,
            checkpoint=checkpoint,
            sample_index=i if len(set(checkpoints)) == 1 else 0,
            text=text,
            generation_params={"note": LINE},
            token_count=42,
            finish_reason="eos",
        )
        ComparisonItem.objects.create(comparison=comparison, response=response, position=i)
    return comparison


def seed() -> World:
    """Every model that holds written text, with payloads in every such field."""
    now = timezone.now()
    annotator = _user(
        'alice"><svg onload=window.__xss=1>',
        "annotator",
        first="<script>window.__xss=1</script>",
        last='<img src=x onerror="window.__xss=1">',
    )
    admin_user = _user("ada<script>window.__xss=1</script>", "admin", first=TINY, last="'-alert(1)-'")
    researcher = _user("rosalind<img src=x onerror=window.__xss=1>", "researcher", first=TINY)
    outsider = _user("mallory<script>window.__xss=1</script>", None, first=TINY)
    Group.objects.create(name="<script>window.__xss=1</script>").user_set.add(annotator)

    Token.objects.create(user=researcher)

    pairwise = Project.objects.create(
        name='Pairwise <script>window.__xss=1</script> "><svg onload=window.__xss=1> {{7*7}}',
        description=LINE,
        guidelines=f"# Guidelines\n\nPrefer **helpful** answers.\n\n{HOSTILE}\n\n{CODE}",
        criteria=['helpful"><svg onload=window.__xss=1>', "<script>window.__xss=1</script>"],
    )
    kwise = Project.objects.create(
        name='K-wise <img src=x onerror="window.__xss=1"> {{7*7}}',
        description=LINE,
        guidelines=HOSTILE,
        comparison_mode=Project.Mode.KWISE,
        k=3,
        criteria=[TINY],
    )

    base = Checkpoint.objects.create(
        project=pairwise,
        version=0,
        uri=f"/models/{TINY}",
        origin=Checkpoint.Origin.BASE,
        status=Checkpoint.Status.PUBLISHED,
        config={"note": LINE},
        notes=_hostile("base notes"),
    )
    failed_run = TrainingRun.objects.create(
        project=pairwise,
        kind=TrainingRun.Kind.REWARD_MODEL,
        status=TrainingRun.Status.FAILED,
        config={"note": LINE, "base_checkpoint_id": base.pk, SHORT: [TINY]},
        stage=_hostile("stage", 200),
        error=_hostile("error"),
        log_tail="\n".join(f"12:00:0{i} {p}" for i, p in enumerate(PAYLOADS)),
        celery_task_id=SHORT,
        outputs={"note": LINE},
        created_by=admin_user,
        attempts=2,
        started_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=1),
    )
    Metric.objects.bulk_create(
        [
            Metric(run=failed_run, step=step, name=name, value=0.7 - step / 10)
            for step in (1, 2)
            for name in ("loss", TINY)
        ]
    )
    reward_model = RewardModel.objects.create(
        project=pairwise,
        run=failed_run,
        base_checkpoint=base,
        uri=f"/rm/{TINY}",
        accuracy=0.75,
        evaluation={"note": LINE},
    )
    running_run = TrainingRun.objects.create(
        project=pairwise,
        kind=TrainingRun.Kind.PPO,
        status=TrainingRun.Status.RUNNING,
        config={"note": LINE},
        stage=_hostile("running stage", 200),
        log_tail="\n".join(PAYLOADS),
        progress_done=3,
        progress_total=10,
        created_by=admin_user,
        started_at=now - timedelta(seconds=30),
        heartbeat_at=now,
    )
    child = Checkpoint.objects.create(
        project=pairwise,
        version=1,
        parent=base,
        uri=f"/models/child {SHORT}",
        produced_by=running_run,
        reward_model=reward_model,
        notes=_hostile("child notes"),
    )
    PreferenceSnapshot.objects.create(
        project=pairwise,
        sha256="a" * 64,
        filters={"annotators": [LINE]},
        options={"note": LINE},
        uri=f"/snapshots/{TINY}.jsonl",
    )

    pairwise_round = Round.objects.create(
        project=pairwise, number=1, status=Round.Status.OPEN, config={"note": LINE}, opened_at=now
    )
    pairwise_round.checkpoints.set([base, child])
    Round.objects.create(
        project=pairwise, number=2, status=Round.Status.FAILED, error=_hostile("round error")
    )
    generation = TrainingRun.objects.create(
        project=pairwise,
        kind=TrainingRun.Kind.GENERATE,
        status=TrainingRun.Status.RUNNING,
        stage=_hostile("generating", 200),
        progress_done=1,
        progress_total=4,
    )
    Round.objects.create(
        project=pairwise, number=3, status=Round.Status.GENERATING, generation_run=generation
    )

    def response_texts(label: str, n: int) -> list[str]:
        return [f"{label} response {i}\n\n{HOSTILE}\n\n{CODE}" for i in range(n)]

    current_prompt = Prompt.objects.create(
        project=pairwise, conversation=_conversation("current"), source=SHORT, tags=[TINY]
    )
    current = _comparison(
        pairwise_round,
        current_prompt,
        [base, child],
        texts=response_texts("current", 2),
        source=f"imported:{SHORT}",
    )
    items = list(current.items.values_list("response_id", flat=True))
    Lease.objects.create(
        comparison=current, annotator=annotator, order=items[::-1], expires_at=now + timedelta(minutes=30)
    )
    judged_prompt = Prompt.objects.create(
        project=pairwise, conversation=_conversation("judged"), source=SHORT
    )
    judged = _comparison(
        pairwise_round, judged_prompt, [base, child], texts=response_texts("judged", 2), source=SHORT
    )
    left, right = judged.items.values_list("response_id", flat=True)
    judged.is_gold, judged.gold_ranking = True, [[left], [right]]
    judged.judgment_count = 1
    judged.save()
    judgment = Judgment.objects.create(
        comparison=judged,
        annotator=annotator,
        source="human",
        ranking=[[left], [right]],
        strength=Judgment.Strength.MUCH,
        rationale=_hostile("rationale"),
        criteria={"0": "A", TINY: SHORT},
        order_shown=[left, right],
        time_spent_ms=1234,
    )
    Skip.objects.create(comparison=judged, annotator=annotator, reason=_hostile("skip", 500))
    Report.objects.create(comparison=judged, annotator=annotator, reason=_hostile("report"))
    AnnotatorProfile.objects.create(user=annotator, note=_hostile("profile note"))

    kwise_base = Checkpoint.objects.create(
        project=kwise, version=0, uri=f"/models/{TINY}", origin=Checkpoint.Origin.BASE, notes=LINE
    )
    kwise_round = Round.objects.create(project=kwise, number=1, status=Round.Status.OPEN)
    kwise_round.checkpoints.set([kwise_base])
    kwise_prompt = Prompt.objects.create(project=kwise, conversation=_conversation("kwise"), source=SHORT)
    _comparison(kwise_round, kwise_prompt, [kwise_base] * 3, texts=response_texts("kwise", 3))

    export = Export.objects.create(
        project=pairwise,
        format=Export.Format.TRL_JSONL,
        filters={"annotators": [annotator.pk], "note": LINE},
        licence=_hostile("licence", 200),
        status=Export.Status.FAILED,
        uri=f"/exports/{TINY}.zip",
        error=_hostile("export error"),
        created_by=researcher,
    )
    LogEntry.objects.create(
        user=admin_user,
        content_type=ContentType.objects.get_for_model(Project),
        object_id=str(pairwise.pk),
        object_repr=pairwise.name,
        action_flag=CHANGE,
        change_message=_hostile("change message"),
    )
    return World(
        annotator=annotator,
        admin=admin_user,
        researcher=researcher,
        outsider=outsider,
        pairwise=pairwise,
        kwise=kwise,
        pairwise_round=pairwise_round,
        kwise_round=kwise_round,
        judgment=judgment,
        failed_run=failed_run,
        running_run=running_run,
        export=export,
        prompt=current_prompt,
        comparison=current,
        checkpoint=base,
        reward_model=reward_model,
    )


# --- the pages --------------------------------------------------------------------------------


@dataclass
class Page:
    url: str
    role: str  # annotator | admin | researcher | outsider | anonymous
    shows_text: bool = True  # some payload must be visible as text
    wait_for: str | None = None  # a selector that says the page's own script has run
    wait_for_js: str | None = None  # or a condition, as a JS arrow function
    keys: str = ""  # keys pressed once the page is ready
    shows_in: tuple[str, ...] = ()  # selectors of which some element must show a payload as text


ANNOTATION_KEYS = "?g"  # help dialog (closed again with ?), guidelines open
WORK_PARTS = ("#guidelines", ".annot-prompt", ".annot-response", ".annot-criteria")


def _admin_object(model):
    """The object whose change page to open: one whose name carries a payload where there is one."""
    objects = list(model._default_manager.order_by("pk")[:50])
    assert objects, f"seed() made no {model.__name__}: its admin pages would go unvisited"
    return next((o for o in objects if any(p in str(o) for p in PAYLOADS)), objects[0])


def admin_pages() -> list[Page]:
    pages = [
        Page(reverse("admin:index"), "admin"),
        Page(reverse("admin:password_change"), "admin", shows_text=False),
        Page(reverse("admin:password_change_done"), "admin", shows_text=False),
    ]
    for app_label in sorted({m._meta.app_label for m in admin.site._registry}):
        pages.append(Page(reverse("admin:app_list", args=[app_label]), "admin", shows_text=False))
    for model in sorted(admin.site._registry, key=lambda m: m._meta.label):
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        obj = _admin_object(model)
        named = any(p in str(obj) for p in PAYLOADS)
        pages += [
            Page(reverse(f"{prefix}_changelist"), "admin"),
            Page(reverse(f"{prefix}_change", args=[obj.pk]), "admin"),
            Page(reverse(f"{prefix}_add"), "admin", shows_text=False),
            Page(reverse(f"{prefix}_history", args=[obj.pk]), "admin", shows_text=named),
            Page(reverse(f"{prefix}_delete", args=[obj.pk]), "admin", shows_text=named),
        ]
        if model._meta.label == "auth.User":
            pages.append(Page(reverse("admin:auth_user_password_change", args=[obj.pk]), "admin"))
        if model is Project:
            pages += [
                Page(reverse("admin:annotation_project_import_prompts", args=[obj.pk]), "admin"),
                Page(reverse("admin:annotation_project_import_preferences", args=[obj.pk]), "admin"),
            ]
    return pages


def annotator_pages(w: World) -> list[Page]:
    ready = "body[data-annot-ready]"
    return [
        Page(reverse("home"), "outsider", shows_in=("main h1",)),
        Page(reverse("login") + "?next=" + '/"><svg onload=window.__xss=1>', "anonymous", shows_text=False),
        Page("/admin/login/", "anonymous", shows_text=False),
        Page(reverse("annotate"), "annotator", shows_in=(".annot-index table", ".annot-preparing")),
        Page(
            reverse("annotate-round", args=[w.pairwise_round.pk]),
            "annotator",
            wait_for=ready,
            keys=ANNOTATION_KEYS,
            shows_in=WORK_PARTS + (".annot-recent",),
        ),
        Page(
            reverse("annotate-round", args=[w.kwise_round.pk]),
            "annotator",
            wait_for=ready,
            keys=ANNOTATION_KEYS,
            shows_in=WORK_PARTS,
        ),
        Page(
            reverse("annotate-edit", args=[w.judgment.pk]),
            "annotator",
            wait_for=ready,
            keys=ANNOTATION_KEYS,
            shows_in=WORK_PARTS + ("#rationale",),
        ),
    ]


def dashboard_pages(w: World) -> list[Page]:
    p = w.pairwise.pk
    pages = [
        Page(reverse("dashboard"), "admin"),
        Page(reverse("dashboard-project", args=[p]), "admin"),
        Page(reverse("dashboard-project", args=[w.kwise.pk]), "admin"),
        Page(reverse("dashboard-runs"), "admin"),
        Page(
            reverse("dashboard-runs") + f"?project={p}&status=" + "%22%3E%3Csvg%20onload%3Dalert(1)%3E",
            "admin",
        ),
        Page(
            reverse("dashboard-run", args=[w.failed_run.pk]),
            "admin",
            wait_for="#charts figure.dash-chart",
            shows_in=(
                "[data-testid=run-stage]",
                ".dash-error",
                "[data-testid=run-log]",
                "#charts figure",
                "pre",
            ),
        ),
        Page(
            reverse("dashboard-run", args=[w.running_run.pk]),
            "admin",
            wait_for_js="() => window.__swaps > 0",  # the live part polled once (the HTMX partial)
            shows_in=("[data-testid=run-stage]", "[data-testid=run-log]"),
        ),
        Page(reverse("dashboard-checkpoints", args=[p]), "admin", shows_in=(".dash-node-uri",)),
        Page(
            reverse("dashboard-samples", args=[p]),
            "admin",
            shows_in=(".dash-sample-prompt", ".dash-sample-text"),
        ),
        Page(reverse("dashboard-leaderboard", args=[p]), "admin"),
        Page(reverse("dashboard-annotators", args=[p]), "admin", shows_in=(".dash-annotators",)),
        Page(reverse("exports"), "admin", shows_in=("#export-list",)),
    ]
    pages += [Page(reverse("dashboard-launch", args=[p, kind]), "admin") for kind in LAUNCH_FORMS]
    return pages


def api_pages(w: World) -> list[Page]:
    details = {
        "project": w.pairwise.pk,
        "prompt": w.prompt.pk,
        "round": w.pairwise_round.pk,
        "comparison": w.comparison.pk,
        "judgment": w.judgment.pk,
        "checkpoint": w.checkpoint.pk,
        "reward-model": w.reward_model.pk,
        "run": w.failed_run.pk,
        "export": w.export.pk,
    }
    pages = [
        Page(reverse("exports"), "researcher", shows_in=("#export-list",)),
        Page(reverse("api-root"), "researcher", shows_text=False),
    ]
    for role in ("researcher", "admin"):
        for name, pk in details.items():
            written = name != "round"  # a round's API fields are numbers, dates and a status
            pages.append(Page(reverse(f"api-{name}-list"), role, shows_text=written))
            pages.append(Page(reverse(f"api-{name}-detail", args=[pk]), role, shows_text=written))
    pages.append(Page(reverse("api-docs"), "researcher", shows_text=False, wait_for=".swagger-ui .opblock"))
    return pages


def all_pages(w: World) -> list[Page]:
    return annotator_pages(w) + dashboard_pages(w) + admin_pages() + api_pages(w)


# Patterns not opened in the sweep, each with the reason. Everything else in the URL conf
# must be visited, so a new page is swept as soon as it is routed.
EXEMPT = {
    "healthz": "JSON {ok: true}, shows no stored text",
    "logout": "POST only",
    "annotate-judge": "POST only; answers with the work page's partial, swept on the round pages",
    "annotate-skip": "POST only; answers with the work page's partial, swept on the round pages",
    "annotate-report": "POST only; answers with a fixed sentence",
    "annotate-extend": "POST only; answers with an empty 204/409",
    "dashboard-run-metrics": "JSON; its metric names are drawn by dashboard.js on the swept run page",
    "dashboard-run-cancel": "POST only; redirects to the run page with a message",
    "dashboard-run-retry": "POST only; redirects to the run page with a message",
    "dashboard-publish": "POST only; redirects to the checkpoints page with a message",
    "dashboard-retire": "POST only; redirects to the checkpoints page with a message",
    "dashboard-deactivate": "POST only; redirects with a message",
    "dashboard-reactivate": "POST only; redirects with a message",
    "dashboard-exclusion": "POST only; its message (with a hostile username) is swept on the annotators page",
    "export-download": "a zip download, not a page",
    "api-export-download": "a zip download, not a page",
    "api-schema": "the OpenAPI document (YAML), drawn by the swept /api/docs/",
    "admin:login": "the admin's sign-in form, swept through /admin/login/ (which may route to a wrapper)",
    "admin:logout": "POST only",
    "admin:autocomplete": "JSON for autocomplete widgets (none registered)",
    "admin:jsi18n": "a JavaScript catalogue, not a page",
    "admin:view_on_site": "a redirect to an object's get_absolute_url (no model has one)",
}
UNNAMED_EXEMPT = {
    "RedirectView": "the admin's <id>/ redirect to <id>/change/",
    "catch_all_view": "the admin's catch-all (404, or a redirect adding a slash)",
}
POST_ONLY = [name for name, reason in EXEMPT.items() if reason.startswith("POST only")]


def url_conf_views() -> dict[str, str]:
    """Every view in the URL conf: its name (``namespace:name``) -> route."""

    def walk(patterns, prefix: str, namespace: str | None):
        for p in patterns:
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, prefix + str(p.pattern), p.namespace or namespace)
            elif isinstance(p, URLPattern):
                name = f"{namespace}:{p.name}" if namespace and p.name else p.name
                yield (
                    name or f"unnamed:{getattr(p.callback, 'view_class', p.callback).__name__}",
                    prefix + str(p.pattern),
                )

    return dict(walk(get_resolver().url_patterns, "/", None))


# --- the browser ------------------------------------------------------------------------------

INIT_SCRIPT = """
window.__csp = [];
window.__swaps = 0;
document.addEventListener("htmx:afterSettle", () => (window.__swaps += 1));
document.addEventListener("securitypolicyviolation", (e) =>
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}: ${e.sample || ""}`));
"""

CHECK_SCRIPT = """
([payloads, markers, showsIn]) => {
  const problems = [];
  const marked = (text) => markers.some((m) => text.includes(m));
  if (typeof window.__xss !== "undefined") problems.push("window.__xss was set");
  if (window.__csp.length) problems.push("CSP violations: " + window.__csp.join(" | "));
  const URL_ATTRS = ["href", "src", "action", "formaction", "xlink:href", "data", "poster", "srcdoc", "ping"];
  const INJECTABLE = ["SCRIPT", "IFRAME", "FRAME", "OBJECT", "EMBED", "BASE", "STYLE", "SVG", "IMG", "LINK", "META"];
  for (const el of document.querySelectorAll("*")) {
    for (const attr of el.attributes) {
      const name = attr.name.toLowerCase();
      const value = attr.value.replace(/[\\u0000-\\u0020]/g, "").toLowerCase();
      if (name.startsWith("on")) problems.push(`<${el.tagName}> has ${name}="${attr.value}"`);
      if (URL_ATTRS.includes(name) && /^(javascript|vbscript):/.test(value))
        problems.push(`<${el.tagName}> has ${name}="${attr.value}"`);
    }
    // Upper-cased: inside an <svg> the parser names elements in lower case.
    const tag = el.tagName.toUpperCase();
    if (INJECTABLE.includes(tag) && !(tag === "SCRIPT" && el.type === "application/json")) {
      if (marked(el.outerHTML)) problems.push(`an injected <${el.tagName}>: ${el.outerHTML.slice(0, 120)}`);
    }
  }
  // What a person reads: the text of the page's content (not the top bar, which names the
  // viewer on every page) and the values of its visible form fields.
  const control = (e) => (e.tagName === "SELECT" ? [...e.options].map((o) => o.text).join("\\n") : e.value);
  const textOf = (root) =>
    [root.innerText, ...[...root.querySelectorAll("input:not([type=hidden]), textarea, select")].map(control)]
      .concat(root.matches("textarea, input") ? [root.value] : [])
      .join("\\n");
  // Case-blind: CSS text-transform changes what innerText returns (criteria are capitalized).
  const shows = (root) => payloads.some((p) => textOf(root).toLowerCase().includes(p.toLowerCase()));
  document.querySelectorAll("details").forEach((d) => (d.open = true));
  const regions = [...document.querySelectorAll("main, #content, .messages, .messagelist")];
  return {
    problems,
    shown: (regions.length ? regions : [document.body]).some(shows),
    missing: showsIn.filter((sel) => ![...document.querySelectorAll(sel)].some(shows)),
  };
}
"""
MARKERS = ["__xss", "alert(1)", "evil.example", "--xss"]


class Sweeper:
    """One browser context per role; every visit's problems are collected, then asserted at once."""

    def __init__(self, browser, base_url: str):
        self.browser, self.base_url = browser, base_url
        self.pages: dict[str, object] = {}
        self.problems: list[str] = []
        self.visited: list[str] = []

    def page_for(self, role: str, user=None):
        if role not in self.pages:
            context = self.browser.new_context(viewport={"width": 1360, "height": 900})
            context.add_init_script(INIT_SCRIPT)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.events = []
            page.on("dialog", lambda d: (page.events.append(f"a {d.type} opened: {d.message}"), d.dismiss()))
            page.on("pageerror", lambda e: page.events.append(f"script error: {e}"))
            page.on(
                "console",
                lambda m: m.type == "error" and page.events.append(f"console error: {m.text}"),
            )
            if user is not None:
                self.log_in(page, user)
            self.pages[role] = page
        return self.pages[role]

    def log_in(self, page, user) -> None:
        """Through the real login page, typing the (hostile) username."""
        page.goto(f"{self.base_url}/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert "/login/" not in page.url, f"{user.username} could not log in"

    def visit(self, page_spec: Page, page) -> None:
        page.events.clear()
        response = page.goto(self.base_url + page_spec.url, wait_until="load")
        where = f"{page_spec.role} {page_spec.url}"
        self.visited.append(page_spec.url)
        if response is None or response.status >= 400:
            self.problems.append(f"{where}: HTTP {response and response.status}")
            return
        if "content-security-policy" not in response.headers:
            self.problems.append(f"{where}: no Content-Security-Policy header")
        if page_spec.wait_for:
            page.wait_for_selector(page_spec.wait_for, state="attached")
        if page_spec.wait_for_js:
            page.wait_for_function(page_spec.wait_for_js)
        if page_spec.keys:
            annotation_keys(page, page_spec.keys)
        self.check(page, where, shows_text=page_spec.shows_text, shows_in=page_spec.shows_in)

    def check(self, page, where: str, *, shows_text: bool = True, shows_in: tuple[str, ...] = ()) -> None:
        page.wait_for_load_state("load")
        result = page.evaluate(CHECK_SCRIPT, [list(PAYLOADS), MARKERS, list(shows_in)])
        problems = result["problems"] + page.events
        if shows_text and not result["shown"]:
            problems.append("shows no payload as text (escaped text expected, not dropped)")
        problems += [f"shows no payload as text in {selector}" for selector in result["missing"]]
        self.problems += [f"{where}: {p}" for p in problems]
        page.events.clear()

    def assert_clean(self) -> None:
        assert not self.problems, f"{len(self.problems)} problems:\n" + "\n".join(self.problems)


def annotation_keys(page, keys: str) -> None:
    """The page's own script at work: help dialog, guidelines, the collapsed sections opened."""
    for key in keys:
        page.keyboard.press(key)
        if key == "?":
            page.wait_for_selector("#annot-help[open]")
            page.keyboard.press("?")  # closes it again
    page.evaluate("document.querySelectorAll('#work details').forEach((d) => (d.open = true))")
    assert page.is_visible("#guidelines .annot-md")


@pytest.fixture
def world(settings) -> World:
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher"
    ]  # seeding and login stay fast
    return seed()


@pytest.fixture
def sweeper(browser, live_server):
    sweeper = Sweeper(browser, live_server.url)
    yield sweeper
    for page in sweeper.pages.values():
        page.context.close()


def _sweep(sweeper: Sweeper, w: World, pages: list[Page]) -> None:
    users = {
        "annotator": w.annotator,
        "admin": w.admin,
        "researcher": w.researcher,
        "outsider": w.outsider,
        "anonymous": None,
    }
    for spec in pages:
        sweeper.visit(spec, sweeper.page_for(spec.role, users[spec.role]))


# --- tests ------------------------------------------------------------------------------------


def test_it_visits_every_page_of_the_url_conf(world):
    """A page routed but neither swept nor exempted (with a reason) fails here."""
    swept = set()
    for page in all_pages(world):
        match = resolve(page.url.split("?")[0])
        swept.add(match.view_name)
    routed = url_conf_views()
    missing = sorted(
        f"{name} ({route})"
        for name, route in routed.items()
        if name not in swept
        and name not in EXEMPT
        and not (name.startswith("unnamed:") and name.split(":", 1)[1] in UNNAMED_EXEMPT)
    )
    assert not missing, "Pages neither swept for XSS nor exempted in EXEMPT:\n" + "\n".join(missing)
    assert not set(EXEMPT) - set(routed), "EXEMPT names views that no longer exist"

    # "POST only" must stay true, or the page needs sweeping.
    clients = {}
    for role, user in (("annotate-", world.annotator), ("", world.admin)):
        clients[role] = Client()
        clients[role].force_login(user)
    ids = {
        "comparison_id": world.comparison.pk,
        "run_id": world.failed_run.pk,
        "checkpoint_id": world.checkpoint.pk,
        "user_id": world.annotator.pk,
    }
    for name in POST_ONLY:
        kwargs = {k: v for k, v in ids.items() if f"<int:{k}>" in routed[name]}
        client = clients["annotate-" if name.startswith("annotate-") else ""]
        status = client.get(reverse(name, kwargs=kwargs)).status_code
        assert status == 405, f"{name} answers GET with {status}: sweep it, or exempt it for another reason"


def test_it_runs_nothing_that_annotators_and_new_users_see(world, sweeper):
    _sweep(sweeper, world, annotator_pages(world))

    # A hostile username typed into the login form comes back in the form, as text.
    page = sweeper.page_for("anonymous")
    page.goto(f"{sweeper.base_url}/login/")
    page.fill("#id_username", "<script>window.__xss=1</script>")
    page.fill("#id_password", "wrong")
    with page.expect_navigation():
        page.click("button[type=submit]")
    sweeper.check(page, "anonymous failed login")
    sweeper.assert_clean()


def test_it_runs_nothing_on_the_dashboard(world, sweeper):
    _sweep(sweeper, world, dashboard_pages(world))

    # A flash message naming a hostile annotator.
    page = sweeper.page_for("admin")
    page.goto(sweeper.base_url + reverse("dashboard-annotators", args=[world.pairwise.pk]))
    with page.expect_navigation():
        page.click(
            f"tr[data-annotator='{world.annotator.username}'] button:has-text('Leave out of snapshots')"
        )
    assert page.is_visible(".messages .message")
    sweeper.check(page, "admin annotators page after an action")
    sweeper.assert_clean()


def test_it_runs_nothing_in_the_admin(world, sweeper):
    _sweep(sweeper, world, admin_pages())

    # An import refused for a hostile row: its reason (with the hostile role) is shown back.
    page = sweeper.page_for("admin")
    page.goto(sweeper.base_url + reverse("admin:annotation_project_import_prompts", args=[world.pairwise.pk]))
    row = {"messages": [{"role": "<script>window.__xss=1</script>", "content": "hi"}]}
    page.set_input_files(
        "input[type=file]",
        files=[{"name": f"{TINY}.jsonl", "mimeType": "application/json", "buffer": json.dumps(row).encode()}],
    )
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.is_visible("#import-result")
    sweeper.check(page, "admin refused import")
    sweeper.assert_clean()


def test_it_runs_nothing_in_exports_and_the_api(world, sweeper):
    _sweep(sweeper, world, api_pages(world))
    docs = sweeper.page_for("researcher")
    assert docs.locator(".swagger-ui .opblock").count() >= 10, "Swagger UI listed no operations"
    sweeper.assert_clean()


def test_it_refuses_inline_script_even_where_a_page_would_let_one_through(browser, live_server):
    """The Content-Security-Policy is the second line: markup that got into a page runs nothing."""
    context = browser.new_context()
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/login/")
        page.evaluate(
            """() => {
              document.body.insertAdjacentHTML("beforeend", '<img src="x" onerror="window.__xss = 1">');
              const s = document.createElement("script");
              s.textContent = "window.__xss = 2";
              document.body.append(s);
            }"""
        )
        page.wait_for_function("() => window.__csp.length >= 2")
        assert page.evaluate("typeof window.__xss") == "undefined"
    finally:
        context.close()

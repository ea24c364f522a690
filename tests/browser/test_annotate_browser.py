"""The annotation page in real Chromium (Debian's package, driven by Playwright), keyboard only."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotation.models import Judgment, Lease
from tests.conftest import PASSWORD, SCREENSHOTS
from tests.factories import make_project, make_round

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


PAIRWISE_TEXTS = [
    "Use a list comprehension:\n\n```python\nsquares = [n * n for n in range(10)]\n```\n\nIt is short and **fast**.",
    "You could write a loop:\n\n```python\nsquares = []\nfor n in range(10):\n    squares.append(n * n)\n```\n\n"
    "This works, but it is longer than it needs to be.",
]
KWISE_TEXTS = [
    "Paris is the capital of France.",
    "The capital of France is **Paris**, on the Seine.",
    "I think it might be Lyon.",
    "Paris. It has been the capital for most of the last thousand years:\n\n- since 987 under the Capetians\n"
    "- briefly Versailles (1682–1789)",
]
HOSTILE = (
    "<script>window.__pwned = 1; alert('script')</script>\n\n"
    '<img src="x" onerror="window.__pwned = 2; alert(\'img\')">\n\n'
    "[click me](javascript:window.__pwned=3;alert('link'))\n\n"
    '<a href="javascript:alert(4)" onclick="alert(5)">raw link</a>'
)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.set_default_timeout(10_000)
    yield page
    context.close()


def _log_in(page, live_server, user):
    page.goto(f"{live_server.url}/login/")
    page.keyboard.type(user.username)  # the username box has autofocus
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/annotate/")


def _start_first_round(page) -> None:
    """Enter on the first open round's Start link, once its autofocus has landed."""
    page.wait_for_function("() => document.activeElement?.matches('a[autofocus]')")
    page.keyboard.press("Enter")


def _wait_ready(page) -> None:
    """The page's script has run: keys do something from now on."""
    page.wait_for_selector("body[data-annot-ready]", state="attached")


def _current_order(page) -> list[int]:
    return [int(x) for x in page.input_value("#judge-form input[name=order]").split(",")]


def _wait_for_swap(page, old_action: str):
    page.wait_for_function(
        "old => { const f = document.querySelector('#judge-form'); return !f || f.getAttribute('action') !== old; }",
        arg=old_action,
    )


def _submit_by_enter(page):
    action = page.get_attribute("#judge-form", "action")
    page.keyboard.press("Enter")
    _wait_for_swap(page, action)


def _focused_id(page) -> str:
    return page.evaluate(
        "document.activeElement && (document.activeElement.id || document.activeElement.className)"
    )


def _wait_for_focus(page, element_id: str) -> None:
    """Focus lands on ``element_id`` (after a swap it moves there within a frame or two)."""
    page.wait_for_function("id => document.activeElement && document.activeElement.id === id", arg=element_id)


def test_it_completes_pairwise_and_kwise_comparisons_with_the_keyboard_only(page, live_server, annotator):
    pairwise = make_project("A · pairwise", guidelines="Prefer the answer that is **correct** and concise.")
    pairwise_round = make_round(
        pairwise,
        3,
        texts=PAIRWISE_TEXTS,
        conversation=[
            {"role": "user", "content": "How do I square the numbers 0–9 in Python?"},
            {"role": "assistant", "content": "Do you want a list or a generator?"},
            {"role": "user", "content": "A list, please."},
        ],
    )
    kwise = make_project("B · ranking", k=4, criteria=["helpfulness", "harmlessness"])
    make_round(
        kwise,
        1,
        texts=KWISE_TEXTS,
        conversation=[{"role": "user", "content": "What is the capital of France?"}],
    )

    _log_in(page, live_server, annotator)
    _start_first_round(page)
    page.wait_for_url(f"{live_server.url}/annotate/round/{pairwise_round.pk}/")
    _wait_ready(page)
    assert _focused_id(page) == "cmp"

    # 1: A much better, with a rationale typed after pressing r.
    first = _current_order(page)
    page.keyboard.press("1")
    page.keyboard.press("r")
    page.keyboard.type("A is idiomatic")
    page.keyboard.press("Escape")
    page.keyboard.press("g")  # the guidelines open and close without touching the answer
    assert page.is_visible("#guidelines .annot-md strong")
    page.keyboard.press("g")
    page.keyboard.press("?")
    assert page.is_visible("#annot-help")
    page.screenshot(path=str(_screenshot_path("pairwise-help.png")))
    page.keyboard.press("Escape")
    assert not page.is_visible("#annot-help")
    page.screenshot(path=str(_screenshot_path("pairwise.png")), full_page=True)
    _submit_by_enter(page)
    assert page.is_visible(".annot-notice") and "Saved." in page.inner_text(".annot-notice")
    _wait_for_focus(page, "cmp")  # focus survives the swap
    assert page.evaluate("window.performance.getEntriesByType('navigation').length") == 1  # no reload

    # 2: B slightly better.
    second = _current_order(page)
    page.keyboard.press("3")
    _submit_by_enter(page)
    _wait_for_focus(page, "cmp")

    # 3: tie, and both bad.
    third = _current_order(page)
    page.keyboard.press("t")
    page.keyboard.press("b")
    _submit_by_enter(page)
    page.wait_for_selector(".annot-empty")
    assert "Nothing left" in page.inner_text("#work")
    assert "3</span> done in this round" in page.inner_html("#annot-progress")

    judgments = {tuple(j.order_shown): j for j in Judgment.objects.filter(annotator=annotator)}
    assert len(judgments) == 3
    j1, j2, j3 = judgments[tuple(first)], judgments[tuple(second)], judgments[tuple(third)]
    assert (j1.ranking, j1.strength, j1.rationale, j1.is_tie) == (
        [[first[0]], [first[1]]],
        "much",
        "A is idiomatic",
        False,
    )
    assert (j2.ranking, j2.strength, j2.is_tie, j2.both_bad) == (
        [[second[1]], [second[0]]],
        "slight",
        False,
        False,
    )
    assert (j3.ranking, j3.strength, j3.is_tie, j3.both_bad) == ([sorted(third)], None, True, True)
    assert all(j.time_spent_ms is not None and j.time_spent_ms > 0 for j in judgments.values())

    # K-wise: back to the list with the keyboard, then rank four responses.
    # The swapped-in "nothing left" card takes focus first; Tab from there.
    page.wait_for_function("() => document.activeElement?.classList.contains('annot-empty')")
    page.keyboard.press("Tab")  # "Check again"
    page.keyboard.press("Tab")  # "All rounds"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/annotate/")
    _start_first_round(page)  # the K-wise round is now the first open one
    _wait_ready(page)
    page.wait_for_selector("#rank-strip li")
    order = _current_order(page)
    assert page.evaluate("document.activeElement.dataset.letter") == "A"
    for key in "2143":  # A=2, B=1, C=4, D=3; focus moves on to the next unranked response
        page.keyboard.press(key)
    assert page.evaluate("document.activeElement.dataset.letter") == "D"
    page.keyboard.press("Shift+ArrowUp")  # D moves above A: B, D, A, C
    strip = page.inner_text("#rank-strip").replace("\n", "")
    assert strip.startswith("B#1") and "D#2" in strip and "A#3" in strip
    page.screenshot(path=str(_screenshot_path("kwise.png")), full_page=True)
    _submit_by_enter(page)
    page.wait_for_selector(".annot-empty")
    kwise_judgment = Judgment.objects.get(annotator=annotator, comparison__round__project=kwise)
    a, b, c, d = order
    assert kwise_judgment.ranking == [[b], [d], [a], [c]]
    assert kwise_judgment.order_shown == order and not kwise_judgment.is_tie
    assert page.dialogs == []


def test_it_ranks_by_drag_and_drop(page, live_server, annotator):
    kwise = make_project("Drag", k=3)
    make_round(kwise, 1, texts=KWISE_TEXTS[:3])
    _log_in(page, live_server, annotator)
    _start_first_round(page)
    _wait_ready(page)
    page.wait_for_selector("#rank-strip li")
    order = _current_order(page)
    # Drag C to the front of the strip: the strip's order becomes the ranking C, A, B.
    page.drag_and_drop(
        "#rank-strip li[data-letter=C]", "#rank-strip li[data-letter=A]", target_position={"x": 2, "y": 8}
    )
    assert page.inner_text("#rank-strip").replace("\n", "").startswith("C#1")
    _submit_by_enter(page)
    page.wait_for_selector(".annot-empty")
    a, b, c = order
    assert Judgment.objects.get().ranking == [[c], [a], [b]]


def test_it_renders_hostile_content_inert(page, live_server, annotator):
    project = make_project("Hostile", guidelines=HOSTILE)
    make_round(
        project, 1, texts=[HOSTILE, "A harmless answer."], conversation=[{"role": "user", "content": HOSTILE}]
    )
    _log_in(page, live_server, annotator)
    _start_first_round(page)
    _wait_ready(page)
    page.keyboard.press("g")
    page.get_by_text("click me", exact=False).first.click()  # plain text now, not a link
    page.wait_for_timeout(300)
    found = page.evaluate(
        """() => {
            const all = Array.from(document.querySelectorAll('#work *'));
            return {
                handlers: all.filter(el => Array.from(el.attributes).some(a => a.name.toLowerCase().startsWith('on'))).length,
                scripts: document.querySelectorAll('#work script').length,
                jsLinks: all.filter(el => /^\\s*javascript:/i.test(el.getAttribute('href') || el.getAttribute('src') || '')).length,
                pwned: window.__pwned === undefined ? null : window.__pwned,
            };
        }"""
    )
    assert found == {"handlers": 0, "scripts": 0, "jsLinks": 0, "pwned": None}
    assert page.dialogs == []
    assert "<script>window.__pwned" in page.inner_text("#work")  # shown as text, visibly


def test_it_records_one_judgment_for_a_double_submit(page, live_server, annotator):
    project = make_project("Double", overlap=1)
    make_round(project, 2)
    _log_in(page, live_server, annotator)
    _start_first_round(page)
    _wait_ready(page)

    # A double click on the submit button.
    page.keyboard.press("2")
    action = page.get_attribute("#judge-form", "action")
    page.dblclick("#submit-judgment")
    _wait_for_swap(page, action)
    assert Judgment.objects.count() == 1

    # The same form posted twice at once, as a retrying network layer would.
    page.keyboard.press("4")
    statuses = page.evaluate(
        """async () => {
            const form = document.querySelector('#judge-form');
            const body = new URLSearchParams(new FormData(form));
            const headers = {'x-csrftoken': JSON.parse(document.body.getAttribute('hx-headers'))['x-csrftoken'],
                             'content-type': 'application/x-www-form-urlencoded'};
            const send = () => fetch(form.action, {method: 'POST', body, headers}).then(r => r.status);
            return Promise.all([send(), send(), send()]);
        }"""
    )
    assert all(status in (200, 302) for status in statuses)
    assert Judgment.objects.count() == 2
    assert len({j.comparison_id for j in Judgment.objects.all()}) == 2
    assert not Lease.objects.filter(annotator=annotator, comparison__judgments__annotator=annotator).exists()


def _screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / name


def test_it_skips_with_the_keyboard_and_stacks_responses_on_a_narrow_screen(page, live_server, annotator):
    from annotation.models import Skip

    project = make_project("Narrow")
    make_round(project, 2, texts=PAIRWISE_TEXTS)
    page.set_viewport_size({"width": 420, "height": 900})
    _log_in(page, live_server, annotator)
    _start_first_round(page)
    _wait_ready(page)
    boxes = [page.locator(".annot-response").nth(i).bounding_box() for i in range(2)]
    assert boxes[1]["y"] >= boxes[0]["y"] + boxes[0]["height"]  # B below A, not beside it
    page.screenshot(path=str(_screenshot_path("pairwise-narrow.png")), full_page=True)
    skipped = page.get_attribute("#judge-form", "action")
    page.keyboard.press("s")
    assert _focused_id(page) == "skip-reason"
    page.keyboard.type("not my field")
    page.keyboard.press("Enter")
    _wait_for_swap(page, skipped)
    _wait_for_focus(page, "cmp")
    assert "Skipped" in page.inner_text(".annot-notice")
    assert Skip.objects.get(annotator=annotator).reason == "not my field"

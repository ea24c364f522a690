"""The annotator's pages: full pages without JavaScript, HTMX partials, access, and query counts."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Comparison, Judgment, Lease, Report, Response, Skip
from tests.conftest import PASSWORD
from tests.factories import make_project, make_round

pytestmark = pytest.mark.django_db

# Session, then user with roles (webapp.auth), then the work itself; neither grows with the
# round's size.
NEXT_QUERIES = 11
SUBMIT_QUERIES = 15  # includes claiming and rendering the next comparison


def _client(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    return client


def _csrf(client: Client, url: str) -> str:
    client.get(url)
    return client.cookies["csrftoken"].value


def _post(client: Client, url: str, data: dict, *, htmx: bool = False, token_from: str | None = None):
    token = _csrf(client, token_from or reverse("annotate"))
    headers = {"HTTP_X_CSRFTOKEN": token}
    if htmx:
        headers["HTTP_HX_REQUEST"] = "true"
    return client.post(url, data, **headers)


def _answer(lease: Lease, **extra) -> dict:
    data = {"client_id": str(uuid.uuid4()), "order": ",".join(map(str, lease.order)), "choice": "a_much"}
    data.update(extra)
    return data


def test_it_lists_open_rounds_for_an_annotator(annotator, project):
    round = make_round(project, 2)
    closed = make_round(project, 1, status="closed")
    response = _client(annotator).get(reverse("annotate"))
    assert response.status_code == 200
    assert reverse("annotate-round", args=[round.pk]).encode() in response.content
    assert reverse("annotate-round", args=[closed.pk]).encode() not in response.content


def test_it_sends_annotators_home_to_their_work(annotator, project):
    response = _client(annotator).get(reverse("home"))
    assert response.status_code == 302 and response.url == reverse("annotate")


def test_it_shows_a_pairwise_comparison_as_a_full_page(annotator, project):
    project.guidelines = "Be **kind**."
    project.save()
    round = make_round(
        project,
        1,
        conversation=[
            {"role": "user", "content": "First turn"},
            {"role": "assistant", "content": "Reply"},
            {"role": "user", "content": "Second turn"},
        ],
    )
    response = _client(annotator).get(reverse("annotate-round", args=[round.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html and 'id="work"' in html
    assert "First turn" in html and "Second turn" in html and "annot-turn-assistant" in html
    assert "Answer 0 to prompt 0." in html and "Answer 1 to prompt 0." in html
    assert "<strong>kind</strong>" in html
    assert "A is much better" in html and "B is much better" in html
    lease = Lease.objects.get(annotator=annotator)
    assert f'value="{",".join(map(str, lease.order))}"' in html
    assert "0</span> done in this round" in html and "1</span> remaining" in html


def test_it_shows_a_big_round_as_more_than_it_counts(annotator, monkeypatch):
    from annotation import leases

    monkeypatch.setattr(leases, "REMAINING_COUNTED_UP_TO", 2)
    round = make_round(make_project("Big round"), 3)
    html = _client(annotator).get(reverse("annotate-round", args=[round.pk])).content.decode()
    assert "2+</span> remaining" in html
    index = _client(annotator).get(reverse("annotate")).content.decode()
    assert "<td>2+</td>" in index


def test_it_answers_htmx_with_the_partial_only(annotator, project):
    round = make_round(project, 1)
    response = _client(annotator).get(reverse("annotate-round", args=[round.pk]), HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="work"') and "<html" not in html


def test_it_saves_a_plain_form_post_and_redirects_to_the_next_item(annotator, project):
    round = make_round(project, 2)
    client = _client(annotator)
    url = reverse("annotate-round", args=[round.pk])
    client.get(url)
    lease = Lease.objects.get(annotator=annotator)
    data = _answer(lease, choice="b_slight", rationale="B is right", time_spent_ms="1234")
    response = _post(client, reverse("annotate-judge", args=[lease.comparison_id]), data, token_from=url)
    assert response.status_code == 302 and response.url == url
    judgment = Judgment.objects.get()
    a, b = lease.order
    assert judgment.ranking == [[b], [a]] and judgment.strength == "slight"
    assert judgment.order_shown == lease.order and judgment.time_spent_ms == 1234
    assert judgment.rationale == "B is right"
    assert not Lease.objects.filter(pk=lease.pk).exists()


def test_it_swaps_in_the_next_comparison_over_htmx(annotator, project):
    round = make_round(project, 2)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    first = Lease.objects.get(annotator=annotator)
    response = _post(client, reverse("annotate-judge", args=[first.comparison_id]), _answer(first), htmx=True)
    html = response.content.decode()
    second = Lease.objects.get(annotator=annotator)
    assert response.status_code == 200 and "<html" not in html
    assert second.comparison_id != first.comparison_id
    assert reverse("annotate-judge", args=[second.comparison_id]) in html
    assert "Saved." in html and "1</span> done in this round" in html
    assert '"remaining">1</span> remaining' in html and '"today">1</span> today' in html
    saved = Judgment.objects.get(annotator=annotator)
    assert "Your recent judgments" in html and reverse("annotate-edit", args=[saved.pk]) in html


def test_it_refuses_a_post_without_csrf_token(annotator, project):
    round = make_round(project, 1)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    response = client.post(reverse("annotate-judge", args=[lease.comparison_id]), _answer(lease))
    assert response.status_code == 403
    assert not Judgment.objects.exists()


def test_it_keeps_what_was_typed_when_the_answer_is_incomplete(annotator, project):
    round = make_round(project, 1)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    data = _answer(lease, choice="", rationale="half a thought")
    response = _post(client, reverse("annotate-judge", args=[lease.comparison_id]), data, htmx=True)
    html = response.content.decode()
    assert "Pick which response is better" in html and "half a thought" in html
    assert not Judgment.objects.exists()


def test_it_skips_and_reports(annotator, project):
    round = make_round(project, 2)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    response = _post(
        client, reverse("annotate-report", args=[lease.comparison_id]), {"reason": "garbled"}, htmx=True
    )
    assert b"Reported" in response.content
    assert Report.objects.get().reason == "garbled"
    response = _post(
        client, reverse("annotate-skip", args=[lease.comparison_id]), {"reason": "no idea"}, htmx=True
    )
    assert Skip.objects.get().reason == "no idea"
    assert Lease.objects.get(annotator=annotator).comparison_id != lease.comparison_id
    assert b"Skipped" in response.content


def test_it_lets_an_annotator_edit_a_recent_judgment(annotator, project):
    round = make_round(project, 2)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    _post(client, reverse("annotate-judge", args=[lease.comparison_id]), _answer(lease), htmx=True)
    judgment = Judgment.objects.get()
    page = client.get(reverse("annotate-edit", args=[judgment.pk])).content.decode()
    assert 'value="a_much" checked' in page
    data = _answer(lease, choice="tie", rationale="on reflection, equal")
    response = _post(client, reverse("annotate-edit", args=[judgment.pk]), data, htmx=True)
    assert response.status_code == 200
    judgment.refresh_from_db()
    assert (
        judgment.is_tie
        and judgment.ranking == [sorted(lease.order)]
        and judgment.rationale == "on reflection, equal"
    )
    assert Judgment.objects.count() == 1


def test_it_hides_other_annotators_judgments(annotator, other_annotator, project):
    round = make_round(project, 1)
    client = _client(other_annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    _post(client, reverse("annotate-judge", args=[lease.comparison_id]), _answer(lease))
    judgment = Judgment.objects.get()
    assert _client(annotator).get(reverse("annotate-edit", args=[judgment.pk])).status_code == 404


@pytest.mark.parametrize("who", ["outsider", "researcher", "admin_user"])
def test_it_refuses_people_who_are_not_annotators(request, who, project):
    round = make_round(project, 1)
    client = _client(request.getfixturevalue(who))
    assert client.get(reverse("annotate")).status_code == 403
    assert client.get(reverse("annotate-round", args=[round.pk])).status_code == 403
    assert not Lease.objects.exists()


def test_it_gives_work_only_to_assigned_annotators_unless_open_to_all(annotator, other_annotator):
    project = make_project("Closed shop", open_to_all_annotators=False)
    project.annotators.add(other_annotator)
    round = make_round(project, 1)
    assert _client(annotator).get(reverse("annotate-round", args=[round.pk])).status_code == 404
    assert _client(other_annotator).get(reverse("annotate-round", args=[round.pk])).status_code == 200


def test_it_renders_hostile_markdown_inert(annotator, project):
    project.guidelines = "<script>alert('g')</script>[go](javascript:alert(1))"
    project.save()
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)> [click](javascript:alert(3))"
    round = make_round(
        project, 1, texts=[hostile, "fine"], conversation=[{"role": "user", "content": hostile}]
    )
    html = _client(annotator).get(reverse("annotate-round", args=[round.pk])).content.decode()
    work = html[html.index('id="work"') :]
    assert "<script>alert" not in work and "onerror" not in work.replace("&lt;img src=x onerror", "")
    assert "javascript:" not in work.replace("](javascript:alert", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in work


def test_it_shows_responses_as_rendered_when_written_or_renders_them_then(annotator, project):
    round = make_round(project, 1, texts=["**stored**", "plain"])
    stored, imported = Response.objects.filter(round=round).order_by("sample_index")
    assert stored.html == "<p><strong>stored</strong></p>\n"
    # An import writes no HTML: the page renders it.
    Response.objects.filter(pk=imported.pk).update(text="*imported*", html=None)
    html = _client(annotator).get(reverse("annotate-round", args=[round.pk])).content.decode()
    assert "<strong>stored</strong>" in html and "<em>imported</em>" in html
    # Edited text (the Django admin saves it) is rendered again.
    stored.text = "now _edited_"
    stored.save(update_fields=["text"])
    stored.refresh_from_db()
    assert stored.html == "<p>now <em>edited</em></p>\n"


def test_it_shows_a_kwise_comparison_with_rank_controls(annotator):
    project = make_project("Rank four", k=4, overlap=1)
    round = make_round(project, 1)
    client = _client(annotator)
    html = client.get(reverse("annotate-round", args=[round.pk])).content.decode()
    lease = Lease.objects.get()
    for rid in lease.order:
        assert f'name="rank_{rid}"' in html
    ranks = {f"rank_{rid}": str(i + 1) for i, rid in enumerate(lease.order)}
    ranks[f"rank_{lease.order[3]}"] = "3"  # a tie for third
    data = {"client_id": str(uuid.uuid4()), "order": ",".join(map(str, lease.order)), **ranks}
    _post(client, reverse("annotate-judge", args=[lease.comparison_id]), data, htmx=True)
    judgment = Judgment.objects.get()
    o = lease.order
    assert judgment.ranking == [[o[0]], [o[1]], sorted([o[2], o[3]])] and judgment.is_tie


def test_it_pins_the_query_count_of_next_and_submit(annotator, django_assert_num_queries):
    counts = []
    for size in (3, 30):
        project = make_project(f"Size {size}")
        round = make_round(project, size)
        client = _client(annotator)
        url = reverse("annotate-round", args=[round.pk])
        token = _csrf(client, reverse("annotate"))
        with django_assert_num_queries(NEXT_QUERIES):
            client.get(url, HTTP_HX_REQUEST="true")
        lease = Lease.objects.get(annotator=annotator, comparison__round=round)
        with django_assert_num_queries(SUBMIT_QUERIES):
            response = client.post(
                reverse("annotate-judge", args=[lease.comparison_id]),
                _answer(lease),
                HTTP_X_CSRFTOKEN=token,
                HTTP_HX_REQUEST="true",
            )
        assert response.status_code == 200
        counts.append(Judgment.objects.filter(comparison__round=round).count())
    assert counts == [1, 1]


def test_it_extends_a_live_lease_and_says_when_it_is_gone(annotator, other_annotator, project):
    from datetime import timedelta

    from django.utils import timezone

    round = make_round(project, 1)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    url = reverse("annotate-extend", args=[lease.comparison_id])
    assert _post(client, url, {}).status_code == 204
    Lease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    _client(other_annotator).get(reverse("annotate-round", args=[round.pk]))  # takes the free slot
    assert _post(client, url, {}).status_code == 409


def test_it_records_a_binary_choice_without_strength(annotator):
    project = make_project("Binary", scale="binary", allow_tie=False)
    round = make_round(project, 1)
    client = _client(annotator)
    html = client.get(reverse("annotate-round", args=[round.pk])).content.decode()
    assert "A is better" in html and "slightly" not in html and 'value="tie"' not in html
    lease = Lease.objects.get()
    _post(client, reverse("annotate-judge", args=[lease.comparison_id]), _answer(lease, choice="b"))
    judgment = Judgment.objects.get()
    assert judgment.ranking == [[lease.order[1]], [lease.order[0]]] and judgment.strength is None


def test_it_says_when_a_judgment_is_too_old_to_edit(annotator, project):
    from annotation.judgments import EDITABLE_RECENT

    round = make_round(project, EDITABLE_RECENT + 1)
    client = _client(annotator)
    for _ in range(EDITABLE_RECENT + 1):
        client.get(reverse("annotate-round", args=[round.pk]))
        lease = Lease.objects.get(annotator=annotator)
        _post(client, reverse("annotate-judge", args=[lease.comparison_id]), _answer(lease))
    oldest, newest = (
        Judgment.objects.order_by("created_at", "pk")[0],
        Judgment.objects.order_by("-created_at", "-pk")[0],
    )
    assert b"Only your last few" in client.get(reverse("annotate-edit", args=[oldest.pk])).content
    assert b"Only your last few" not in client.get(reverse("annotate-edit", args=[newest.pk])).content
    data = _answer(lease, choice="tie")
    response = _post(client, reverse("annotate-edit", args=[newest.pk]), data, htmx=True)
    assert response["HX-Push-Url"] == reverse("annotate-round", args=[round.pk])


def test_it_shows_a_round_being_generated_and_polls_until_it_opens(client, annotator):
    from training.models import TrainingRun

    project = make_project("Filling up")
    run = TrainingRun.objects.create(
        project=project, kind="generate", status="running", progress_done=3, progress_total=12
    )
    generating = make_round(project, 2, status="generating")
    generating.generation_run = run
    generating.save()
    client.force_login(annotator)

    html = client.get(reverse("annotate")).content.decode()
    assert "Being prepared" in html and "3 of 12 prompts" in html
    assert 'hx-trigger="every 3s"' in html

    generating.status = "open"
    generating.save()
    html = client.get(reverse("annotate")).content.decode()
    assert "Being prepared" not in html and 'hx-trigger="every 3s"' not in html
    assert reverse("annotate-round", args=[generating.pk]) in html


def test_an_item_that_was_not_handed_out_cannot_be_judged(annotator, project):
    """A gold item (or anyone else's) posted by hand would bypass the gold rate, the open-item cap
    and the randomised order: the submit is refused and nothing is recorded."""
    round = make_round(project, 2, gold=1)
    gold = Comparison.objects.get(round=round, is_gold=True)
    order = list(gold.items.order_by("position").values_list("response_id", flat=True))
    client = _client(annotator)
    data = {"client_id": str(uuid.uuid4()), "order": ",".join(map(str, order)), "choice": "a_much"}
    response = _post(client, reverse("annotate-judge", args=[gold.pk]), data, htmx=True)
    assert "was not handed out to you" in response.content.decode()
    assert not Judgment.objects.exists()
    assert Comparison.objects.get(pk=gold.pk).judgment_count == 0


def test_the_order_recorded_is_the_order_that_was_shown(annotator, project):
    round = make_round(project, 1)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    swapped = list(reversed(lease.order))
    data = _answer(lease, order=",".join(map(str, swapped)))
    response = _post(client, reverse("annotate-judge", args=[lease.comparison_id]), data, htmx=True)
    assert "reload it" in response.content.decode()
    assert not Judgment.objects.exists()
    response = _post(client, reverse("annotate-judge", args=[lease.comparison_id]), _answer(lease), htmx=True)
    assert Judgment.objects.get().order_shown == lease.order


def test_reporting_an_item_again_updates_the_one_open_report(annotator, project):
    round = make_round(project, 2)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    lease = Lease.objects.get()
    url = reverse("annotate-report", args=[lease.comparison_id])
    for reason in ("garbled", "garbled, and the second answer is cut off", "spam"):
        response = _post(client, url, {"reason": reason}, htmx=True)
    assert b"Your report on this item is updated" in response.content
    assert list(Report.objects.values_list("reason", flat=True)) == ["spam"]


def test_only_an_item_handed_out_can_be_reported(annotator, project):
    round = make_round(project, 2)
    client = _client(annotator)
    client.get(reverse("annotate-round", args=[round.pk]))
    other = Comparison.objects.exclude(pk=Lease.objects.get().comparison_id).get()
    response = _post(client, reverse("annotate-report", args=[other.pk]), {"reason": "spam"}, htmx=True)
    assert b"only items handed out to you" in response.content
    assert not Report.objects.exists()

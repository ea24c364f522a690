"""Annotators and quality: the figures per annotator and per round, deactivating and excluding."""

from __future__ import annotations

from django.urls import reverse

from annotation.models import AnnotatorProfile, Comparison, Judgment
from tests.dashboard.conftest import csrf_post, make_vote_round
from training.models import Checkpoint
from training.quality import annotator_quality, project_round_alphas


def setup_round(project, annotator, other_annotator):
    v0 = Checkpoint.objects.create(project=project, version=0, uri="/v0")
    v1 = Checkpoint.objects.create(project=project, version=1, uri="/v1")
    rnd, comparisons = make_vote_round(
        project, [v0, v1], ["left", "left", "right", "left"], annotators=[annotator, other_annotator]
    )
    # bob disagrees on the last comparison
    last = comparisons[-1].judgments.get(annotator=other_annotator)
    last.ranking = list(reversed(last.ranking))
    last.save()
    # the first comparison is gold: the left response should win
    first = comparisons[0]
    Comparison.objects.filter(pk=first.pk).update(
        is_gold=True, gold_ranking=[[g] for group in first.judgments.first().ranking for g in group]
    )
    return rnd


def test_it_reports_each_annotators_figures(project, annotator, other_annotator):
    setup_round(project, annotator, other_annotator)
    rows = {r.user.username: r for r in annotator_quality(project)}
    alice, bob = rows["alice"], rows["bob"]
    assert alice.judgments == bob.judgments == 4
    assert alice.median_seconds == 5.5  # 4, 5, 6, 7 s
    assert (alice.gold_passed, alice.gold_seen) == (1, 1)
    assert alice.agreement == 0.75 and alice.agreement_items == 4
    assert alice.left_pick_rate == 0.75 and alice.left_pick_n == 4
    assert bob.left_pick_rate == 0.5
    assert not alice.excluded


def test_it_computes_krippendorffs_alpha_per_round(project, annotator, other_annotator):
    rnd = setup_round(project, annotator, other_annotator)
    (quality,) = project_round_alphas(project)
    assert quality.round == rnd
    assert quality.judgments == 8 and quality.shared_comparisons == 0  # judgment_count is kept by the service
    assert quality.alpha is not None and -1 < quality.alpha < 1


def test_it_agrees_with_a_reference_alpha(project, annotator, other_annotator):
    setup_round(project, annotator, other_annotator)
    (quality,) = project_round_alphas(project)
    # Krippendorff (2011) nominal alpha for the pairs (L,L) (L,L) (R,R) (L,R), L = the left response won:
    # coincidences: L-L 4, R-R 2, L-R 1, R-L 1; n = 8, n_L = 5, n_R = 3
    # alpha = 1 - (n - 1) * o_LR*2 / (n_L * n_R * 2) = 1 - 7 * 2 / 30
    assert abs(quality.alpha - (1 - 7 * 2 / 30)) < 1e-9


def test_it_renders_the_annotators_page(admin_client, project, annotator, other_annotator):
    setup_round(project, annotator, other_annotator)
    html = admin_client.get(reverse("dashboard-annotators", args=[project.pk])).content.decode()
    assert "alice" in html and "bob" in html
    assert "Krippendorff" in html
    assert "100% <span" in html  # alice's gold accuracy


def test_it_deactivates_an_annotator_and_leaves_them_out_of_snapshots(admin_client, project, annotator):
    url = reverse("dashboard-deactivate", args=[annotator.pk])
    response = csrf_post(admin_client, url, {"next": reverse("dashboard-annotators", args=[project.pk])})
    assert response.status_code == 302 and response.url.endswith("/annotators/")
    annotator.refresh_from_db()
    assert not annotator.is_active
    assert AnnotatorProfile.objects.get(user=annotator).excluded_from_snapshots

    csrf_post(admin_client, reverse("dashboard-reactivate", args=[annotator.pk]))
    csrf_post(admin_client, reverse("dashboard-exclusion", args=[annotator.pk]), {"excluded": "0"})
    annotator.refresh_from_db()
    assert annotator.is_active
    assert not AnnotatorProfile.objects.get(user=annotator).excluded_from_snapshots


def test_it_never_redirects_off_site(admin_client, annotator):
    response = csrf_post(
        admin_client, reverse("dashboard-reactivate", args=[annotator.pk]), {"next": "//evil.example/"}
    )
    assert response.url == "/dashboard/"


def test_an_admin_cannot_deactivate_themselves(admin_client, admin_user):
    csrf_post(admin_client, reverse("dashboard-deactivate", args=[admin_user.pk]))
    admin_user.refresh_from_db()
    assert admin_user.is_active
    assert not Judgment.objects.exists()

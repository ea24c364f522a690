from django.urls import path

from annotation import views

urlpatterns = [
    path("", views.index, name="annotate"),
    path("round/<int:round_id>/", views.work, name="annotate-round"),
    path("comparison/<int:comparison_id>/judge/", views.judge, name="annotate-judge"),
    path("comparison/<int:comparison_id>/skip/", views.skip, name="annotate-skip"),
    path("comparison/<int:comparison_id>/report/", views.report, name="annotate-report"),
    path("comparison/<int:comparison_id>/extend/", views.extend, name="annotate-extend"),
    path("judgment/<int:judgment_id>/edit/", views.edit, name="annotate-edit"),
]

"""The admin dashboard, mounted at /dashboard/. Every URL is for admins only."""

from django.urls import path

from training.dashboard import views

urlpatterns = [
    path("", views.overview, name="dashboard"),
    path("runs/", views.runs, name="dashboard-runs"),
    path("runs/<int:run_id>/", views.run_detail, name="dashboard-run"),
    path("runs/<int:run_id>/metrics.json", views.run_metrics, name="dashboard-run-metrics"),
    path("runs/<int:run_id>/cancel/", views.run_cancel_view, name="dashboard-run-cancel"),
    path("runs/<int:run_id>/retry/", views.run_retry_view, name="dashboard-run-retry"),
    path("projects/<int:project_id>/", views.project_detail, name="dashboard-project"),
    path("projects/<int:project_id>/launch/<slug:kind>/", views.launch, name="dashboard-launch"),
    path("projects/<int:project_id>/checkpoints/", views.checkpoints, name="dashboard-checkpoints"),
    path("projects/<int:project_id>/samples/", views.samples, name="dashboard-samples"),
    path("projects/<int:project_id>/leaderboard/", views.leaderboard, name="dashboard-leaderboard"),
    path("projects/<int:project_id>/annotators/", views.annotators, name="dashboard-annotators"),
    path("checkpoints/<int:checkpoint_id>/publish/", views.checkpoint_publish_view, name="dashboard-publish"),
    path("checkpoints/<int:checkpoint_id>/retire/", views.checkpoint_retire_view, name="dashboard-retire"),
    path(
        "annotators/<int:user_id>/deactivate/", views.annotator_deactivate_view, name="dashboard-deactivate"
    ),
    path(
        "annotators/<int:user_id>/reactivate/", views.annotator_reactivate_view, name="dashboard-reactivate"
    ),
    path("annotators/<int:user_id>/exclusion/", views.annotator_exclusion_view, name="dashboard-exclusion"),
]

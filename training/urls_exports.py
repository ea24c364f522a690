"""/exports/: preference-data exports for researchers and admins."""

from django.urls import path

from training import views_exports as views

urlpatterns = [
    path("", views.exports_index, name="exports"),
    path("<int:export_id>/download/", views.export_download, name="export-download"),
]

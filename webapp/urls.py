from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webapp import login, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", login.login, name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # The admin's own password form, under the same throttle (resolved before admin.site.urls).
    path("admin/login/", login.refuse_while_blocked(admin.site.login), name="admin-login"),
    path("admin/", admin.site.urls),
    path("annotate/", include("annotation.urls")),
    path("dashboard/", include("training.urls")),
    path("api/", include("training.api")),
    path("exports/", include("training.urls_exports")),
]

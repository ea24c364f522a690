from django.apps import AppConfig


class WebappConfig(AppConfig):
    name = "webapp"

    def ready(self) -> None:
        # Counts failed sign-ins (user_login_failed) for the throttle in webapp/login.py.
        from webapp import login  # noqa: F401

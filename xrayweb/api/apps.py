from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "xrayweb.api"
    label = "api"
    verbose_name = "API"

    def ready(self) -> None:
        from xrayweb.api import schema  # noqa: F401  (registers the token scheme)

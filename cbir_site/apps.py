from django.apps import AppConfig


class CbirSiteConfig(AppConfig):
    name = "cbir_site"
    label = "cbir_site"

    def ready(self) -> None:
        from cbir_site import checks  # noqa: F401  (registers the system checks)
        from cbir_site import multipart

        multipart.install()

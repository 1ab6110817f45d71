from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _media_marker_write(**kwargs) -> None:
    from gallery.media import media_marker_write

    media_marker_write()


class GalleryConfig(AppConfig):
    name = "gallery"

    def ready(self) -> None:
        # ``migrate`` runs where the media volume is mounted (compose.yaml, the dev stack): the
        # workers then tell a missing file from a volume that is missing on their machine.
        post_migrate.connect(_media_marker_write, sender=self)

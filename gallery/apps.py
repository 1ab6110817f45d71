import logging

from django.apps import AppConfig
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


def _media_marker_write(**kwargs) -> None:
    from gallery.media import media_marker_write

    try:
        media_marker_write()
    except OSError as exc:  # a migration run where media storage is not writable: the first upload writes it
        logger.warning("could not mark media storage (%s); the first upload will", exc)


class GalleryConfig(AppConfig):
    name = "gallery"

    def ready(self) -> None:
        # ``migrate`` runs where the media volume is mounted (compose.yaml, the dev stack): the
        # workers then tell a missing file from a volume that is missing on their machine.
        post_migrate.connect(_media_marker_write, sender=self)

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from gallery.media import MediaStorageUnavailable, media_storage_check
from gallery.services import media_orphans_delete

MAX_MINUTES = 10**9  # about 1,900 years; a timedelta holds up to about 2.7 million


class Command(BaseCommand):
    help = (
        "Remove originals and thumbnails in media storage that no image row names (left by a crash "
        "mid-upload, or rows deleted outside the admin). Files newer than --older-than minutes are kept."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, default=60.0, help="minutes (default 60): newer files are kept")
        parser.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")

    def handle(self, *args, older_than: float, dry_run: bool, **options):
        if not 0 <= older_than <= MAX_MINUTES:  # NaN fails this too
            raise CommandError(f"--older-than takes minutes from 0 to {MAX_MINUTES:,}")
        try:
            media_storage_check()  # else it would find nothing, and say that all is clean
        except MediaStorageUnavailable as exc:
            raise CommandError(str(exc)) from None
        orphans = media_orphans_delete(older_than=timedelta(minutes=older_than), dry_run=dry_run)
        for name in orphans[:20]:
            self.stdout.write(f"  {name}")
        if len(orphans) > 20:
            self.stdout.write(f"  ... and {len(orphans) - 20} more")
        self.stdout.write(f"{len(orphans)} orphaned files {'would be removed' if dry_run else 'removed'}.")

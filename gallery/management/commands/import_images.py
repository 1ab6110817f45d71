import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError, OperationalError
from tqdm import tqdm

from gallery.models import Collection, Image, one_line
from gallery.selectors import collection_stats
from gallery.services import CollectionGone, StorageFailed, collection_get_or_create, collection_import, import_path_check
from search.models import EncoderVersion


LATE_FAILURES_SHOWN = 20
# After this long without an image finishing, --wait says what the pending images are waiting
# for (their recorded reason), or asks whether a worker is running.
STALL_NOTICE_S = 30


class Command(BaseCommand):
    help = "Import a folder tree or a .zip of images into a collection; workers index them in the background."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--collection", required=True, help="collection name (created if missing)")
        parser.add_argument("--labels-from-dirs", action="store_true", help="label = the image's parent folder name")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until every image is indexed or failed")

    def handle(self, *args, path: Path, **options):
        try:
            import_path_check(path)  # before a collection is made
            self._import(path, **options)
        except FileNotFoundError as exc:  # no such path, a device or a FIFO (or one since the check)
            raise CommandError(str(exc)) from None
        except (OperationalError, InterfaceError) as exc:  # the chunk in progress was rolled back, its files removed
            raise CommandError(
                f"the database does not answer ({' '.join(str(exc).split())}); images committed before stay. "
                "Run the same import again later: they come back as duplicates"
            ) from None

    def _import(self, path: Path, *, collection: str, labels_from_dirs: bool, wait: bool, **options) -> None:
        try:
            target = collection_get_or_create(name=collection)
        except ValueError as exc:  # no name, or one the column cannot hold
            raise CommandError(str(exc)) from None
        try:
            report = collection_import(collection=target, path=path, labels_from_dirs=labels_from_dirs)
        except CollectionGone as gone:
            raise CommandError(f"{gone} ({gone.report.summary()} before it went)") from None
        except StorageFailed as failed:  # its message says what was kept
            raise CommandError(str(failed)) from None
        self.stdout.write(f"{target.name}: {report.summary()}")
        for name, reason in report.failed + report.skipped:
            self.stdout.write(f"  {name}: {one_line(reason)}")
        if wait:
            self._wait(target)
            self._report_late_failures(target, report)

    def _wait(self, collection) -> None:
        stats = collection_stats(collection=collection)
        shown: set[str] = set()
        # initial: the images indexed while the files were still being stored are not counted in
        # the bar's own rate and time left (they made its first second read ~200,000 img/s)
        with tqdm(total=stats["total"], initial=stats["indexed"] + stats["failed"], desc="indexing", unit="img") as bar:
            finished, since = -1, time.monotonic()
            while True:
                stats = collection_stats(collection=collection)
                # asked after the counts: a deletion that commits between the two is still seen
                if not Collection.objects.filter(pk=collection.pk).exists():
                    bar.close()
                    raise CommandError(
                        f"collection {collection.name!r} was deleted while this command waited for its images to be indexed; "
                        f"its {bar.total} images and their files went with it"
                    )
                done = stats["indexed"] + stats["failed"]
                if done < bar.n:
                    # finished images deleted meanwhile: tqdm's rate counts from ``initial``, so it
                    # moves down with them instead of making the rate negative
                    bar.initial = max(0, bar.initial - (bar.n - done))
                # images deleted (or added by another import) meanwhile change what there is to finish
                bar.total, bar.n = stats["total"], done
                if bar.n != finished:
                    finished, since = bar.n, time.monotonic()
                elif time.monotonic() - since >= STALL_NOTICE_S:
                    notice = self._stall_notice(collection)
                    if notice not in shown:
                        shown.add(notice)
                        bar.write(notice, file=self.stdout, end="")
                bar.set_postfix(pending=stats["pending"], failed=stats["failed"], rate=f"{stats['indexed_per_second']}/s", refresh=False)
                bar.refresh()  # once per poll: set_postfix's own refresh printed each line twice
                if stats["pending"] == 0:
                    break
                no_encoder = not EncoderVersion.objects.filter(status__in=["active", "activating"]).exists()
                if no_encoder and not Image.objects.filter(collection=collection, status="pending", thumbnail="").exists():
                    bar.close()
                    self.stdout.write(
                        f"{stats['pending']} images are stored and thumbnailed, and wait for an encoder: "
                        f"train one with `manage.py train_encoder --collection {collection.name!r} --activate`"
                    )
                    break
                time.sleep(1)

    @staticmethod
    def _stall_notice(collection) -> str:
        reason = (
            Image.objects.filter(collection=collection, status=Image.Status.PENDING).exclude(error="")
            .order_by("-id").values_list("error", flat=True).first()
        )
        if reason:
            return f"no image finished in the last {STALL_NOTICE_S} s; the pending ones say: {reason}"
        return (
            f"no image finished in the last {STALL_NOTICE_S} s: is a worker running (`celery -A workers worker`), "
            "and can it reach the broker?"
        )

    def _report_late_failures(self, collection, report) -> None:
        """The images of this import that a worker found unusable (truncated or corrupt data that
        the header check could not see), each with its reason, at most ``LATE_FAILURES_SHOWN``."""
        created = set(report.created) | {image_id for _, image_id in report.retried}  # retried: queued again
        if not created:
            return
        upload_failures = {entry["id"] for entry in report.results if entry.get("status") == "failed"}
        late = [
            image
            for image in Image.objects.filter(
                collection=collection, status=Image.Status.FAILED, id__gte=min(created), id__lte=max(created)
            ).order_by("id")
            if image.id in created and image.id not in upload_failures
        ]
        if not late:
            return
        self.stdout.write(f"{len(late)} failed while indexing:")
        for image in late[:LATE_FAILURES_SHOWN]:
            # names are stored on one line (escaped on the way in, refused in the admin, migration
            # gallery 0007 for older rows); an error is an exception's text, and may not be
            self.stdout.write(f"  {image.original_name}: {one_line(image.error)}")
        if len(late) > LATE_FAILURES_SHOWN:
            self.stdout.write(
                f"  ... and {len(late) - LATE_FAILURES_SHOWN} more: GET /api/collections/{collection.pk}/images/?status=failed"
            )

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.media import MediaStorageUnavailable, media_storage_check
from gallery.models import Collection, Image
from gallery.selectors import COPY_KEEP_RULES
from gallery.services import CopyRemovalStep, collection_remove_copies

PAIRS_SHOWN = 20


class Command(BaseCommand):
    help = (
        "Delete the copies in a collection (the same picture at another size, quality or format, as its "
        "copies page finds them), keeping one picture of each: the largest, or the oldest. Only images of "
        "the collection are compared and deleted. --dry-run lists what would go."
    )

    def add_arguments(self, parser):
        parser.add_argument("--collection", required=True, help="collection name")
        parser.add_argument(
            "--keep", choices=COPY_KEEP_RULES, default="largest",
            help="which picture of a set of copies stays: the most pixels (then the oldest), or the first imported",
        )
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")

    def handle(self, *args, collection: str, keep: str, dry_run: bool, **options):
        try:
            media_storage_check()  # else no thumbnail could be compared, and the rows' files would stay behind
        except MediaStorageUnavailable as exc:
            raise CommandError(str(exc)) from None
        target = Collection.objects.filter(name=collection).first()
        if target is None:
            raise CommandError(f"no collection is named {collection!r}")
        unsigned = Image.objects.filter(collection=target, signature__isnull=True).count()
        total = Image.objects.filter(collection=target).count() - unsigned
        doomed: dict[int, int] = {}
        deleted, step, rounds, unlike = 0, CopyRemovalStep(), 0, 0
        bar = tqdm(total=total, desc="checking", unit="img")
        while step is not None:
            if step.round != rounds:  # a new round checks the images left again
                rounds, unlike = step.round, 0  # the images left as unlike are found again each round
                bar.reset(total=total - deleted)
                bar.set_description(f"round {rounds}, checking")
            removal = collection_remove_copies(collection=target, keep=keep, step=step, dry_run=dry_run)
            doomed |= removal.plan.doomed
            deleted += removal.deleted
            unlike += removal.plan.unlike
            bar.update(removal.plan.checked)
            bar.set_postfix(copies=deleted if not dry_run else len(doomed), refresh=False)
            step = removal.next
        bar.close()
        rule = "the largest" if keep == "largest" else "the oldest"
        if dry_run:
            self._show(doomed)
            self.stdout.write(
                f"{target.name}: {len(doomed)} copies would be deleted, keeping {rule} picture of each "
                "(a dry run shows the first round: removing them can take more rounds, and find more)."
            )
        else:
            self.stdout.write(
                f"{target.name}: deleted {deleted} copies in {rounds} round{'s' if rounds > 1 else ''}, keeping {rule} picture of each."
            )
        if unlike:
            self.stdout.write(
                f"{unlike} images were left although their copy signatures match a picture kept: the pictures differ in a "
                "region (clip art drawn alike, flags with another badge), or one has no thumbnail to compare. Their copies "
                "page lists them."
            )
        if unsigned:
            self.stdout.write(
                f"{unsigned} images were not checked: they have no copy signature yet (still pending, or indexed before "
                "signatures: `manage.py rebuild_thumbnails` gives them one)."
            )

    def _show(self, doomed: dict[int, int]) -> None:
        pairs = sorted(doomed.items())[:PAIRS_SHOWN]
        rows = Image.objects.in_bulk([image_id for pair in pairs for image_id in pair])
        for image_id, copy_of in pairs:
            self.stdout.write(f"  {self._describe(rows.get(image_id), image_id)} is a copy of {self._describe(rows.get(copy_of), copy_of)}")
        if len(doomed) > PAIRS_SHOWN:
            self.stdout.write(f"  ... and {len(doomed) - PAIRS_SHOWN} more")

    @staticmethod
    def _describe(image: Image | None, image_id: int) -> str:
        if image is None:  # deleted meanwhile
            return f"#{image_id}"
        return f"{image.original_name} (#{image_id}, {image.width}x{image.height})"

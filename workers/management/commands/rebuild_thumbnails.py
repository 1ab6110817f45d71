from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.media import MediaStorageUnavailable, media_storage_check
from gallery.models import Collection, Image
from workers.services import images_rebuild_thumbnails

BATCH = 256


class Command(BaseCommand):
    help = (
        "Make the thumbnails (and recorded sizes) of indexed images again, as indexing makes them now: "
        "for images indexed before a change to how they are made. Vectors are left as they are."
    )

    def add_arguments(self, parser):
        parser.add_argument("--collection", help="only this collection's images (default: all)")

    def handle(self, *args, **options):
        try:
            media_storage_check()  # else every image would be reported unreadable
        except MediaStorageUnavailable as exc:
            raise CommandError(str(exc)) from None
        images = Image.objects.filter(status=Image.Status.INDEXED).exclude(file="")
        if options["collection"]:
            collection = Collection.objects.filter(name=options["collection"]).first()
            if collection is None:
                raise CommandError(f"no collection {options['collection']!r}")
            images = images.filter(collection=collection)
        ids = list(images.order_by("id").values_list("id", flat=True))
        rebuilt, unreadable = 0, []
        with tqdm(total=len(ids), unit="img", desc="thumbnails", disable=not ids) as progress:
            for start in range(0, len(ids), BATCH):
                done, failed = images_rebuild_thumbnails(image_ids=ids[start : start + BATCH])
                rebuilt, unreadable = rebuilt + done, unreadable + failed
                progress.update(len(ids[start : start + BATCH]))
        for image_id, reason in unreadable:
            self.stderr.write(f"image {image_id}: {reason} (its thumbnail is kept)")
        self.stdout.write(f"{rebuilt} thumbnails rebuilt, {len(unreadable)} images could not be read")

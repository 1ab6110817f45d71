import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.export import EXPORT_MANIFEST, ExportReport, images_export_zip
from gallery.management.commands.remove_copies import _named
from gallery.media import MediaStorageUnavailable, media_storage_check
from gallery.models import Image
from gallery.selectors import collection_images


# The exit status when the archive was written but lacks files, or holds some cut short (media
# storage failed on them); 1 is for no archive written.
EXIT_INCOMPLETE = 3


class Command(BaseCommand):
    help = (
        "Write a collection's original files into a zip archive: each labelled image in a folder named after "
        f"its label, each unlabelled one at the top, and {EXPORT_MANIFEST} (every image, with its id, label, "
        "SHA-256, status, and why it is not in the archive where it is not). `import_images ARCHIVE "
        "--labels-from-dirs` imports it again with the same labels. Exits with 1 when no archive was written, and "
        f"with {EXIT_INCOMPLETE} when it was but lacks files or holds some cut short (media storage failed on them)."
    )

    def add_arguments(self, parser):
        parser.add_argument("archive", help="the .zip file to write")
        parser.add_argument("--collection", required=True, help="collection name")
        parser.add_argument("--label", default="", help="only the images with this label")
        parser.add_argument("--status", choices=Image.Status.values, default="", help="only the images with this status")
        parser.add_argument("--force", action="store_true", help="replace the archive if the file exists")

    def handle(self, *args, archive: str, collection: str, label: str, status: str, force: bool, **options):
        target = Path(archive)
        if target.exists() and not force:
            raise CommandError(f"{target} exists; --force replaces it")
        if target.exists() and not target.is_file():
            raise CommandError(f"{target} is not a regular file")
        try:
            media_storage_check()
        except MediaStorageUnavailable as exc:
            raise CommandError(str(exc)) from None
        source = _named(collection)
        # Written beside the target and renamed once complete: an export that fails or is
        # stopped midway leaves no archive that looks whole under the name asked for.
        partial = target.with_name(f".{target.name}.partial")
        report = ExportReport()
        chosen = collection_images(collection=source, label=label, status=status)
        total = chosen.count()
        try:
            with open(partial, "wb") as out, tqdm(total=total, unit="img", disable=None) as bar:
                for piece in images_export_zip(images=chosen, report=report):
                    out.write(piece)
                    bar.update(report.files + report.missing + report.without_file - bar.n)
            os.replace(partial, target)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise CommandError(f"could not write {target}: {exc.strerror or exc}") from None
            raise
        self.stdout.write(
            f"{target}: {report.files:,} files ({report.bytes / 1e6:,.1f} MB) from {source.name!r}"
            + (f"; {report.without_file:,} failed at upload, with no file (listed in {EXPORT_MANIFEST})" if report.without_file else "")
        )
        gaps = []
        if report.cut_short:
            gaps.append(
                f"{report.cut_short:,} file(s) cut short: media storage failed reading them midway, so the archive holds "
                f"only their first bytes"
            )
        if report.missing:
            gaps.append(f"{report.missing:,} image(s) not exported: media storage could not give their files")
        if gaps:  # a script taking backups must not read this as a whole copy
            raise CommandError(f"{target} is incomplete: {'; '.join(gaps)} ({EXPORT_MANIFEST} names them)", returncode=EXIT_INCOMPLETE)

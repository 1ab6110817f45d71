from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from gallery.media import MediaStorageUnavailable, media_storage_check
from gallery.models import Collection, CopyRemovalRun, Image
from gallery.selectors import COPY_KEEP_RULES
from gallery.services import (
    CopyRemovalStep,
    CopyRemovalUnderway,
    StretchUnderway,
    collection_remove_copies,
    copy_removal_advance,
    copy_removal_record,
    copy_removal_stop,
    run_record_error,
)

PAIRS_SHOWN = 20


def _named(name: str) -> Collection:
    target = Collection.objects.filter(name=name).first()
    if target is None:
        raise CommandError(f"no collection is named {name!r}")
    return target


class Command(BaseCommand):
    help = (
        "Delete the copies in a collection (the same picture at another size, quality or format, as its "
        "copies page finds them), keeping one picture of each: the largest, or the oldest. Only images of "
        "the collection are compared and deleted. --dry-run lists what would go; --stop stops a removal "
        "running there (started here, on the copies page, in the admin or by the API)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--collection", required=True, help="collection name")
        parser.add_argument(
            "--keep", choices=COPY_KEEP_RULES, default="largest",
            help="which picture of a set of copies stays: the most pixels (then the oldest), or the first imported",
        )
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
        parser.add_argument(
            "--stop", action="store_true",
            help="stop the removal running in the collection once the images a worker is on are done; nothing else",
        )

    def handle(self, *args, collection: str, keep: str, dry_run: bool, stop: bool, **options):
        if stop:
            self._stop(_named(collection))
            return
        try:
            media_storage_check()  # else no thumbnail could be compared, and the rows' files would stay behind
        except MediaStorageUnavailable as exc:
            raise CommandError(str(exc)) from None
        target = _named(collection)
        unsigned = Image.objects.filter(collection=target, signature__isnull=True).count()
        total = Image.objects.filter(collection=target).count() - unsigned
        rule = "the largest" if keep == "largest" else "the oldest"
        if dry_run:
            self._dry_run(target, keep, total, rule)
        else:
            self._remove(target, keep, total, rule)
        if unsigned:
            self.stdout.write(
                f"{unsigned} images were not checked: they have no copy signature yet (still pending, or indexed before "
                "signatures: `manage.py rebuild_thumbnails` gives them one)."
            )

    def _stop(self, target: Collection) -> None:
        try:
            run = copy_removal_stop(collection=target)
        except StretchUnderway as exc:
            raise CommandError(f"{target.name}: {exc}") from None
        if run is None:
            raise CommandError(f"{target.name}: no removal of its copies is running")
        self.stdout.write(f"{target.name}: the removal is stopped in round {run.round}, after {run.deleted} copies deleted.")

    def _dry_run(self, target: Collection, keep: str, total: int, rule: str) -> None:
        """The rounds a removal would go through, each planned as if what the ones before named were
        deleted; what each names is listed."""
        doomed: dict[int, int] = {}
        unlike, rounds, step = 0, 0, CopyRemovalStep()
        bar = tqdm(total=total, unit="img")
        while step is not None:
            if step.round != rounds:
                rounds, unlike = step.round, 0  # the images left as unlike are found again each round
                bar.reset(total=total if step.among is None else len(step.among))  # a later round checks what the one before left
                bar.set_description(f"round {rounds}, checking")
            removal = collection_remove_copies(collection=target, keep=keep, step=step, dry_run=True)
            doomed |= removal.plan.doomed
            unlike += removal.plan.unlike
            bar.update(removal.plan.checked)
            bar.set_postfix(copies=len(doomed), refresh=False)
            step = removal.next
        bar.close()
        self._show(doomed)
        self.stdout.write(
            f"{target.name}: {len(doomed)} copies would be deleted in {rounds} round{'s' if rounds > 1 else ''}, keeping {rule} "
            "picture of each."
        )
        self._unlike(unlike)

    def _remove(self, target: Collection, keep: str, total: int, rule: str) -> None:
        """The walk of ``copy_removal_advance``, here instead of in the workers, recorded as a run
        like theirs: the copies page shows its progress and can stop it. Interrupted (Ctrl-C), the
        command stops the run; if it dies otherwise midway, the workers' sweep takes the run up where
        it stopped."""
        try:
            run = copy_removal_record(collection=target, keep=keep)
        except CopyRemovalUnderway as exc:
            raise CommandError(f"{target.name}: {exc}; its copies page shows its progress") from None
        bar = tqdm(total=total, unit="img")
        try:
            self._walk(run, total, bar)
        except KeyboardInterrupt:  # a stretch under way was rolled back
            bar.close()
            try:
                stopped = copy_removal_stop(collection=target)
            except StretchUnderway as exc:  # a worker's sweep took the run up meanwhile, and is on it
                raise CommandError(f"{target.name}: interrupted, but the removal goes on: {exc}") from None
            deleted = (stopped or CopyRemovalRun.objects.get(pk=run.pk)).deleted
            raise CommandError(f"{target.name}: interrupted; the removal is stopped after {deleted} copies deleted") from None
        bar.close()
        if run.status == CopyRemovalRun.Status.RUNNING:  # the workers' sweep took it up meanwhile
            self.stdout.write(f"{target.name}: deleted {run.deleted} copies so far; the workers go on with the rest.")
            return
        if run.status == CopyRemovalRun.Status.FAILED:
            raise CommandError(f"{target.name}: deleted {run.deleted} copies, then {run.error}")
        if run.status == CopyRemovalRun.Status.STOPPED:
            raise CommandError(f"{target.name}: the removal was stopped (on the copies page, in the admin or by the API) after {run.deleted} copies deleted")
        self.stdout.write(
            f"{target.name}: deleted {run.deleted} copies in {run.round} round{'s' if run.round > 1 else ''}, keeping {rule} picture of each."
        )
        self._unlike(run.unlike)

    @staticmethod
    def _walk(run: CopyRemovalRun, total: int, bar: tqdm) -> None:
        rounds = 0
        while run.status == CopyRemovalRun.Status.RUNNING:
            if run.round != rounds:  # a later round checks the images the one before left with copies
                rounds = run.round
                bar.reset(total=total if rounds == 1 else run.candidates.filter(round=rounds - 1).count())
                bar.set_description(f"round {rounds}, checking")
            try:
                removal = copy_removal_advance(run_id=run.pk, round_number=run.round, after=run.after)
            except Exception as exc:
                run_record_error(model=CopyRemovalRun, run_id=run.pk, error=exc)
                raise
            run.refresh_from_db()
            if removal is None:
                return
            bar.update(removal.plan.checked)
            bar.set_postfix(copies=run.deleted, refresh=False)

    def _unlike(self, unlike: int) -> None:
        if unlike:
            self.stdout.write(
                f"{unlike} images were left although their copy signatures match a picture kept: the pictures differ in a "
                "region (clip art drawn alike, flags with another badge), or one has no thumbnail to compare. Their copies "
                "page lists them."
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

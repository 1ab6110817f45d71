import itertools

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from cbir_site.admin_actions import SelectionCheckedAdmin
from gallery.export import ExportsBusy, images_export_response
from gallery.forms import MoveImagesForm, UploadImagesForm
from gallery.media import MediaStorageUnavailable
from gallery.models import Collection, CopyRemovalRun, Image, MoveRun
from gallery.selectors import collection_images, collection_list_with_stats, collection_stats, move_runs_counted
from gallery.services import (
    MOVE_IMAGES_MAX,
    CollectionGone,
    CopyRemovalUnderway,
    ImportReport,
    MoveTargetGone,
    QueueUnavailable,
    StretchUnderway,
    StorageFailed,
    collection_delete,
    copy_removal_start,
    copy_removal_stop,
    folder_uploads_to_incoming,
    images_create,
    images_delete,
    images_index_again,
    images_move,
    images_move_start,
    move_run_stop,
    uploads_to_incoming,
)


def _zip_download(model_admin: admin.ModelAdmin, request, images, *, name: str):
    """The admin's zip of ``images`` named ``name``, or a message where media storage is not
    mounted on this web server or every download slot is taken."""
    try:
        return images_export_response(images, name=name)
    except MediaStorageUnavailable as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
    except ExportsBusy as exc:
        model_admin.message_user(request, str(exc), messages.WARNING)
    return None


@admin.register(Collection)
class CollectionAdmin(SelectionCheckedAdmin):
    list_display = ["name", "total", "indexed", "pending", "failed", "upload_link"]
    search_fields = ["name"]
    readonly_fields = ["progress", "upload_link"]
    actions = ["train_encoder", "train_fast_encoder", "remove_copies", "export_zip"]

    @admin.action(description="Train an encoder on this collection, then activate it (in a worker)")
    def train_encoder(self, request, queryset):
        self._queue_training(request, queryset, gradient_words=True)

    # Kept as short as the other actions: the longest sets the width of the admin's action menu.
    @admin.action(description="Train a faster, less precise encoder (no gradient words), then activate it (in a worker)")
    def train_fast_encoder(self, request, queryset):
        self._queue_training(request, queryset, gradient_words=False)

    def _queue_training(self, request, queryset, *, gradient_words: bool) -> None:
        from workers.services import encoder_queue_training

        for collection in queryset:
            encoder = encoder_queue_training(collection=collection, gradient_words=gradient_words)
            link = reverse("admin:search_encoderversion_change", args=[encoder.pk])
            encoder.refresh_from_db()  # sent once committed: here, in autocommit, already
            if encoder.status == encoder.Status.FAILED:
                self.message_user(request, format_html('<a href="{}">{}</a>: {}', link, encoder, encoder.error), messages.ERROR)
                continue
            self.message_user(
                request,
                format_html('Training <a href="{}">{}</a> queued; its progress shows on its page.', link, encoder),
                messages.SUCCESS,
            )

    @admin.action(description="Remove the copies in these collections, keeping the largest picture of each (in a worker)", permissions=["remove_copies"])
    def remove_copies(self, request, queryset):
        for collection in queryset:
            link = reverse("gallery:collection-copies", args=[collection.pk])
            try:
                copy_removal_start(collection=collection, keep="largest")
            except CopyRemovalUnderway as exc:
                self.message_user(request, format_html('<a href="{}">{}</a>: {}; its progress shows there.', link, collection, str(exc)), messages.WARNING)
                continue
            except QueueUnavailable as exc:
                self.message_user(request, format_html('<a href="{}">{}</a>: {}', link, collection, str(exc)), messages.ERROR)
                continue
            self.message_user(
                request, format_html('The workers are removing the copies in <a href="{}">{}</a>; its progress shows there.', link, collection),
                messages.SUCCESS,
            )

    @admin.action(description="Download this collection's original files as a zip")
    def export_zip(self, request, queryset):
        collections = list(queryset[:2])
        if len(collections) != 1:
            self.message_user(request, "Pick one collection to download: each is its own archive.", messages.WARNING)
            return None
        return _zip_download(self, request, collection_images(collection=collections[0]), name=collections[0].name)

    def has_remove_copies_permission(self, request) -> bool:
        return request.user.has_perm("gallery.delete_image")

    @admin.display(description="progress")
    def progress(self, obj):
        if obj.pk is None:
            return "—"
        stats = collection_stats(collection=obj)
        return (
            f"{stats['indexed']} indexed, {stats['pending']} pending, {stats['failed']} failed of {stats['total']}"
            f" · {stats['indexed_per_second']} images/s over the last minute"
        )

    def get_queryset(self, request):
        return collection_list_with_stats()

    # Deleting goes through the services, which also remove the images' files from storage.
    def delete_model(self, request, obj):
        collection_delete(collection=obj)

    def delete_queryset(self, request, queryset):
        for collection in queryset:
            collection_delete(collection=collection)

    @admin.display(ordering="total")
    def total(self, obj):
        return obj.total

    @admin.display(ordering="indexed")
    def indexed(self, obj):
        return obj.indexed

    @admin.display(ordering="pending")
    def pending(self, obj):
        return obj.pending

    @admin.display(ordering="failed")
    def failed(self, obj):
        return obj.failed

    @admin.display(description="upload")
    def upload_link(self, obj):
        if obj.pk is None:
            return "save the collection first"
        return format_html('<a href="{}">Upload images…</a>', reverse("admin:gallery_collection_upload", args=[obj.pk]))

    def get_urls(self):
        return [
            path(
                "<int:collection_id>/upload/",
                self.admin_site.admin_view(self.upload_view),
                name="gallery_collection_upload",
            ),
            *super().get_urls(),
        ]

    def upload_view(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        if not self.has_change_permission(request, collection):
            return redirect("admin:index")
        form = UploadImagesForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            report = ImportReport()
            options = {"label": form.cleaned_data["label"], "labels_from_dirs": form.cleaned_data["labels_from_dirs"], "report": report}
            files = itertools.chain(
                uploads_to_incoming(form.cleaned_data["files"], **options),
                folder_uploads_to_incoming(form.cleaned_data["folder"], form.cleaned_data["folder_paths"], **options),
            )
            try:
                report.merge(images_create(collection=collection, files=files))
            except CollectionGone as gone:
                self.message_user(request, str(gone), messages.ERROR)
                return redirect("admin:gallery_collection_changelist")
            except StorageFailed as failed:
                self.message_user(request, str(failed), messages.ERROR)
                return redirect("admin:gallery_collection_change", collection.pk)
            level = messages.WARNING if report.failed or report.skipped or report.duplicates else messages.SUCCESS
            self.message_user(request, f"{collection.name}: {report.summary()}.", level)
            problems = report.failed + report.skipped + [(name, f"duplicate of image {o}") for name, o in report.duplicates]
            for name, reason in problems[:20]:
                self.message_user(request, f"{name}: {reason}", messages.WARNING)
            return redirect("admin:gallery_collection_change", collection.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Upload images to {collection.name}",
            "collection": collection,
            "form": form,
            "opts": self.model._meta,
            "max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES,
        }
        return TemplateResponse(request, "admin/gallery/collection/upload.html", context)


# Images a move's confirmation page lists, and duplicates its message names, at most.
MOVE_SAMPLE_SHOWN = 20


@admin.register(Image)
class ImageAdmin(SelectionCheckedAdmin):
    list_display = ["id", "preview", "original_name", "collection", "label", "status", "error", "created_at"]
    list_filter = ["status", "collection"]
    search_fields = ["original_name", "label", "sha256"]
    # Images come in through the service only (Collections -> Upload images, the API, the
    # command), which checks, deduplicates and queues them; here they can be relabelled, moved
    # to another collection (the action, through ``images_move``) or deleted.
    readonly_fields = [
        "preview", "collection", "file", "sha256", "width", "height", "status", "error", "attempts", "thumbnail", "created_at",
        "updated_at",
    ]
    list_select_related = ["collection"]
    actions = ["index_again", "move_to_collection", "export_zip"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Download the selected images' original files as a zip")
    def export_zip(self, request, queryset):
        return _zip_download(self, request, queryset, name="images")

    @admin.action(description="Move selected images to another collection…", permissions=["change"])
    def move_to_collection(self, request, queryset):
        count = queryset.count()
        form = MoveImagesForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            target = form.cleaned_data["collection"]
            try:
                if count > MOVE_IMAGES_MAX:
                    # Each vector enters the search index again (about 1.3 ms an image): the
                    # workers move more than a request would wait for, a stretch at a time.
                    self._report_move_started(request, images_move_start(image_ids=queryset.values_list("pk", flat=True), to=target), target)
                else:
                    self._report_move(request, images_move(images=queryset, to=target), target)
            except (MoveTargetGone, QueueUnavailable) as exc:
                self.message_user(request, str(exc), messages.ERROR)
            return None
        # The selection travels as the changelist posted it (its ticks, or "all N" with its filters
        # in this page's address), so confirming acts on the same images.
        context = {
            **self.admin_site.each_context(request),
            "title": "Move images to another collection",
            "opts": self.model._meta,
            "form": form,
            "count": count,
            "count_shown": f"{count:,}",
            "in_background": f"{MOVE_IMAGES_MAX:,}" if count > MOVE_IMAGES_MAX else "",
            "sample": queryset.select_related("collection")[:MOVE_SAMPLE_SHOWN],
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/gallery/image/move.html", context)

    def _report_move_started(self, request, run: MoveRun, target: Collection) -> None:
        self.message_user(
            request,
            format_html(
                'The workers are moving {} images to <a href="{}">{}</a>, {} at a time; <a href="{}">Image moves</a> shows how far they are, and stops them.',
                f"{run.total:,}", reverse("gallery:collection-detail", args=[target.pk]), target,
                f"{MOVE_IMAGES_MAX:,}", reverse("admin:gallery_moverun_change", args=[run.pk]),
            ),
            messages.SUCCESS,
        )

    def _report_move(self, request, moved, target: Collection) -> None:
        link = reverse("gallery:collection-detail", args=[target.pk])
        if moved.moved:
            self.message_user(request, format_html('{} image(s) moved to <a href="{}">{}</a>.', len(moved.moved), link, target), messages.SUCCESS)
        if moved.duplicates:
            shown = ", ".join(f"#{image_id} (as #{held_id})" for image_id, held_id in moved.duplicates[:MOVE_SAMPLE_SHOWN])
            more = f" and {len(moved.duplicates) - MOVE_SAMPLE_SHOWN} more" if len(moved.duplicates) > MOVE_SAMPLE_SHOWN else ""
            self.message_user(
                request,
                f"{len(moved.duplicates)} image(s) stayed where they were: {target.name} holds the same file already: {shown}{more}.",
                messages.WARNING,
            )
        if moved.already:
            self.message_user(request, f"{len(moved.already)} image(s) were in {target.name} already.", messages.INFO)

    @admin.action(description="Index selected failed images again")
    def index_again(self, request, queryset):
        queued = images_index_again(images=queryset)
        self.message_user(
            request,
            f"{queued} failed image(s) queued for indexing again; "
            "images that are not failed, or whose file was refused at upload, were left as they are.",
            messages.SUCCESS if queued else messages.WARNING,
        )

    def delete_model(self, request, obj):
        images_delete(images=Image.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        images_delete(images=queryset)

    @admin.display(description="")
    def preview(self, obj):
        if not obj.display_url:
            return "—"
        return format_html('<img src="{}" style="height:64px;width:64px;object-fit:contain">', obj.display_url)


@admin.register(CopyRemovalRun)
class CopyRemovalRunAdmin(SelectionCheckedAdmin):
    """Each removal of a collection's copies: started from the Collections action, the copies page,
    the API or ``manage.py remove_copies``, and done by the workers. Read only: the workers write it."""

    list_display = ["collection", "status", "keep", "round", "checked", "deleted", "unlike", "started_at", "finished_at"]
    list_filter = ["status", "keep"]
    list_select_related = ["collection"]
    search_fields = ["collection__name"]
    date_hierarchy = "started_at"
    actions = ["stop"]

    @admin.action(description="Stop these removals (those still running), once the images a worker is on are done", permissions=["stop"])
    def stop(self, request, queryset):
        running = Collection.objects.filter(copy_removals__in=queryset.filter(status=CopyRemovalRun.Status.RUNNING)).distinct()
        if not running.exists():
            self.message_user(request, "None of the removals ticked is running: each had ended already.", messages.INFO)
        for collection in running:
            link = reverse("gallery:collection-copies", args=[collection.pk])
            try:
                run = copy_removal_stop(collection=collection)
            except StretchUnderway as exc:
                self.message_user(request, format_html('<a href="{}">{}</a>: {}.', link, collection, str(exc)), messages.WARNING)
                continue
            if run is None:
                self.message_user(request, format_html('<a href="{}">{}</a>: its removal had ended meanwhile.', link, collection), messages.INFO)
                continue
            self.message_user(
                request, format_html('The removal in <a href="{}">{}</a> is stopped, after {} copies deleted.', link, collection, run.deleted),
                messages.SUCCESS,
            )

    def has_stop_permission(self, request) -> bool:
        return request.user.has_perm("gallery.delete_image")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(MoveRun)
class MoveRunAdmin(SelectionCheckedAdmin):
    """Each move of more images than one request moves, started from the Images action and done
    by the workers. Read only: the workers write it; a person may stop a running one."""

    list_display = ["__str__", "to", "status", "progress", "moved", "duplicate_count", "already", "missing", "started_at", "finished_at"]
    list_filter = ["status"]
    list_select_related = ["to"]
    search_fields = ["to__name"]
    fields = ["to", "status", "progress", "moved", "duplicates_shown", "already", "missing", "error", "started_at", "progress_at", "finished_at"]
    readonly_fields = fields
    actions = ["stop"]

    def get_queryset(self, request):
        return move_runs_counted()

    @admin.action(description="Stop these moves (those still running), once the images a worker is on are moved", permissions=["stop"])
    def stop(self, request, queryset):
        running = list(queryset.filter(status=MoveRun.Status.RUNNING).values_list("pk", flat=True))
        if not running:
            self.message_user(request, "None of the moves ticked is running: each had ended already.", messages.INFO)
        for run_id in running:
            link = reverse("admin:gallery_moverun_change", args=[run_id])
            try:
                run = move_run_stop(run_id=run_id)
            except StretchUnderway as exc:
                self.message_user(request, format_html('<a href="{}">Move #{}</a>: {}.', link, run_id, str(exc)), messages.WARNING)
                continue
            if run is None:
                self.message_user(request, format_html('<a href="{}">Move #{}</a> had ended meanwhile.', link, run_id), messages.INFO)
                continue
            self.message_user(
                request,
                format_html(
                    '<a href="{}">Move #{}</a> is stopped, after {} of {} images checked ({} moved); the others stay where they are.',
                    link, run_id, f"{run.position:,}", f"{run.total:,}", f"{run.moved:,}",
                ),
                messages.SUCCESS,
            )

    def has_stop_permission(self, request) -> bool:
        return request.user.has_perm("gallery.change_image")

    @admin.display(description="progress")
    def progress(self, obj: MoveRun) -> str:
        return f"{obj.position:,} of {obj.total:,} checked"

    @admin.display(description="stayed (same file there)", ordering="duplicates_count")
    def duplicate_count(self, obj: MoveRun) -> int:
        return obj.duplicates_count

    @admin.display(description="stayed where they were: the collection holds the same file already")
    def duplicates_shown(self, obj: MoveRun) -> str:
        shown = ", ".join(f"#{image_id} (as #{held})" for image_id, held in obj.duplicates[:MOVE_SAMPLE_SHOWN * 10])
        more = len(obj.duplicates) - MOVE_SAMPLE_SHOWN * 10
        return (shown + (f" and {more:,} more" if more > 0 else "")) or "none"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

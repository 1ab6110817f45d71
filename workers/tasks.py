"""Celery tasks: ids in, a service call, retries on transient errors."""
import logging
from datetime import timedelta

from celery import shared_task
from celery.signals import worker_process_init
from django.conf import settings
from django.db import InterfaceError, OperationalError

from gallery.media import MediaStorageUnavailable, media_storage_check

logger = logging.getLogger(__name__)

# Errors after which the same request is simply tried again (autoretry): the database went away
# for a moment. They say nothing about the images, so they never count as an attempt on them.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
# The same for tasks that read or remove media files, which a worker without the shared media
# volume cannot do (gallery.media.media_storage_check): tried again later, maybe by another worker.
MEDIA_ERRORS = (*TRANSIENT_ERRORS, MediaStorageUnavailable)


@worker_process_init.connect
def _share_cores_between_pool_processes(**kwargs):
    """Each prefork child gets its share of the cores for torch, instead of all of them each."""
    import os

    import torch
    from django.conf import settings

    torch.set_num_threads(settings.CBIR_TORCH_THREADS or max(1, (os.cpu_count() or 1) // settings.CELERY_WORKER_CONCURRENCY))


@shared_task(
    bind=True, acks_late=True, autoretry_for=MEDIA_ERRORS, retry_backoff=True, max_retries=8,
    time_limit=settings.CBIR_INDEX_TIME_LIMIT_S,
)
def index_images(self, image_ids: list[int]) -> None:
    """A retry after a transient database error is not a new attempt on the images; a delivery
    again after a killed worker is (its ``retries`` is that of the message it repeats)."""
    from workers.services import images_index_request

    images_index_request(image_ids=image_ids, counted=not self.request.retries)


@shared_task(
    acks_late=True, autoretry_for=MEDIA_ERRORS, retry_backoff=True, max_retries=8,
    time_limit=settings.CBIR_INDEX_TIME_LIMIT_S,
)
def backfill_embeddings(encoder_id: int) -> None:
    """One batch of re-embedding per run, then re-enqueue: long backfills never hold a worker for hours
    and survive restarts."""
    from workers.services import encoder_backfill_step

    if not encoder_backfill_step(encoder_id=encoder_id):
        backfill_embeddings.delay(encoder_id)


@shared_task(acks_late=True, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True, max_retries=3)
def sweep_pending() -> int:
    """Periodic (celery beat): re-queue images stuck as pending, restart quiet re-embedding, copy
    removals and moves, and remove what deleted collections left in media storage."""
    from django.conf import settings

    from gallery.services import copy_removals_resume, deleted_collections_files_delete, move_runs_resume
    from workers.services import pending_sweep

    older_than = timedelta(seconds=settings.CBIR_SWEEP_AFTER_S)
    # The queue's work first: walking media storage for a deleted collection's files can take long
    # (a million of them) or fail (a mount gone bad), and must not hold up what waits to be queued.
    queued = pending_sweep(older_than=older_than)
    copy_removals_resume(older_than=older_than)
    move_runs_resume(older_than=older_than)
    try:
        deleted_collections_files_delete(older_than=older_than)
    except OSError:
        logger.exception("the sweep could not remove the files deleted collections left in media storage; the next one tries again")
    return queued


@shared_task(acks_late=False)
def train_encoder(encoder_id: int, *, activate: bool = True) -> int:
    """Train a planned encoder (``workers.services.encoder_plan``) and optionally activate it. Not
    acked late: a training run killed halfway is not silently restarted; it stays visible as such."""
    from search.models import EncoderVersion
    from search.services import encoder_activate
    from workers.services import encoder_train

    encoder = encoder_train(encoder=EncoderVersion.objects.get(pk=encoder_id), show_progress=False)
    if activate:
        encoder_activate(encoder=encoder)
    return encoder.pk


@shared_task(acks_late=True, autoretry_for=(MediaStorageUnavailable,), retry_backoff=True, max_retries=8)
def delete_media_files(names: list[str]) -> None:
    """Remove these files from media storage once the rows that named them are deleted."""
    from gallery.services import stored_files_delete

    media_storage_check()  # else the files would stay behind on the volume, and the task count as done
    stored_files_delete(names)


@shared_task(acks_late=True, autoretry_for=(MediaStorageUnavailable,), retry_backoff=True, max_retries=8)
def delete_collection_files(collection_id: int) -> int:
    """Remove a deleted collection's files from media storage."""
    from gallery.services import collection_files_delete

    media_storage_check()
    return collection_files_delete(collection_id)


@shared_task(
    acks_late=True, autoretry_for=MEDIA_ERRORS, retry_backoff=True, max_retries=8, time_limit=settings.CBIR_STRETCH_TIME_LIMIT_S,
)
def remove_copies(run_id: int, round_number: int | str, after: int = 0, *_old_round_and_count: int) -> None:
    """One stretch of a copy removal (``copy_removal_advance``: round ``round_number``, the images
    after ``after``) per run, then queue the next: a million images never hold a worker for long.
    A run killed midway is delivered again and does the stretch again; a message for a stretch
    already done, or of a removal stopped, does nothing; a removal whose next message was lost is
    queued again by the sweep. A stretch still going after ``CBIR_STRETCH_TIME_LIMIT_S`` (stuck on
    a lock or a hung read) is killed with its process, which rolls it back and frees its run for a
    stop; the sweep queues it again, and its fourth start ends the run as failed."""
    from gallery.models import CopyRemovalRun
    from gallery.services import copy_removal_advance, run_record_error

    # Queued before removals were recorded: (collection id, keep[, after[, round, deleted in round]]).
    if isinstance(round_number, str):
        _remove_copies_unrecorded(collection_id=run_id, keep=round_number)
        return
    media_storage_check()  # it compares thumbnails: without them every copy would look unlike, and stay
    try:
        removal = copy_removal_advance(run_id=run_id, round_number=round_number, after=after)
    except MEDIA_ERRORS:
        raise
    except Exception as exc:  # shown on the copies page while the tries last
        run_record_error(model=CopyRemovalRun, run_id=run_id, error=exc)
        raise
    if removal is not None and removal.next is not None:
        remove_copies.delay(run_id, removal.next.round, removal.next.after)


@shared_task(acks_late=True, time_limit=settings.CBIR_STRETCH_TIME_LIMIT_S)
def move_images(run_id: int, position: int) -> None:
    """One stretch of a move run (``move_run_advance``: its ids from ``position``), then queue the
    next: a move of any size never holds a worker for long. A stretch killed midway is delivered
    again and done again; a message for a stretch already done does nothing; a run whose next
    message was lost is queued again by the sweep. A stretch still going after
    ``CBIR_STRETCH_TIME_LIMIT_S`` is killed, as ``remove_copies``'s."""
    from gallery.models import MoveRun
    from gallery.services import move_run_advance, run_record_error

    try:
        following = move_run_advance(run_id=run_id, position=position)
    except Exception as exc:  # shown in the admin while the tries last
        run_record_error(model=MoveRun, run_id=run_id, error=exc)
        raise
    if following is not None:
        move_images.delay(run_id, following)


def _remove_copies_unrecorded(*, collection_id: int, keep: str) -> None:
    """A removal asked for before an upgrade that records them, its message still queued: it
    starts over as a recorded one, unless the collection went, the rule is unknown, or a removal
    runs there already. Its stretches done before the upgrade deleted what they deleted; the new
    run checks what is left."""
    from gallery.models import Collection
    from gallery.services import CopyRemovalUnderway, copy_removal_start

    collection = Collection.objects.filter(pk=collection_id).first()
    if collection is None:
        return
    try:
        copy_removal_start(collection=collection, keep=keep)
    except CopyRemovalUnderway:
        logger.info("collection %s: a removal of its copies runs already; an old message asking for one is dropped", collection_id)
    except ValueError as exc:
        logger.warning("collection %s: an old message asking to remove its copies is dropped: %s", collection_id, exc)

"""Writes to encoders and embeddings: storing vectors, and switching the active encoder."""
from __future__ import annotations

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from gallery.models import Image
from gallery.services import task_send_safely
from search.models import EncoderVersion, Embedding


# Each image's collection is read under a share lock, in the transaction that stores its vector:
# a move (gallery.services.images_move) updates the image and its vectors together, so it either
# waits for this insert and moves the new vector too, or commits first and this reads where it went.
# An image deleted meanwhile is not found here, and its vector is not stored.
_IMAGES_LOCK_SQL = "SELECT id, collection_id FROM gallery_image WHERE id = ANY(%s) ORDER BY id FOR SHARE"


@transaction.atomic
def embeddings_store(*, encoder: EncoderVersion, images: list[Image], vectors: np.ndarray) -> None:
    """Store one vector per image for ``encoder``, under the collection the image is in when it is
    stored. Idempotent: an existing (image, encoder) row wins, so a task that runs twice never
    writes two rows. Images deleted while they were embedded are left out."""
    if len(images) != len(vectors):
        raise ValueError("one vector per image")
    with connection.cursor() as cursor:
        cursor.execute(_IMAGES_LOCK_SQL, [[image.id for image in images]])
        collections = dict(cursor.fetchall())
    rows = [
        Embedding(image_id=image.id, collection_id=collections[image.id], encoder=encoder, vector=vector)
        for image, vector in zip(images, vectors)
        if image.id in collections
    ]
    Embedding.objects.bulk_create(rows, ignore_conflicts=True)


def images_mark_indexed(*, image_ids: list[int]) -> int:
    """Pending images that now have a vector from the active encoder become ``indexed``."""
    return (
        Image.objects.filter(
            id__in=image_ids,
            status=Image.Status.PENDING,
            embeddings__encoder__status=EncoderVersion.Status.ACTIVE,
        ).update(status=Image.Status.INDEXED, error="", indexed_at=timezone.now(), attempts=0)
    )


@transaction.atomic
def encoder_activate(*, encoder: EncoderVersion) -> None:
    """Start making ``encoder`` the active one: every image is re-embedded in the background,
    and only when all are done does the switch happen (``encoder_promote``). Until then search
    keeps using the current active encoder. At most one encoder is activating at a time."""
    from workers.tasks import backfill_embeddings

    encoder = EncoderVersion.objects.select_for_update().get(pk=encoder.pk)
    if encoder.status in (EncoderVersion.Status.ACTIVE, EncoderVersion.Status.ACTIVATING):
        return
    if encoder.status in (EncoderVersion.Status.TRAINING, EncoderVersion.Status.FAILED) or not encoder.checkpoint:
        raise ValueError(f"encoder {encoder} has no finished checkpoint and cannot be activated")
    EncoderVersion.objects.filter(status=EncoderVersion.Status.ACTIVATING).exclude(pk=encoder.pk).update(
        status=EncoderVersion.Status.TRAINED
    )
    encoder.status = EncoderVersion.Status.ACTIVATING
    encoder.save(update_fields=["status"])
    # a broker that is down leaves it activating with no progress: the sweep starts it again
    transaction.on_commit(lambda: task_send_safely(backfill_embeddings, encoder.pk))


def images_missing_embedding(*, encoder: EncoderVersion):
    """Images that should have a vector from ``encoder`` and do not: the backfill's dirty flag."""
    return (
        Image.objects.exclude(status=Image.Status.FAILED)
        .exclude(embeddings__encoder=encoder)
        .order_by("id")
    )


@transaction.atomic
def encoder_promote(*, encoder: EncoderVersion) -> bool:
    """Make an activating encoder the active one, atomically, once every image has its vector.

    Returns False (and changes nothing) when images are still missing. The previous active
    encoder is retired and its vectors are deleted, so the index holds one encoder's vectors
    (plus, during a switch, the next one's).
    """
    encoder = EncoderVersion.objects.select_for_update().get(pk=encoder.pk)
    if encoder.status != EncoderVersion.Status.ACTIVATING:
        return False
    if images_missing_embedding(encoder=encoder).exists():
        return False
    EncoderVersion.objects.filter(status=EncoderVersion.Status.ACTIVE).update(status=EncoderVersion.Status.RETIRED)
    encoder.status = EncoderVersion.Status.ACTIVE
    encoder.activated_at = timezone.now()
    encoder.error = ""  # what stopped its re-embedding on the way, if anything, is behind it
    encoder.save(update_fields=["status", "activated_at", "error"])
    Embedding.objects.filter(encoder__status=EncoderVersion.Status.RETIRED).delete()
    Image.objects.filter(status=Image.Status.PENDING, embeddings__encoder=encoder).update(
        status=Image.Status.INDEXED, error="", indexed_at=timezone.now()
    )
    return True


def encoder_record_evaluation(*, encoder_id: int, collection_name: str, metrics: dict) -> None:
    """Keep an evaluation's headline figures on the encoder version (shown in the admin)."""
    with transaction.atomic():
        encoder = EncoderVersion.objects.select_for_update().get(pk=encoder_id)
        encoder.metrics = {
            **encoder.metrics,
            "evaluation": {
                **encoder.metrics.get("evaluation", {}),
                collection_name: {k: v for k, v in metrics.items() if k.startswith(("P@", "mAP@")) or k in ("queries", "query_expansion")},
            },
        }
        encoder.save(update_fields=["metrics"])


@transaction.atomic
def vector_column_resize(*, dim: int) -> int:
    """Give the vector column and its HNSW index the width ``dim`` (CBIR_EMBEDDING_DIM after it
    changed). Vectors of another width cannot be converted: all are deleted, encoders of another
    width are retired, and indexed images go back to ``pending`` until an encoder of the new width
    is trained and activated. One transaction: on any error nothing changes. Returns how many
    vectors were deleted."""
    from django.conf import settings
    from django.db import connection

    if not 1 <= int(dim) <= 16000:
        raise ValueError("dim must be between 1 and 16000")
    deleted = Embedding.objects.count()
    Embedding.objects.all().delete()
    EncoderVersion.objects.exclude(dim=dim).exclude(
        status__in=[EncoderVersion.Status.RETIRED, EncoderVersion.Status.FAILED]
    ).update(status=EncoderVersion.Status.RETIRED)
    Image.objects.filter(status=Image.Status.INDEXED).update(status=Image.Status.PENDING, indexed_at=None)
    with connection.cursor() as cursor:
        # Django's foreign keys are deferred; ALTER TABLE refuses to run while their checks are queued
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("DROP INDEX IF EXISTS embedding_vector_hnsw")
        # a type modifier cannot be a query parameter; int() above makes it a plain number
        cursor.execute(f"ALTER TABLE search_embedding ALTER COLUMN vector TYPE vector({int(dim)})")
        cursor.execute(
            "CREATE INDEX embedding_vector_hnsw ON search_embedding USING hnsw (vector vector_cosine_ops) "
            "WITH (m = %s, ef_construction = %s)",
            [settings.CBIR_HNSW_M, settings.CBIR_HNSW_EF_CONSTRUCTION],
        )
    return deleted

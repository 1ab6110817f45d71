"""Every ranked read: nearest images by cosine distance, in PostgreSQL, through the HNSW index."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from pgvector.django import CosineDistance

from gallery import imaging
from gallery.models import Image
from search.models import EncoderVersion, Embedding


class SearchUnavailable(Exception):
    """No active encoder yet, so nothing can be ranked."""


class ImageNotIndexed(Exception):
    """The query image has no vector under the active encoder (pending or failed)."""


@dataclass(frozen=True)
class Hit:
    image: Image
    distance: float

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance


def encoder_active() -> EncoderVersion:
    encoder = EncoderVersion.objects.filter(status=EncoderVersion.Status.ACTIVE).first()
    if encoder is None:
        raise SearchUnavailable(
            "no active encoder yet: train one with `manage.py train_encoder --collection NAME --activate`"
        )
    return encoder


def similar_queryset(
    *,
    vector: Sequence[float] | np.ndarray,
    encoder: EncoderVersion,
    k: int,
    collection_ids: Sequence[int] | None = None,
    exclude_image_ids: Sequence[int] = (),
):
    """The ranking as one ORM query on the embedding table alone: ``ORDER BY vector <=> query LIMIT k``
    over one encoder's vectors, yielding (image_id, distance). Joins are left out on purpose: a
    single-table top-k is what the HNSW index serves; images are fetched by id afterwards."""
    queryset = Embedding.objects.filter(encoder=encoder)
    if collection_ids:
        queryset = queryset.filter(collection_id__in=list(collection_ids))
    if exclude_image_ids:
        queryset = queryset.exclude(image_id__in=list(exclude_image_ids))
    return (
        queryset.annotate(distance=CosineDistance("vector", np.asarray(vector, dtype=np.float32)))
        .order_by("distance")
        .values_list("image_id", "distance")[:k]
    )


@contextmanager
def hnsw_session(*, k: int):
    """A transaction in which HNSW scans look at enough candidates for ``k`` results, and iterate
    (pgvector 0.8 iterative scans) when filters drop candidates, so filtered queries are not short."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'strict_order', true)",
                [str(max(settings.CBIR_HNSW_EF_SEARCH, k))],
            )
        yield


def vector_list_similar(
    *,
    vector: Sequence[float] | np.ndarray,
    encoder: EncoderVersion,
    k: int,
    collection_ids: Sequence[int] | None = None,
    exclude_image_ids: Sequence[int] = (),
) -> list[Hit]:
    """The ``k`` images nearest to ``vector`` by cosine distance under ``encoder``, nearest first."""
    queryset = similar_queryset(
        vector=vector, encoder=encoder, k=k, collection_ids=collection_ids, exclude_image_ids=exclude_image_ids
    )
    with hnsw_session(k=k):
        ranked = list(queryset)
    images = Image.objects.select_related("collection").in_bulk([image_id for image_id, _ in ranked])
    return [Hit(image=images[image_id], distance=float(distance)) for image_id, distance in ranked if image_id in images]


def image_list_similar(*, image: Image, k: int, collection_ids: Sequence[int] | None = None) -> list[Hit]:
    """The ``k`` images most similar to an indexed image, the image itself left out."""
    encoder = encoder_active()
    embedding = Embedding.objects.filter(image=image, encoder=encoder).only("vector").first()
    if embedding is None:
        raise ImageNotIndexed(f"image {image.pk} is {image.status}" + (f": {image.error}" if image.error else ""))
    return vector_list_similar(
        vector=embedding.vector, encoder=encoder, k=k, collection_ids=collection_ids, exclude_image_ids=[image.pk]
    )


def upload_list_similar(*, data: bytes, k: int, collection_ids: Sequence[int] | None = None) -> list[Hit]:
    """The ``k`` images most similar to an uploaded file. Raises ``ImageRejected`` for bad bytes."""
    encoder_active()  # fail fast, before decoding, when nothing can be ranked
    if len(data) > settings.CBIR_MAX_UPLOAD_BYTES:
        raise imaging.ImageRejected(f"file too large: more than {settings.CBIR_MAX_UPLOAD_BYTES:,} bytes")
    return picture_list_similar(picture=imaging.decode_rgb(data), k=k, collection_ids=collection_ids)


def picture_list_similar(*, picture, k: int, collection_ids: Sequence[int] | None = None) -> list[Hit]:
    """The ``k`` images most similar to a decoded RGB picture, embedded here with the active encoder."""
    from workers.autoencoder.inference import load_embedder

    encoder = encoder_active()
    vector = load_embedder(encoder.checkpoint.path, device=settings.CBIR_DEVICE).embed([picture])[0]
    return vector_list_similar(vector=vector, encoder=encoder, k=k, collection_ids=collection_ids)


def collection_evaluate(*, collection_id: int, ks: Sequence[int], progress=None) -> dict:
    """Precision@k and mAP@k for every labelled image of a collection used as a query against all
    the other images of the collection, through the same ranking as the API (``vector_list_similar``)."""
    from collections import Counter, defaultdict

    from search.evaluation import average_precision_at_k, precision_at_k

    encoder = encoder_active()
    rows = list(
        Embedding.objects.filter(encoder=encoder, collection_id=collection_id)
        .exclude(image__label="")
        .values_list("image_id", "image__label", "vector")
        .order_by("image_id")
    )
    if not rows:
        raise ValueError("the collection has no indexed, labelled images to evaluate")
    label_counts = Counter(label for _, label, _ in rows)
    depth = max(ks)
    sums: dict[str, float] = defaultdict(float)
    per_label: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for image_id, label, vector in rows:
        hits = vector_list_similar(
            vector=vector, encoder=encoder, k=depth, collection_ids=[collection_id], exclude_image_ids=[image_id]
        )
        relevant = [hit.image.label == label for hit in hits] + [False] * (depth - len(hits))
        total_relevant = label_counts[label] - 1
        for k in ks:
            p = precision_at_k(relevant, k)
            ap = average_precision_at_k(relevant, k, total_relevant)
            sums[f"P@{k}"] += p
            sums[f"mAP@{k}"] += ap
            per_label[label][f"P@{k}"] += p
            per_label[label][f"mAP@{k}"] += ap
        if progress is not None:
            progress.update(1)
    n = len(rows)
    result = {key: round(value / n, 4) for key, value in sorted(sums.items())}
    result.update(
        queries=n,
        labels=len(label_counts),
        encoder=encoder.pk,
        per_label={
            label: {key: round(v / label_counts[label], 4) for key, v in metrics.items()}
            for label, metrics in sorted(per_label.items())
        },
    )
    return result

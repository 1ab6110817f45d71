"""Every ranked read: nearest images by cosine distance, in PostgreSQL, through the HNSW index."""
from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, FloatField, Sum, Value
from django.db.models.expressions import RawSQL
from pgvector.django import CosineDistance

from gallery import imaging
from gallery.models import CollectionCount, Image
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


def encoder_reembedding_progress(*, encoder: EncoderVersion) -> tuple[int, int]:
    """(images with a vector from ``encoder``, images that need one: every image not failed), as
    an activation's re-embedding moves on. The total comes from the counts the database keeps."""
    total = CollectionCount.objects.exclude(status=Image.Status.FAILED).aggregate(n=Sum("images"))["n"] or 0
    done = Embedding.objects.filter(encoder=encoder).exclude(image__status=Image.Status.FAILED).count()
    return done, total


def encoder_active() -> EncoderVersion:
    encoder = EncoderVersion.objects.filter(status=EncoderVersion.Status.ACTIVE).first()
    if encoder is None:
        raise SearchUnavailable(
            "no active encoder yet: train one with `manage.py train_encoder --collection NAME --activate`"
        )
    return encoder


@dataclass(frozen=True)
class SearchFilters:
    """What a ranked query may be narrowed by. Empty means no filter."""

    collection_ids: Sequence[int] = ()
    label: str = ""
    min_similarity: float | None = None
    exclude_image_ids: Sequence[int] = ()
    exclude_sha256: Sequence[str] = ()
    # True: exhaustive scan (ground truth); None: exhaustive when the encoder has few vectors, or
    # the collection and label filters leave few (EXACT_SCAN_MAX_CANDIDATES), else the HNSW index,
    # and exhaustive after all if an index scan comes back short of k; False: always the index.
    exact: bool | None = None


def similar_queryset(
    *,
    vector: Sequence[float] | np.ndarray,
    encoder: EncoderVersion,
    k: int,
    offset: int = 0,
    filters: SearchFilters = SearchFilters(),
    with_vectors: bool = False,
    anchor: Sequence[float] | np.ndarray | None = None,
):
    """The ranking as one ORM query on the embedding table: ``ORDER BY vector <=> query LIMIT k``
    over one encoder's vectors, yielding (image_id, distance). Images are fetched by id
    afterwards, so the top-k itself stays a single-table scan that the HNSW index serves.

    When the search is exact (``filters.exact``, or automatically when the encoder has few vectors
    or the collection and label filters leave few) it ranks by ``(vector <=> query) + 0`` instead: an expression no index
    can serve, so the planner scans the filtered rows exhaustively. That keeps the exact path one
    statement, with no session settings and no transaction around it. ``with_vectors`` adds each
    row's vector as a third value.

    With an ``anchor`` (the original query, when ``vector`` is its expansion) the rows are still
    ordered by ``vector``, but the distance returned and the ``min_similarity`` filter are to the
    anchor: what a result's distance means does not change with query expansion."""
    distance = CosineDistance("vector", np.asarray(vector, dtype=np.float32))
    exact = filters.exact if filters.exact is not None else _few_candidates(encoder, filters)
    if exact:
        distance = ExpressionWrapper(distance + Value(0.0), output_field=FloatField())
    queryset = Embedding.objects.filter(encoder=encoder)
    if filters.collection_ids:
        queryset = queryset.filter(collection_id__in=list(filters.collection_ids))
    if filters.label:
        queryset = queryset.filter(image__label=filters.label)
    excluded = list(_copies_as_ids(filters).exclude_image_ids)
    if excluded:
        # One array parameter, however many ids (evaluate excludes thousands per query), instead
        # of one placeholder per id.
        queryset = queryset.filter(
            RawSQL('NOT ("search_embedding"."image_id" = ANY(%s::bigint[]))', (excluded,), output_field=BooleanField())
        )
    queryset = queryset.annotate(distance=distance)
    shown = "distance"
    if anchor is not None:
        queryset = queryset.annotate(anchor_distance=CosineDistance("vector", np.asarray(anchor, dtype=np.float32)))
        shown = "anchor_distance"
    if filters.min_similarity is not None:
        queryset = queryset.filter(**{f"{shown}__lte": 1.0 - filters.min_similarity})
    fields = ("image_id", shown, "vector") if with_vectors else ("image_id", shown)
    # Equal distances (the same picture in several collections, say) go by id: without it each
    # page's query may order them its own way, and a tie across a page boundary would show on
    # both pages while another tied image showed on neither.
    return queryset.order_by("distance", "image_id").values_list(*fields)[offset : offset + k]


def _copies_as_ids(filters: SearchFilters) -> SearchFilters:
    """``filters`` with ``exclude_sha256`` resolved to the ids of those images (the sha256 index
    makes it cheap), so a ranking stays a single-table scan instead of a join inside the index
    scan, and a search that ranks more than once resolves them once."""
    if not filters.exclude_sha256:
        return filters
    copies = Image.objects.filter(sha256__in=list(filters.exclude_sha256)).values_list("id", flat=True)
    return replace(filters, exclude_image_ids=(*filters.exclude_image_ids, *copies), exclude_sha256=())


# How deep one ranking goes: offset + k stays within this, on the API's pages and the site's.
# Deeper pages are not what similarity search is for, and the HNSW candidate list
# (hnsw.ef_search, at most 1000 in pgvector) has to cover offset + k.
MAX_DEPTH = 1000


@contextmanager
def hnsw_session(*, k: int):
    """Where more results are wanted than ``hnsw.ef_search`` (= CBIR_HNSW_EF_SEARCH, the
    connection's default) can give, a transaction that raises it locally; otherwise nothing (no
    extra round trips on the common path)."""
    if k <= settings.CBIR_HNSW_EF_SEARCH:
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(min(k, MAX_DEPTH))])
        yield


# Below this many candidate vectors (the encoder's, or those the collection and label filters
# leave) an exhaustive scan is exact and fast enough (docs/benchmarks.md: p95 12.7 ms for 20,000),
# so it is used automatically. Under a narrow filter it is faster than the index too.
EXACT_SCAN_MAX_CANDIDATES = 20_000


# How long the "few candidates" answer for a set of collections and a label is reused. Collections
# change size slowly; a stale answer only means an exact scan of a slightly larger set, or an
# index scan.
FEW_CANDIDATES_CACHE_S = 300


def _few_candidates(encoder: EncoderVersion, filters: SearchFilters) -> bool:
    """Whether the collection and label filters (none: the whole encoder) leave at most
    EXACT_SCAN_MAX_CANDIDATES vectors. A rare label is the sharpest filter of all: an index scan
    would wade through most of the graph to find its few images, where the exhaustive scan of
    those images is instant. A small library is searched exactly as a whole: the approximate index
    buys it no speed worth having, and can miss rows (see ``_ranked``), which would also let one
    page of a search skip an image that the next page does not show either."""
    collections = ",".join(map(str, sorted(filters.collection_ids)))
    digest = hashlib.sha256(filters.label.encode()).hexdigest()[:16] if filters.label else ""
    key = f"cbir:few-candidates:{encoder.pk}:{collections}:{digest}"
    answer = cache.get(key)
    if answer is None:
        sample = Embedding.objects.filter(encoder=encoder)
        if filters.collection_ids:
            sample = sample.filter(collection_id__in=list(filters.collection_ids))
        if filters.label:
            sample = sample.filter(image__label=filters.label)
        # Counting at most threshold+1 rows keeps this bounded however large the collections are.
        answer = sample.values("id")[: EXACT_SCAN_MAX_CANDIDATES + 1].count() <= EXACT_SCAN_MAX_CANDIDATES
        cache.set(key, answer, FEW_CANDIDATES_CACHE_S)
    return answer


# Query expansion (Chum et al. 2007; the alpha-weighted form of Radenovic et al. 2018): the query
# plus its nearest neighbours' vectors, each weighted by max(0, cosine similarity) ** 3, so close
# neighbours count almost fully and loose ones hardly at all. Neighbours that are right pull the
# query toward what they share with it; the weighting keeps a wrong one from dragging it away.
QUERY_EXPANSION_POWER = 3
# More neighbours than this would average the query away into its neighbourhood (checked for
# CBIR_QUERY_EXPANSION, and the API's `expand` limit).
MAX_QUERY_EXPANSION = 50


def expanded_query(vector: Sequence[float] | np.ndarray, neighbours: Sequence[tuple[float, Sequence[float]]]) -> np.ndarray:
    """The unit vector of ``vector`` plus each neighbour's unit vector weighted by
    max(0, 1 - distance) ** QUERY_EXPANSION_POWER; ``neighbours`` are (cosine distance, vector)."""
    query = np.asarray(vector, dtype=np.float64)
    expanded = query / max(np.linalg.norm(query), 1e-12)
    for distance, neighbour in neighbours:
        neighbour = np.asarray(neighbour, dtype=np.float64)
        weight = max(0.0, 1.0 - float(distance)) ** QUERY_EXPANSION_POWER
        expanded = expanded + weight * neighbour / max(np.linalg.norm(neighbour), 1e-12)
    return (expanded / max(np.linalg.norm(expanded), 1e-12)).astype(np.float32)


# Relevance feedback (Rocchio 1971, with the SMART system's usual weights): the query moved toward
# the mean of the results a person marked "more like this" and away from the mean of those marked
# "less like this". Pulling harder than pushing is the classic choice: what is liked says what the
# person wants, what is disliked only one of many things they do not.
FEEDBACK_QUERY_WEIGHT = 1.0
FEEDBACK_LIKED_WEIGHT = 0.75
FEEDBACK_DISLIKED_WEIGHT = 0.15
# Marks one search may carry, each way: a person marks a page at a time, over a few rounds.
MAX_FEEDBACK_IMAGES = 200


class FeedbackInvalid(ValueError):
    """A mark names an image that cannot steer the search: unknown, or without a vector under the
    encoder. ``field`` is "like" or "unlike"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Feedback:
    """Images a person marked among the results: ``liked`` ("more like this") and ``disliked``
    ("less like this"), by id. Empty: the plain search."""

    liked: Sequence[int] = ()
    disliked: Sequence[int] = ()

    def __bool__(self) -> bool:
        return bool(self.liked or self.disliked)


def feedback_query(
    vector: Sequence[float] | np.ndarray, liked: Sequence[Sequence[float]], disliked: Sequence[Sequence[float]]
) -> np.ndarray:
    """The unit vector of Rocchio's refined query: ``vector`` times FEEDBACK_QUERY_WEIGHT, plus the
    mean of the ``liked`` vectors times FEEDBACK_LIKED_WEIGHT, minus the mean of the ``disliked``
    ones times FEEDBACK_DISLIKED_WEIGHT, every vector taken at unit length first."""

    def unit_rows(vectors) -> np.ndarray:
        rows = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    refined = FEEDBACK_QUERY_WEIGHT * unit_rows([vector])[0]
    if len(liked):
        refined = refined + FEEDBACK_LIKED_WEIGHT * unit_rows(liked).mean(0)
    if len(disliked):
        refined = refined - FEEDBACK_DISLIKED_WEIGHT * unit_rows(disliked).mean(0)
    return (refined / max(np.linalg.norm(refined), 1e-12)).astype(np.float32)


def feedback_vectors(*, feedback: Feedback, encoder: EncoderVersion) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The vectors under ``encoder`` of the liked and the disliked images. Raises ``FeedbackInvalid``
    for too many marks, an image marked both ways, or one that does not exist or has no vector."""
    both = set(feedback.liked) & set(feedback.disliked)
    if both:
        raise FeedbackInvalid("unlike", f"image {min(both)} is marked both more and less like this")
    for field, ids in (("like", feedback.liked), ("unlike", feedback.disliked)):
        if len(set(ids)) > MAX_FEEDBACK_IMAGES:
            raise FeedbackInvalid(field, f"at most {MAX_FEEDBACK_IMAGES} images can be marked each way")
    rows = Embedding.objects.filter(encoder=encoder, image_id__in=[*feedback.liked, *feedback.disliked])
    found = {image_id: np.asarray(vector, dtype=np.float32) for image_id, vector in rows.values_list("image_id", "vector")}
    for field, ids in (("like", feedback.liked), ("unlike", feedback.disliked)):
        missing = sorted(set(ids) - found.keys())
        if missing:
            state = "does not exist" if not Image.objects.filter(pk=missing[0]).exists() else "is not indexed"
            raise FeedbackInvalid(field, f"image {missing[0]} {state}, so it cannot steer the search")
    return [found[i] for i in dict.fromkeys(feedback.liked)], [found[i] for i in dict.fromkeys(feedback.disliked)]


def _ranked(
    *, vector, encoder: EncoderVersion, k: int, offset: int, filters: SearchFilters, with_vectors: bool = False, anchor=None
) -> list[tuple]:
    """(image_id, distance[, vector]) of the ranking, nearest first: through the index or an
    exhaustive scan as ``filters.exact`` says (None: automatic, see ``SearchFilters``);
    ``with_vectors`` and ``anchor`` as for ``similar_queryset``."""
    options = {"with_vectors": with_vectors, "anchor": anchor}
    automatic = filters.exact is None
    if automatic:
        filters = replace(filters, exact=_few_candidates(encoder, filters))
    with hnsw_session(k=offset + k):
        ranked = list(similar_queryset(vector=vector, encoder=encoder, k=k, offset=offset, filters=filters, **options))
    if automatic and not filters.exact and len(ranked) < k and filters.min_similarity is None:
        # An index scan came back short of k, which the exhaustive scan answers for sure: either
        # fewer rows match (then it scans only those few, through the encoder's index), or the
        # index missed some. An iterative scan gives up after hnsw.max_scan_tuples, so a filter
        # that few rows pass can end it early; and where most of the graph is thousands of
        # identical vectors (other encoders', or dead rows not yet vacuumed), rows inserted after
        # them can be unreachable from the graph's entry point (HNSW prunes their incoming links).
        exhaustive = replace(filters, exact=True)
        ranked = list(similar_queryset(vector=vector, encoder=encoder, k=k, offset=offset, filters=exhaustive, **options))
    return ranked


def vector_list_similar(
    *,
    vector: Sequence[float] | np.ndarray,
    encoder: EncoderVersion,
    k: int,
    offset: int = 0,
    filters: SearchFilters = SearchFilters(),
    collection_ids: Sequence[int] | None = None,
    exclude_image_ids: Sequence[int] = (),
    expand: int | None = None,
    feedback: Feedback = Feedback(),
) -> list[Hit]:
    """The ``k`` images nearest to ``vector`` by cosine distance under ``encoder``, nearest first,
    skipping the first ``offset`` (pagination). ``collection_ids`` / ``exclude_image_ids`` are
    shorthands for the same fields of ``filters``; ``filters.exact`` picks the index or an exhaustive scan.

    With ``expand`` > 0 (default: CBIR_QUERY_EXPANSION) the query is first expanded with its
    ``expand`` nearest images under the same filters (``expanded_query``): the expanded query's
    ranking decides which images make the page, and the page lists them by their distance to
    ``vector`` itself, nearest first, the distance each hit shows (``min_similarity`` applies to
    it too). So a page's similarities never run out of order, and its first hit is the nearest
    image whenever the expansion keeps it (it scored P@1 as without expansion on every benchmark
    set). Deterministic: every page of one search takes its images from the same expanded
    ranking, so pages follow each other without gaps or repeats.

    With ``feedback`` (images marked among the results) ``vector`` is first refined by it
    (``feedback_query``), and the refined query is what is expanded, ranked and measured against.
    Raises ``FeedbackInvalid`` for a mark that cannot be used."""
    if feedback:
        liked, disliked = feedback_vectors(feedback=feedback, encoder=encoder)
        vector = feedback_query(vector, liked, disliked)
    if exclude_image_ids:
        filters = replace(filters, exclude_image_ids=(*filters.exclude_image_ids, *exclude_image_ids))
    if collection_ids:
        filters = replace(filters, collection_ids=tuple(collection_ids))
    filters = _copies_as_ids(filters)  # once, for every ranking below
    expand = settings.CBIR_QUERY_EXPANSION if expand is None else expand
    ranking, anchor = vector, None
    if expand > 0:
        neighbours = _ranked(
            vector=vector, encoder=encoder, k=expand, offset=0, filters=replace(filters, min_similarity=None), with_vectors=True
        )
        ranking, anchor = expanded_query(vector, [(distance, neighbour) for _, distance, neighbour in neighbours]), vector
    ranked = _ranked(vector=ranking, encoder=encoder, k=k, offset=offset, filters=filters, anchor=anchor)
    if anchor is not None:
        ranked.sort(key=lambda pair: pair[1])  # stable: ties keep the expanded query's order
    images = Image.objects.select_related("collection").in_bulk([image_id for image_id, _ in ranked])
    return [Hit(image=images[image_id], distance=float(distance)) for image_id, distance in ranked if image_id in images]


def image_vector(*, image: Image, encoder: EncoderVersion) -> np.ndarray:
    """``image``'s vector under ``encoder``. Raises ``ImageNotIndexed`` (saying why) when it has none."""
    embedding = Embedding.objects.filter(image=image, encoder=encoder).only("vector").first()
    if embedding is None:
        state = {
            Image.Status.FAILED: "it could not be indexed",
            Image.Status.PENDING: "it is still being indexed",
        }.get(image.status, "it has no vector from the active encoder yet")
        raise ImageNotIndexed(f"image {image.pk} has no similar images: {state}" + (f" ({image.error})" if image.error else ""))
    return np.asarray(embedding.vector, dtype=np.float32)


def image_list_similar(
    *,
    image: Image,
    k: int,
    offset: int = 0,
    filters: SearchFilters = SearchFilters(),
    collection_ids: Sequence[int] | None = None,
    exclude_duplicates: bool = True,
    encoder: EncoderVersion | None = None,
    expand: int | None = None,
    feedback: Feedback = Feedback(),
) -> list[Hit]:
    """The ``k`` images most similar to an indexed image. The image itself is always left out;
    with ``exclude_duplicates``, so are byte-identical copies of it. ``encoder`` defaults to the
    active one; ``expand`` and ``feedback`` as for ``vector_list_similar``."""
    encoder = encoder or encoder_active()
    vector = image_vector(image=image, encoder=encoder)
    filters = replace(
        filters,
        exclude_image_ids=(*filters.exclude_image_ids, image.pk),
        exclude_sha256=(*filters.exclude_sha256, image.sha256) if exclude_duplicates and image.sha256 else filters.exclude_sha256,
    )
    return vector_list_similar(
        vector=vector, encoder=encoder, k=k, offset=offset, filters=filters, collection_ids=collection_ids, expand=expand,
        feedback=feedback,
    )


def upload_list_similar(
    *, data: bytes, k: int, offset: int = 0, filters: SearchFilters = SearchFilters(),
    collection_ids: Sequence[int] | None = None, exclude_duplicates: bool = False, encoder: EncoderVersion | None = None,
    expand: int | None = None, region: imaging.Region | None = None, feedback: Feedback = Feedback(),
) -> list[Hit]:
    """The ``k`` images most similar to an uploaded file, or to ``region`` of it. Raises
    ``ImageRejected`` for bad bytes or a region too small. With ``exclude_duplicates``, stored
    byte-identical copies of the upload are left out."""

    encoder = encoder or encoder_active()  # fail fast, before decoding, when nothing can be ranked
    if len(data) > settings.CBIR_MAX_UPLOAD_BYTES:
        raise imaging.ImageRejected(f"file too large: more than {settings.CBIR_MAX_UPLOAD_BYTES:,} bytes")
    if exclude_duplicates:
        filters = replace(filters, exclude_sha256=(*filters.exclude_sha256, hashlib.sha256(data).hexdigest()))
    picture = imaging.decode_for_encoder(data)
    return picture_list_similar(
        picture=imaging.region_crop(picture, region) if region else picture, k=k, offset=offset, filters=filters, collection_ids=collection_ids, encoder=encoder,
        expand=expand, feedback=feedback,
    )


def picture_list_similar(
    *, picture, k: int, offset: int = 0, filters: SearchFilters = SearchFilters(),
    collection_ids: Sequence[int] | None = None, encoder: EncoderVersion | None = None, expand: int | None = None,
    feedback: Feedback = Feedback(),
) -> list[Hit]:
    """The ``k`` images most similar to a decoded RGB picture, embedded here with ``encoder``
    (default: the active one); ``expand`` and ``feedback`` as for ``vector_list_similar``."""
    encoder = encoder or encoder_active()
    return vector_list_similar(
        vector=picture_embed(picture=picture, encoder=encoder), encoder=encoder, k=k, offset=offset, filters=filters,
        collection_ids=collection_ids, expand=expand, feedback=feedback,
    )


def picture_embed(*, picture, encoder: EncoderVersion) -> np.ndarray:
    """A decoded RGB picture's vector under ``encoder`` (unit length, float32). Raises
    ``SearchUnavailable`` when the encoder's checkpoint cannot be loaded here."""
    from workers.autoencoder.inference import load_embedder

    try:
        embedder = load_embedder(encoder.checkpoint.path, device=settings.CBIR_DEVICE)
    except Exception as exc:  # deleted, corrupt, or on a volume this process lacks: the service's fault, said so
        reason = f"the checkpoint of encoder #{encoder.pk} could not be loaded ({type(exc).__name__})"
        logging.getLogger(__name__).error("%s: %s", reason, exc)  # the details (a server path) stay in the log
        raise SearchUnavailable(f"{reason}; the server's log says why") from exc
    return np.asarray(embedder.embed([picture])[0], dtype=np.float32)


def collection_evaluate(
    *, collection_id: int, ks: Sequence[int], progress=None, encoder: EncoderVersion | None = None, expand: int | None = None
) -> dict:
    """Precision@k and mAP@k for every labelled image of a collection used as a query against all
    the other images of the collection, through the same ranking as the API (``vector_list_similar``),
    with the vectors of ``encoder`` (default: the active one) and its query expansion (``expand``,
    default CBIR_QUERY_EXPANSION).

    An encoder trained with labels is scored on its held-out images only: they are the queries and
    the only candidates, so no figure involves an image whose label it learned from."""
    from collections import Counter, defaultdict

    from search.evaluation import average_precision_at_k, precision_at_k

    encoder = encoder or encoder_active()
    training = (encoder.metrics or {}).get("training") or {}
    embeddings = Embedding.objects.filter(encoder=encoder, collection_id=collection_id).exclude(image__label="")
    learned_from: list[int] = []
    if "held_out_image_ids" in training and encoder.trained_on_id == collection_id:
        held_out = training["held_out_image_ids"]
        learned_from = list(embeddings.exclude(image_id__in=held_out).values_list("image_id", flat=True))
        embeddings = embeddings.filter(image_id__in=held_out)
    rows = list(embeddings.values_list("image_id", "image__label", "vector").order_by("image_id"))
    if not rows:
        raise ValueError("the collection has no indexed, labelled images to evaluate")
    label_counts = Counter(label for _, label, _ in rows)
    depth = max(ks)
    sums: dict[str, float] = defaultdict(float)
    per_label: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for image_id, label, vector in rows:
        hits = vector_list_similar(
            vector=vector, encoder=encoder, k=depth, collection_ids=[collection_id],
            exclude_image_ids=[image_id, *learned_from], expand=expand,
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
        held_out_only=bool(learned_from),
        query_expansion=settings.CBIR_QUERY_EXPANSION if expand is None else expand,
        per_label={
            label: {key: round(v / label_counts[label], 4) for key, v in metrics.items()}
            for label, metrics in sorted(per_label.items())
        },
    )
    return result


def vector_column_dim() -> int:
    """The width the database's vector column was created with (it follows CBIR_EMBEDDING_DIM only
    at the first migrate; ``resize_vectors`` changes it later)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'search_embedding'::regclass AND attname = 'vector'"
        )
        return cursor.fetchone()[0]

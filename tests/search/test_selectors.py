import math

import numpy as np
import pytest

from django.db import connection

from gallery.models import Collection, Image
from search import selectors
from search.models import EncoderVersion, Embedding
from tests.utils import vector

pytestmark = pytest.mark.django_db

# Big enough that the planner prefers the HNSW index over a sequential scan.
N_BIG = 20_000


def _encoder(status=EncoderVersion.Status.ACTIVE) -> EncoderVersion:
    return EncoderVersion.objects.create(name="hand-made", arch="conv_ae", dim=256, status=status)


def _image(collection: Collection, name: str, vec, encoder: EncoderVersion, label: str = "") -> Image:
    image = Image.objects.create(collection=collection, original_name=name, label=label, sha256=name, status="indexed")
    Embedding.objects.create(image=image, encoder=encoder, collection=collection, vector=vec)
    return image


@pytest.fixture
def world():
    encoder = _encoder()
    shapes = Collection.objects.create(name="shapes")
    other = Collection.objects.create(name="other")
    images = {
        "same": _image(shapes, "same", vector((0, 1.0)), encoder),
        "diagonal": _image(shapes, "diagonal", vector((0, 1.0), (1, 1.0)), encoder),
        "orthogonal": _image(shapes, "orthogonal", vector((1, 1.0)), encoder),
        "opposite": _image(shapes, "opposite", vector((0, -1.0)), encoder),
        "elsewhere": _image(other, "elsewhere", vector((0, 1.0), (1, 0.1)), encoder),
    }
    return encoder, shapes, other, images


def test_ranks_by_cosine_distance_exactly(world):
    encoder, shapes, _, images = world
    hits = selectors.vector_list_similar(vector=vector((0, 2.0)), encoder=encoder, k=10, collection_ids=[shapes.pk])
    assert [hit.image.original_name for hit in hits] == ["same", "diagonal", "orthogonal", "opposite"]
    assert [hit.distance for hit in hits] == pytest.approx([0.0, 1 - 1 / math.sqrt(2), 1.0, 2.0], abs=1e-6)
    assert hits[1].similarity == pytest.approx(1 / math.sqrt(2), abs=1e-6)


@pytest.mark.parametrize("expand", [0, None])
def test_pages_neither_repeat_nor_skip_images_at_equal_distances(expand):
    """The same picture in twelve collections has twelve equal vectors: a page boundary that falls
    among them must not show one of them twice and another never."""
    encoder = _encoder()
    copies = [_image(Collection.objects.create(name=f"copy {i}"), f"copy{i}", vector((0, 1.0), (1, 0.5)), encoder) for i in range(12)]
    others = [_image(copies[0].collection, f"near{i}", vector((0, 1.0), (1, 0.5), (2 + i, 0.3)), encoder) for i in range(3)]
    query = vector((0, 1.0), (1, 0.5))
    pages = [
        selectors.vector_list_similar(vector=query, encoder=encoder, k=5, offset=offset, expand=expand)
        for offset in (0, 5, 10)
    ]
    paged = [hit.image.pk for page in pages for hit in page]
    whole = [hit.image.pk for hit in selectors.vector_list_similar(vector=query, encoder=encoder, k=15, expand=expand)]
    assert paged == whole
    assert sorted(paged) == sorted(image.pk for image in copies + others)
    assert paged[:12] == [image.pk for image in copies]  # equal distances go by id


def test_a_small_library_is_searched_exactly_as_a_whole(world):
    # Through the index a row can be missed, and a page could skip an image the next one does not
    # show either; under EXACT_SCAN_MAX_CANDIDATES vectors the whole encoder is scanned instead.
    encoder, *_ = world
    assert selectors._few_candidates(encoder, selectors.SearchFilters())
    plan = selectors.similar_queryset(vector=vector((0, 1.0)), encoder=encoder, k=3).explain()
    assert "embedding_vector_hnsw" not in plan, plan


def test_k_limits_and_no_collection_means_all(world):
    encoder, *_ = world
    hits = selectors.vector_list_similar(vector=vector((0, 1.0)), encoder=encoder, k=2, expand=0)
    assert [hit.image.original_name for hit in hits] == ["same", "elsewhere"]


def test_similar_to_an_image_leaves_the_image_out(world):
    _, shapes, _, images = world
    hits = selectors.image_list_similar(image=images["same"], k=3, collection_ids=[shapes.pk])
    assert [hit.image.original_name for hit in hits] == ["diagonal", "orthogonal", "opposite"]


def test_excluding_thousands_of_ids_leaves_out_exactly_those(world):
    # evaluate leaves out every image a label-trained encoder learned from: thousands per query.
    encoder, shapes, _, images = world
    excluded = [images["same"].pk, images["orthogonal"].pk, *range(10**9, 10**9 + 5000)]
    hits = selectors.vector_list_similar(vector=vector((0, 2.0)), encoder=encoder, k=10, collection_ids=[shapes.pk], exclude_image_ids=excluded)
    assert [hit.image.original_name for hit in hits] == ["diagonal", "opposite"]


def test_never_mixes_vectors_of_two_encoders(world):
    encoder, shapes, _, images = world
    next_encoder = _encoder(EncoderVersion.Status.ACTIVATING)
    # Under the activating encoder "opposite" would be the best match; search must not see it.
    Embedding.objects.create(image=images["opposite"], encoder=next_encoder, collection=shapes, vector=vector((0, 1.0)))
    hits = selectors.image_list_similar(image=images["same"], k=10)
    assert [hit.image.original_name for hit in hits][0] == "elsewhere"
    assert hits[-1].image.original_name == "opposite" and hits[-1].distance == pytest.approx(2.0)


@pytest.fixture
def fan():
    """Around the query (0, 1): "near" at cosine 0.95 and "beyond" at 0.88, both leaning toward
    axis 1; "aside" at 0.90, leaning toward axis 2."""
    encoder = _encoder()
    fan = Collection.objects.create(name="fan")
    for name, (a, b, c) in {"near": (0.95, 0.3122, 0), "beyond": (0.88, 0.4750, 0), "aside": (0.90, 0, 0.4359)}.items():
        _image(fan, name, vector((0, a), (1, b), (2, c)), encoder)
    return encoder, fan


def test_query_expansion_ranks_by_the_query_and_its_nearest_images(fan):
    encoder, fan = fan
    query = vector((0, 1.0))
    # Exhaustive scans: the expansion is what is tested. Through the approximate index, over a table
    # that other tests' rows have passed through, one full run ranked as if unexpanded.
    exact = selectors.SearchFilters(exact=True)
    plain = selectors.vector_list_similar(vector=query, encoder=encoder, k=3, expand=0, filters=exact)
    assert [hit.image.original_name for hit in plain] == ["near", "aside", "beyond"]
    # Expanded with "near" (weight 0.95 ** 3), the query leans toward axis 1: "beyond" (0.94 to the
    # expanded query) now ranks before "aside" (0.89), so the two nearest are "near" and "beyond".
    expanded = selectors.vector_list_similar(vector=query, encoder=encoder, k=2, expand=1, filters=exact)
    assert [hit.image.original_name for hit in expanded] == ["near", "beyond"]
    # Distances stay those to the query itself, and a page lists its hits by them: "aside" (0.10)
    # comes before "beyond" (0.12) once both make the page.
    expanded = selectors.vector_list_similar(vector=query, encoder=encoder, k=3, expand=1, filters=exact)
    assert [(hit.image.original_name, round(hit.distance, 4)) for hit in expanded] == [
        ("near", 0.05), ("aside", 0.10), ("beyond", 0.12)
    ]
    # ... and so does min_similarity: "beyond" is 0.88 similar to the query, below 0.89.
    filters = selectors.SearchFilters(min_similarity=0.89, exact=True)
    kept = selectors.vector_list_similar(vector=query, encoder=encoder, k=3, expand=1, filters=filters)
    assert [hit.image.original_name for hit in kept] == ["near", "aside"]
    # Pages follow each other under the same expanded ranking: one hit a page, in its order.
    pages = [selectors.vector_list_similar(vector=query, encoder=encoder, k=1, offset=i, expand=1, filters=exact)[0] for i in range(3)]
    assert [hit.image.original_name for hit in pages] == ["near", "beyond", "aside"]


def test_expanded_query_weights_neighbours_by_similarity_cubed():
    query = np.array([1.0, 0.0, 0.0])
    close, far = np.array([0.0, 2.0, 0.0]), np.array([0.0, 0.0, 1.0])
    expanded = selectors.expanded_query(query, [(0.1, close), (1.5, far)])  # the second is dissimilar: weight 0
    unnormalised = query + 0.9**3 * close / 2
    assert expanded == pytest.approx(unnormalised / np.linalg.norm(unnormalised), abs=1e-6)
    assert selectors.expanded_query(query * 3, []) == pytest.approx(query)


def test_no_active_encoder_is_a_clear_error():
    with pytest.raises(selectors.SearchUnavailable, match="no active encoder"):
        selectors.encoder_active()


def test_pending_image_is_not_indexed(world):
    _, shapes, _, _ = world
    pending = Image.objects.create(collection=shapes, original_name="new", sha256="x")
    with pytest.raises(selectors.ImageNotIndexed, match="has no similar images: it is still being indexed$"):
        selectors.image_list_similar(image=pending, k=5)


def _bulk(collection: Collection, encoder: EncoderVersion, vectors: np.ndarray) -> None:
    images = Image.objects.bulk_create(
        [Image(collection=collection, original_name=f"r{i}", sha256=str(i), status="indexed") for i in range(len(vectors))]
    )
    Embedding.objects.bulk_create(
        [Embedding(image=image, encoder=encoder, collection=collection, vector=v) for image, v in zip(images, vectors)]
    )


@pytest.fixture(scope="module")
def big_world(django_db_setup, django_db_blocker):
    """20,000 clustered vectors in one collection and 20 in a small one (0.1% of the rows).
    Built once for the module (inserting into the HNSW index takes a while) and removed after.

    The clusters are spread as wide as they are apart, like real embeddings. Perfectly separated
    clusters leave the HNSW graph with few links between them, so a search can now and then stay in
    the wrong cluster: that tests the data, not the index."""
    from django.db import connection

    rng = np.random.default_rng(0)
    with django_db_blocker.unblock():
        # Not the active encoder: the module's other tests keep their own world around it.
        encoder = _encoder(EncoderVersion.Status.TRAINED)
        big, small = Collection.objects.create(name="big"), Collection.objects.create(name="small")
        centres = rng.normal(size=(30, 256))
        _bulk(big, encoder, centres[rng.integers(0, 30, N_BIG)] + rng.normal(size=(N_BIG, 256)))
        _bulk(small, encoder, rng.normal(size=(20, 256)))
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE search_embedding, gallery_image, gallery_collection")
    yield encoder, big, small, centres
    with django_db_blocker.unblock():
        Collection.objects.filter(pk__in=[big.pk, small.pk]).delete()
        encoder.delete()


def test_plan_uses_the_hnsw_index(big_world):
    encoder, _, _, centres = big_world
    queryset = selectors.similar_queryset(vector=centres[0], encoder=encoder, k=10)
    with selectors.hnsw_session(k=10):
        plan = queryset.explain()
    assert "embedding_vector_hnsw" in plan, plan


def test_filter_to_a_tiny_collection_still_returns_k(big_world):
    encoder, _, small, centres = big_world
    hits = selectors.vector_list_similar(vector=centres[0], encoder=encoder, k=10, collection_ids=[small.pk], expand=0)
    assert len(hits) == 10
    assert {hit.image.collection_id for hit in hits} == {small.pk}
    distances = [hit.distance for hit in hits]
    assert distances == sorted(distances)


def test_an_index_scan_that_gives_up_short_falls_back_to_the_exhaustive_scan(big_world):
    # Leaving out all but 12 of the 20,000 big vectors is a filter only 32 rows pass. The planner
    # would sort those 32 itself; with sorting made dear it takes the HNSW index, as it must on a
    # table where the rows that pass are too many to sort. The index's iterative scan is allowed
    # so few tuples here that it stops short of k; the answer must not be.
    from django.db import connection

    encoder, big, small, centres = big_world
    ids = list(Image.objects.filter(collection=big).order_by("pk").values_list("pk", flat=True))
    kept = set(ids[:12]) | set(Image.objects.filter(collection=small).values_list("pk", flat=True))
    filters = selectors.SearchFilters(exclude_image_ids=tuple(ids[12:]))
    with connection.cursor() as cursor:
        cursor.execute("SET hnsw.max_scan_tuples = 100; SET enable_sort = off")
    try:
        queryset = selectors.similar_queryset(vector=centres[0], encoder=encoder, k=15, filters=filters)
        assert "embedding_vector_hnsw" in queryset.explain()
        assert len(list(queryset)) < 15  # what the index alone gives
        hits = selectors.vector_list_similar(vector=centres[0], encoder=encoder, k=15, filters=filters, expand=0)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET hnsw.max_scan_tuples; RESET enable_sort")
    assert len(hits) == 15 and {hit.image.pk for hit in hits} <= kept
    assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)


def test_index_answer_matches_an_exact_scan(big_world):
    from django.db import connection

    encoder, *_, centres = big_world
    found = 0
    for query in centres[:8] + 0.1:
        approximate = [hit.image.pk for hit in selectors.vector_list_similar(vector=query, encoder=encoder, k=10, expand=0)]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT image_id FROM search_embedding WHERE encoder_id = %s ORDER BY vector::text::vector <=> %s::vector LIMIT 10",
                [encoder.pk, "[" + ",".join(map(str, query.astype(np.float32))) + "]"],
            )
            exact = [row[0] for row in cursor.fetchall()]
        found += len(set(approximate) & set(exact))
    assert found / 80 >= 0.9  # recall@10 over eight queries


def test_exact_mode_and_small_collections_skip_the_index(big_world):
    encoder, big, small, centres = big_world
    plain = selectors.SearchFilters()
    for filters in (selectors.SearchFilters(exact=True), selectors.SearchFilters(collection_ids=(small.pk,))):
        # One plain statement: no session settings are needed to keep the index out.
        plan = selectors.similar_queryset(vector=centres[1], encoder=encoder, k=10, filters=filters).explain()
        assert "embedding_vector_hnsw" not in plan, plan
    # The 20-image collection is under EXACT_SCAN_MAX_CANDIDATES: exhaustive, hence exact, automatically.
    assert selectors._few_candidates(encoder, selectors.SearchFilters(collection_ids=(small.pk,)))
    assert not selectors._few_candidates(encoder, plain)
    exact = selectors.vector_list_similar(vector=centres[1], encoder=encoder, k=10, filters=selectors.SearchFilters(exact=True), expand=0)
    approximate = selectors.vector_list_similar(
        vector=centres[1], encoder=encoder, k=10, filters=selectors.SearchFilters(exact=False), expand=0
    )
    assert [hit.distance for hit in exact] == sorted(hit.distance for hit in exact)
    assert len({hit.image.pk for hit in exact} & {hit.image.pk for hit in approximate}) >= 9


def test_a_rare_label_is_scanned_exhaustively_and_returns_all_its_images(big_world):
    # An index scan would have to walk most of the graph to find 12 images among 20,020.
    encoder, big, _, centres = big_world
    ids = list(Image.objects.filter(collection=big).order_by("pk").values_list("pk", flat=True)[:12])
    Image.objects.filter(pk__in=ids).update(label="rare")
    filters = selectors.SearchFilters(label="rare")
    assert selectors._few_candidates(encoder, filters)
    plan = selectors.similar_queryset(vector=centres[2], encoder=encoder, k=10, filters=filters).explain()
    assert "embedding_vector_hnsw" not in plan, plan
    hits = selectors.vector_list_similar(vector=centres[2], encoder=encoder, k=50, filters=filters)
    assert sorted(hit.image.pk for hit in hits) == ids
    assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)


@pytest.mark.django_db(transaction=True)
def test_rebuild_vector_index_changes_parameters_and_keeps_search_working():
    from django.core.management import call_command
    from django.db import connection

    encoder = _encoder()
    shapes = Collection.objects.create(name="shapes")
    _image(shapes, "one", vector((0, 1.0)), encoder)
    _image(shapes, "two", vector((1, 1.0)), encoder)
    call_command("rebuild_vector_index", "--m", "8", "--ef-construction", "32")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'embedding_vector_hnsw'")
        (definition,) = cursor.fetchone()
    assert "m='8'" in definition and "ef_construction='32'" in definition and "vector_cosine_ops" in definition
    hits = selectors.vector_list_similar(vector=vector((1, 2.0)), encoder=encoder, k=2)
    assert [hit.image.original_name for hit in hits] == ["two", "one"]


def test_an_index_scan_that_comes_back_short_is_answered_exhaustively():
    # 2,000 vectors of another encoder, identical to the query, lie nearer than any of this
    # encoder's; the iterative index scan gives up after hnsw.max_scan_tuples (lowered, with
    # ef_search, for this test's transaction) before it reaches them. Thousands of identical
    # vectors in the graph can also leave later rows unreachable, with the same symptom.
    encoder, other = _encoder(), _encoder(EncoderVersion.Status.RETIRED)
    pile, fan = Collection.objects.create(name="pile"), Collection.objects.create(name="fan")
    copies = Image.objects.bulk_create(Image(collection=pile, original_name=f"c{i}", sha256=f"c{i}") for i in range(2000))
    Embedding.objects.bulk_create(Embedding(image=image, encoder=other, collection=pile, vector=vector((0, 1.0))) for image in copies)
    for name, (a, b, c) in {"near": (0.95, 0.3122, 0), "beyond": (0.88, 0.4750, 0), "aside": (0.90, 0, 0.4359)}.items():
        _image(fan, name, vector((0, a), (1, b), (2, c)), encoder)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 1")
        cursor.execute("SET LOCAL hnsw.max_scan_tuples = 1")
        # and the planner steered to the index even where its statistics call the table small
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
    through_index = selectors.SearchFilters(exact=False)
    assert selectors.vector_list_similar(vector=vector((0, 1.0)), encoder=encoder, k=3, expand=0, filters=through_index) == []
    hits = selectors.vector_list_similar(vector=vector((0, 1.0)), encoder=encoder, k=3, expand=0)
    assert [hit.image.original_name for hit in hits] == ["near", "aside", "beyond"]

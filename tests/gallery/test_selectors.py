from datetime import timedelta

import pytest
from django.utils import timezone

from gallery.models import Image
from gallery.selectors import collection_covers, collection_labels, collection_list_with_stats, collection_stats
from gallery.services import collection_get_or_create

pytestmark = pytest.mark.django_db


def _indexed(collection, *, seconds_ago: list[float]) -> None:
    now = timezone.now()
    Image.objects.bulk_create(
        Image(
            collection=collection, original_name=f"{i}.png", sha256=f"{collection.pk}-{i}",
            status=Image.Status.INDEXED, indexed_at=now - timedelta(seconds=ago),
        )
        for i, ago in enumerate(seconds_ago)
    )


def test_rate_counts_the_last_minute_or_since_indexing_began():
    steady = collection_get_or_create(name="steady")  # 2 a second for two minutes
    _indexed(steady, seconds_ago=[i / 2 for i in range(240)])
    assert collection_stats(collection=steady)["indexed_per_second"] == pytest.approx(2.0, abs=0.05)

    started = collection_get_or_create(name="started")  # began 10 s ago at 3 a second
    _indexed(started, seconds_ago=[i / 3 for i in range(30)] + [300, 400])  # old ones do not count
    stats = collection_stats(collection=started)
    assert stats["indexed_per_second"] == pytest.approx(3.0, rel=0.05)  # not 30 / 60 = 0.5
    assert stats["indexed"] == 32

    single = collection_get_or_create(name="single")  # one image a moment ago is not a huge rate
    _indexed(single, seconds_ago=[0.01])
    assert collection_stats(collection=single)["indexed_per_second"] == pytest.approx(0.2)

    idle = collection_get_or_create(name="idle")
    _indexed(idle, seconds_ago=[120, 130])
    assert collection_stats(collection=idle)["indexed_per_second"] == 0


def test_counts_by_status_for_one_collection_and_for_all():
    mixed, empty = collection_get_or_create(name="mixed"), collection_get_or_create(name="empty")
    Image.objects.bulk_create(
        Image(collection=mixed, original_name=f"{status}{i}", sha256=f"{status}{i}", status=status)
        for status, count in (("indexed", 3), ("pending", 2), ("failed", 1))
        for i in range(count)
    )
    expected = {"total": 6, "indexed": 3, "pending": 2, "failed": 1}
    assert {key: collection_stats(collection=mixed)[key] for key in expected} == expected
    listed = {c.name: {key: getattr(c, key) for key in expected} for c in collection_list_with_stats()}
    assert listed == {"empty": {"total": 0, "indexed": 0, "pending": 0, "failed": 0}, "mixed": expected}


def test_covers_are_each_collections_latest_indexed_pictures_with_a_thumbnail():
    photos, drawings, empty = (collection_get_or_create(name=name) for name in ("photos", "drawings", "empty"))
    now = timezone.now()

    def add(collection, name, *, status=Image.Status.INDEXED, ago=None, thumbnail=True):
        return Image.objects.create(
            collection=collection, original_name=name, sha256=f"{collection.pk}-{name}", status=status,
            indexed_at=None if ago is None else now - timedelta(seconds=ago),
            thumbnail=f"thumbnails/{collection.pk}/{name}.webp" if thumbnail else "",
        )

    older, old, tied_first, tied_second = (add(photos, name, ago=ago) for name, ago in (
        ("older", 40), ("old", 30), ("tied-first", 10), ("tied-second", 10)
    ))
    add(photos, "oldest", ago=50)  # the seventh newest: six read leave it out
    add(photos, "pending", status=Image.Status.PENDING)  # newer than all, but none of these is shown
    add(photos, "failed-since", status=Image.Status.FAILED, ago=1)
    add(photos, "no-thumbnail", ago=2, thumbnail=False)
    only = add(drawings, "only", ago=100)

    # the four latest are read: the failed one and the one without a thumbnail are left out
    covers = collection_covers(collections=[photos, drawings, empty])
    assert covers == {photos.pk: [tied_second, tied_first], drawings.pk: [only], empty.pk: []}
    assert collection_covers(collections=[photos], per_collection=6)[photos.pk] == [tied_second, tied_first, old, older]
    assert [image.display_url for image in covers[drawings.pk]] == [only.thumbnail.url]


def test_labels_are_distinct_ordered_non_empty_and_of_this_collection_only():
    shapes, other = collection_get_or_create(name="shapes"), collection_get_or_create(name="other")
    names = ["star", "circle", "star", "", "Square", "circle", "ring"]
    Image.objects.bulk_create(
        Image(collection=shapes, original_name=f"{i}", sha256=f"s{i}", label=label) for i, label in enumerate(names)
    )
    Image.objects.create(collection=other, original_name="x", sha256="x", label="arrow")
    everything = collection_labels(collection=shapes, limit=100)
    assert len(everything) == len(set(everything)) and set(everything) == {"star", "circle", "Square", "ring"}
    assert everything == list(Image.objects.filter(collection=shapes).exclude(label="").order_by("label").values_list("label", flat=True).distinct())
    assert collection_labels(collection=shapes, limit=2) == everything[:2]
    assert collection_labels(collection=collection_get_or_create(name="unlabelled"), limit=10) == []

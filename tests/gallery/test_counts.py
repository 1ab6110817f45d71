"""The per-collection counts the database keeps (``CollectionCount``, triggers of migration
``gallery 0004``), checked against COUNT(*) over the image rows after each kind of write."""
import threading

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.models import Count, Sum

from gallery.models import Collection, CollectionCount, Image
from gallery.selectors import collection_list_with_stats, collection_stats
from gallery.services import collection_delete, collection_get_or_create, images_delete


def _counted() -> dict[tuple[int, str], int]:
    rows = CollectionCount.objects.values_list("collection_id", "status").annotate(n=Sum("images")).order_by()
    return {(collection, status): n for collection, status, n in rows if n}


def _actual() -> dict[tuple[int, str], int]:
    rows = Image.objects.values_list("collection_id", "status").annotate(n=Count("*")).order_by()
    return {(collection, status): n for collection, status, n in rows}


def _images(collection, count: int, *, status: str = Image.Status.PENDING, start: int = 0) -> list[Image]:
    return Image.objects.bulk_create(
        Image(collection=collection, original_name=f"{i}.png", sha256=f"{collection.pk}-{i}", status=status)
        for i in range(start, start + count)
    )


def _images_written_at_0003(collection, count: int, *, status: str = Image.Status.PENDING) -> None:
    """Rows as the code of that schema wrote them, without the columns added since."""
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO gallery_image (collection_id, file, thumbnail, original_name, label, sha256, status, error,"
            " created_at, updated_at) VALUES (%s, '', '', %s, '', %s, %s, '', now(), now())",
            [(collection.pk, f"{i}.png", f"{collection.pk}-{i}", status) for i in range(count)],
        )


@pytest.mark.django_db
def test_counts_follow_every_kind_of_write_to_the_images():
    birds, cats = collection_get_or_create(name="birds"), collection_get_or_create(name="cats")
    _images(birds, 5)
    _images(cats, 3, status=Image.Status.INDEXED)
    Image.objects.create(collection=birds, original_name="one.png", sha256="one")
    assert _counted() == _actual() == {(birds.pk, "pending"): 6, (cats.pk, "indexed"): 3}

    first_two = Image.objects.filter(collection=birds).order_by("id").values_list("id", flat=True)[:2]
    Image.objects.filter(id__in=list(first_two)).update(status=Image.Status.INDEXED)  # a bulk UPDATE
    failed = Image.objects.filter(collection=birds, status=Image.Status.PENDING).first()
    failed.status, failed.error = Image.Status.FAILED, "truncated"
    failed.save()  # one row, through the ORM
    moved = Image.objects.filter(collection=cats).first()
    moved.collection = birds
    moved.save()  # the admin cannot do this, but the database counts it right anyway
    assert _counted() == _actual()
    assert collection_stats(collection=birds) | {"indexed_per_second": 0} == {
        "total": 7, "pending": 3, "indexed": 3, "failed": 1, "indexed_per_second": 0,
    }

    with connection.cursor() as cursor:  # raw SQL, past every service
        cursor.execute("DELETE FROM gallery_image WHERE id = %s", [failed.pk])
    images_delete(images=Image.objects.filter(collection=cats))
    Image.objects.filter(collection=birds, status=Image.Status.PENDING).first().delete()
    assert _counted() == _actual() == {(birds.pk, "pending"): 2, (birds.pk, "indexed"): 3}


@pytest.mark.django_db
def test_writes_that_change_no_status_write_no_counts():
    birds = collection_get_or_create(name="birds")
    _images(birds, 4)
    rows = CollectionCount.objects.count()
    Image.objects.filter(collection=birds).update(thumbnail="thumbnails/x.webp", width=8, height=8)
    Image.objects.filter(collection=birds).update(status=Image.Status.PENDING)  # pending already
    assert CollectionCount.objects.count() == rows
    assert _counted() == _actual()


@pytest.mark.django_db
def test_a_deleted_collection_leaves_no_counts_behind():
    kept, gone, orm_gone = (collection_get_or_create(name=name) for name in ("kept", "gone", "orm-gone"))
    for collection in (kept, gone, orm_gone):
        _images(collection, 3)
    collection_delete(collection=gone)  # the service's SQL deletes
    Collection.objects.get(pk=orm_gone.pk).delete()  # Django's cascade
    assert set(CollectionCount.objects.values_list("collection_id", flat=True)) == {kept.pk}
    assert _counted() == _actual() == {(kept.pk, "pending"): 3}
    listed = {c.name: (c.total, c.pending) for c in collection_list_with_stats()}
    assert listed == {"kept": (3, 3)}


@pytest.mark.django_db(transaction=True)
def test_each_connection_counts_in_its_own_shard_and_the_shards_add_up():
    birds = collection_get_or_create(name="birds")
    pids, errors = [], []

    def write(start: int) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
            _images(birds, 20, start=start)
            Image.objects.filter(collection=birds, sha256__in=[f"{birds.pk}-{i}" for i in range(start, start + 5)]).update(
                status=Image.Status.INDEXED
            )
        except Exception as exc:  # reported below: a thread's exception would not fail the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(start,)) for start in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert set(CollectionCount.objects.values_list("shard", flat=True)) == {pid % 16 for pid in pids}
    assert _counted() == _actual() == {(birds.pk, "pending"): 45, (birds.pk, "indexed"): 15}


@pytest.mark.django_db(transaction=True)
def test_the_migration_counts_the_images_already_there():
    birds, cats = collection_get_or_create(name="birds"), collection_get_or_create(name="cats")
    call_command("migrate", "gallery", "0003", verbosity=0)
    try:
        _images_written_at_0003(birds, 7)
        _images_written_at_0003(cats, 2, status=Image.Status.FAILED)
    finally:
        call_command("migrate", "gallery", verbosity=0)
    assert _counted() == _actual() == {(birds.pk, "pending"): 7, (cats.pk, "failed"): 2}
    Image.objects.filter(collection=birds).update(status=Image.Status.INDEXED)  # and keeps them from then on
    assert _counted() == _actual() == {(birds.pk, "indexed"): 7, (cats.pk, "failed"): 2}

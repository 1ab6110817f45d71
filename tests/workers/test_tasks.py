"""Crash safety: idempotent indexing, the sweep for lost requests, a broker that is down, files that
stop every attempt."""
import os
import time
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import pytest
from celery import Celery
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from gallery.media import MEDIA_MARKER, MediaStorageUnavailable, media_storage_check
from gallery.models import Image
from gallery.services import IncomingFile, collection_get_or_create, images_create, images_index_again, task_send_safely
from search.models import Embedding
from search.services import embeddings_store
from tests.conftest import wait_for
from tests.utils import (
    database_url, image_bytes, make_encoder, orientation_exif, png_with_orientation_after_the_pixels, row_locked_elsewhere,
    swapped_primaries_profile,
)
from workers.services import GIVEN_UP_REASON, MAX_INDEX_ATTEMPTS, collection_load_pixels, images_index, images_index_request, pending_sweep
from workers.tasks import index_images, sweep_pending


@pytest.mark.django_db
def test_indexing_twice_writes_each_vector_once():
    make_encoder()
    collection = collection_get_or_create(name="twice")
    images_create(collection=collection, files=[IncomingFile(name=f"{i}.png", data=image_bytes(pattern=i)) for i in range(5)])
    ids = list(Image.objects.values_list("id", flat=True))
    images_index(image_ids=ids)
    thumbnails = dict(Image.objects.values_list("id", "thumbnail"))
    images_index(image_ids=ids)  # a redelivered message after a worker died mid-batch
    assert Embedding.objects.count() == 5
    assert dict(Image.objects.values_list("id", "thumbnail")) == thumbnails
    assert set(Image.objects.values_list("status", flat=True)) == {"indexed"}
    assert all(Image.objects.values_list("indexed_at", flat=True))


@pytest.mark.django_db
def test_training_pixels_can_be_a_seeded_random_sample_of_the_collection():
    """A label-free patch_kmeans trains on a sample (PATCH_KMEANS_TRAINING_IMAGES): the same seed
    draws the same images, in id order, each with its own pixels; without a limit, every image."""
    collection = collection_get_or_create(name="sampled")
    images_create(collection=collection, files=[IncomingFile(name=f"{i}.png", data=image_bytes(pattern=i)) for i in range(12)])
    every = collection_load_pixels(collection=collection, image_size=16)
    assert len(every.image_ids) == 12 and every.pixels.shape == (12, 3, 16, 16)
    first, again = (collection_load_pixels(collection=collection, image_size=16, limit=5, seed=1) for _ in range(2))
    other = collection_load_pixels(collection=collection, image_size=16, limit=5, seed=2)
    assert len(first.image_ids) == 5 and first.image_ids == again.image_ids == sorted(first.image_ids)
    assert other.image_ids != first.image_ids and set(first.image_ids) <= set(every.image_ids)
    rows = [every.image_ids.index(i) for i in first.image_ids]
    assert (first.pixels == every.pixels[rows]).all()
    assert collection_load_pixels(collection=collection, image_size=16, limit=12, seed=1).image_ids == every.image_ids


@pytest.mark.django_db
def test_a_label_free_patch_kmeans_trains_on_the_sample_and_metric_learning_on_every_image(monkeypatch):
    from workers import services
    from workers.autoencoder.model import EncoderConfig
    from workers.autoencoder.training import TrainingConfig

    monkeypatch.setattr(services, "PATCH_KMEANS_TRAINING_IMAGES", 6)
    collection = collection_get_or_create(name="big")
    images_create(collection=collection, files=[IncomingFile(name=f"{i}.png", data=image_bytes(pattern=i), label="ab"[i % 2]) for i in range(10)])
    model = EncoderConfig(arch="patch_kmeans", dictionary_size=16, word_side=32, word_cells=(4,), gradient_words=4, word_dim=8)
    for use_labels, expected in ((False, 6), (True, 10)):
        encoder = services.encoder_plan(
            collection=collection, model_config=model, train_config=TrainingConfig(epochs=1, seed=0, device="cpu", use_labels=use_labels)
        )
        services.encoder_train(encoder=encoder, show_progress=False)
        encoder.refresh_from_db()
        assert encoder.status == "trained" and encoder.metrics["training"]["images"] == expected


def _sizes() -> dict[str, tuple[int, int]]:
    return {name: (width, height) for name, width, height in Image.objects.values_list("original_name", "width", "height")}


@pytest.mark.django_db
def test_indexing_records_each_pictures_full_size_as_shown():
    """The size a browser shows: after the EXIF orientation, and the stored picture's, not the
    reduced one the workers decode a large JPEG at."""
    make_encoder()
    collection = collection_get_or_create(name="sizes")
    photo = image_bytes(size=(1600, 1200), fmt="JPEG", pattern=0, exif=orientation_exif(6))
    images_create(collection=collection, files=[
        IncomingFile(name="photo.jpg", data=photo),
        IncomingFile(name="late.png", data=png_with_orientation_after_the_pixels(size=(60, 40), orientation=6)),
    ])
    assert _sizes() == {"photo.jpg": (1200, 1600), "late.png": (60, 40)}  # the PNG's header cannot tell
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    assert _sizes() == {"photo.jpg": (1200, 1600), "late.png": (40, 60)}
    assert set(Image.objects.values_list("status", flat=True)) == {"indexed"}


@pytest.mark.django_db
def test_indexing_makes_the_thumbnail_of_a_picture_with_a_colour_profile_in_srgb():
    from PIL import Image as PILImage

    make_encoder()
    collection = collection_get_or_create(name="profiles")
    tagged = image_bytes(color=(255, 0, 0), size=(600, 400), fmt="JPEG", quality=95, icc_profile=swapped_primaries_profile())
    images_create(collection=collection, files=[IncomingFile(name="tagged.jpg", data=tagged)])
    image = Image.objects.get()
    images_index(image_ids=[image.id])
    image.refresh_from_db()
    assert image.status == "indexed"
    with image.thumbnail.open("rb") as handle:
        red, green, blue = PILImage.open(handle).convert("RGB").getpixel((128, 85))
    assert green > 220 and red < 40 and blue < 40  # pure green as a browser shows the original


@pytest.mark.django_db
def test_rebuilding_thumbnails_brings_images_indexed_before_up_to_date(capsys):
    """As if indexed before sizes were recorded as shown and profiles converted: a dull (red)
    thumbnail and the header's landscape size. The command makes both as indexing does now,
    removes the old file, leaves the vectors and other collections alone."""
    from django.core.files.storage import default_storage
    from PIL import Image as PILImage

    make_encoder()
    collection, other = collection_get_or_create(name="old"), collection_get_or_create(name="other")
    tagged = image_bytes(color=(255, 0, 0), size=(600, 400), fmt="JPEG", exif=orientation_exif(6), icc_profile=swapped_primaries_profile())
    images_create(collection=collection, files=[
        IncomingFile(name="tagged.jpg", data=tagged), IncomingFile(name="gone.png", data=image_bytes(pattern=1)),
    ])
    images_create(collection=other, files=[IncomingFile(name="elsewhere.png", data=image_bytes(pattern=2))])
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    tagged_row, gone, elsewhere = (Image.objects.get(original_name=name) for name in ("tagged.jpg", "gone.png", "elsewhere.png"))
    old_name, untouched_name = tagged_row.thumbnail.name, elsewhere.thumbnail.name
    default_storage.delete(old_name)
    default_storage.save(old_name, ContentFile(image_bytes(color=(255, 0, 0), size=(256, 171), fmt="WEBP")))
    Image.objects.filter(pk=tagged_row.pk).update(width=600, height=400, signature=None)  # and before copy signatures
    default_storage.delete(gone.file.name)  # its original lost: it keeps its thumbnail
    vectors = dict(Embedding.objects.values_list("image_id", "vector"))

    call_command("rebuild_thumbnails", "--collection", "old")
    out, err = capsys.readouterr()
    assert "1 thumbnails rebuilt, 1 images could not be read" in out and f"image {gone.pk}: stored file is missing" in err
    tagged_row.refresh_from_db()
    assert (tagged_row.width, tagged_row.height) == (400, 600) and tagged_row.thumbnail.name != old_name
    assert Image.objects.filter(pk=tagged_row.pk, signature__isnull=False).exists()
    assert not default_storage.exists(old_name)
    with tagged_row.thumbnail.open("rb") as handle:
        thumbnail = PILImage.open(handle).convert("RGB")
    assert thumbnail.size == (171, 256)  # upright
    red, green, blue = thumbnail.getpixel((85, 128))
    assert green > 220 and red < 40  # converted from its profile
    assert Image.objects.get(pk=gone.pk).thumbnail and Image.objects.get(pk=elsewhere.pk).thumbnail.name == untouched_name
    assert {key: list(value) for key, value in Embedding.objects.values_list("image_id", "vector")} == {
        key: list(value) for key, value in vectors.items()
    }
    with pytest.raises(CommandError, match="no collection 'nope'"):
        call_command("rebuild_thumbnails", "--collection", "nope")


@pytest.mark.django_db(transaction=True)  # committed for real, so the foreign key is checked
def test_an_image_deleted_while_it_is_embedded_does_not_fail_the_others():
    encoder = make_encoder()
    collection = collection_get_or_create(name="deleted meanwhile")
    images_create(collection=collection, files=[IncomingFile(name=f"{i}.png", data=image_bytes(pattern=i)) for i in range(3)])
    images = list(Image.objects.order_by("id"))  # what a worker loaded
    Image.objects.filter(pk=images[0].pk).delete()  # then deleted, before its vector is stored
    embeddings_store(encoder=encoder, images=images, vectors=np.ones((3, encoder.dim), dtype=np.float32))
    assert set(Embedding.objects.values_list("image_id", flat=True)) == {images[1].pk, images[2].pk}


def test_sweep_requeues_images_whose_message_was_lost(celery_worker):
    make_encoder()
    collection = collection_get_or_create(name="lost")
    # Rows committed as pending, but no message ever reached the broker (as when it was down).
    images = [
        Image(collection=collection, original_name=f"{i}.png", sha256=str(i), queued_at=timezone.now() - timedelta(hours=1))
        for i in range(3)
    ]
    for image, i in zip(images, range(3)):
        image.file.save(f"{i}.png", ContentFile(image_bytes(pattern=i)), save=False)
    Image.objects.bulk_create(images)
    fresh = Image.objects.create(collection=collection, original_name="fresh.png", sha256="f", queued_at=timezone.now())

    sweep_pending.delay()
    wait_for(lambda: Image.objects.filter(status=Image.Status.INDEXED).count() == 3, message="swept images indexed")
    assert Image.objects.get(pk=fresh.pk).status == Image.Status.PENDING  # its request is recent: left alone


@pytest.mark.django_db
def test_sweep_leaves_images_that_only_wait_for_a_first_encoder():
    collection = collection_get_or_create(name="waiting")
    image = Image.objects.create(
        collection=collection, original_name="w.png", sha256="w", thumbnail="thumbnails/x.webp",
        queued_at=timezone.now() - timedelta(hours=1),
    )
    assert pending_sweep(older_than=timedelta(minutes=5)) == 0
    image.thumbnail = ""
    image.save()
    assert pending_sweep(older_than=timedelta(minutes=5)) == 1


@pytest.mark.django_db
def test_a_sweep_whose_media_clean_up_fails_still_queues_the_pending_images_again(media_root, caplog):
    """Media storage that errors when the sweep walks it for deleted collections' files (here its
    thumbnails folder is a file) is logged, after the images waiting were queued again."""
    (media_root / "thumbnails").write_bytes(b"not a folder")
    collection = collection_get_or_create(name="lost")
    lost = Image.objects.create(collection=collection, original_name="l.png", sha256="l", queued_at=timezone.now() - timedelta(hours=1))
    assert sweep_pending.run() == 1
    assert Image.objects.get(pk=lost.pk).queued_at > timezone.now() - timedelta(minutes=1)
    assert "the sweep could not remove the files deleted collections left in media storage" in caplog.text
    assert "NotADirectoryError" in caplog.text


def test_send_survives_a_broker_that_is_down(caplog):
    unreachable = Celery("down", broker="redis://127.0.0.1:1/0", set_as_current=False)
    unreachable.conf.broker_connection_retry = False
    unreachable.conf.broker_transport_options = {"max_retries": 0}

    @unreachable.task(name="down.index")
    def index(ids):
        return ids

    task_send_safely(index, [1, 2])
    assert "the sweep will retry" in caplog.text


@pytest.fixture
def broker_refuses(monkeypatch):
    """Every message to these tasks is refused as Redis refuses a connection when it is down."""
    from kombu.exceptions import OperationalError

    from workers import tasks

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    for task in (tasks.train_encoder, tasks.backfill_embeddings):
        monkeypatch.setattr(task, "apply_async", refuse)


@pytest.mark.django_db
def test_a_training_that_cannot_be_queued_is_failed_with_the_reason(broker_refuses, django_capture_on_commit_callbacks, caplog):
    """It raised out of the admin's action, a 500, and left a version in "training" for good: no
    sweep starts a training."""
    from search.models import EncoderVersion
    from workers.services import encoder_queue_training

    collection = collection_get_or_create(name="c")
    with django_capture_on_commit_callbacks(execute=True):
        encoder = encoder_queue_training(collection=collection)
    encoder.refresh_from_db()
    assert encoder.status == EncoderVersion.Status.FAILED
    assert "could not be queued" in encoder.error and "Connection refused" in encoder.error
    assert "could not queue the training" in caplog.text


@pytest.mark.django_db(transaction=True)  # the admin runs in autocommit, so the message is sent before it answers
def test_the_admin_says_when_a_training_could_not_be_queued(broker_refuses, admin_client):
    from search.models import EncoderVersion

    collection = collection_get_or_create(name="c")
    page = admin_client.post(
        reverse("admin:gallery_collection_changelist"), {"action": "train_encoder", "_selected_action": [collection.pk]}, follow=True
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert "the training could not be queued" in text and "queued; its progress" not in text
    assert EncoderVersion.objects.get().status == EncoderVersion.Status.FAILED


@pytest.mark.django_db
def test_an_activation_that_cannot_be_queued_is_left_to_the_sweep(broker_refuses, django_capture_on_commit_callbacks, monkeypatch):
    """It raised out of the admin's action, a 500, though the encoder was already activating; the
    sweep starts quiet activations again, once the broker answers."""
    from search.models import EncoderVersion
    from search.services import encoder_activate
    from workers import tasks

    encoder = make_encoder(status="trained")
    with django_capture_on_commit_callbacks(execute=True):
        encoder_activate(encoder=encoder)
    encoder.refresh_from_db()
    assert encoder.status == EncoderVersion.Status.ACTIVATING
    sent = []
    monkeypatch.setattr(tasks.backfill_embeddings, "apply_async", lambda args, **kwargs: sent.append(args))
    pending_sweep(older_than=timedelta(minutes=5))
    assert sent == [(encoder.pk,)]


def _pending_rows_one_hung(collection) -> tuple[Image, list[int]]:
    """Three pending rows; the first one's stored file is a FIFO: opening it for reading waits for
    a writer that never comes, as a read from a hung network mount does."""
    images = _pending_rows(collection, {f"{i}.png": image_bytes(pattern=i) for i in range(3)})
    os.unlink(images[0].file.path)
    os.mkfifo(images[0].file.path)
    return images[0], [image.pk for image in images[1:]]


def _pending_rows(collection, files: dict[str, bytes | None], **fields) -> list[Image]:
    """Pending rows as the importer leaves them, each with its stored file; where the bytes are
    None the stored name is a directory instead: storage that fails on reading with an error
    (IsADirectoryError) that no decoder check catches, on every attempt."""
    images = []
    for name, data in files.items():
        image = Image(collection=collection, original_name=name, sha256=name, queued_at=timezone.now(), **fields)
        image.file.save(name, ContentFile(data if data is not None else b"placeholder"), save=False)
        if data is None:
            path = image.file.path
            image.file.storage.delete(image.file.name)
            os.mkdir(path)
        images.append(image)
    return Image.objects.bulk_create(images)


def _image(pk: int) -> Image:
    return Image.objects.get(pk=pk)


def test_a_file_that_stops_every_attempt_is_tried_alone_then_given_up_and_the_others_go_on(celery_worker, admin_client):
    make_encoder()
    collection = collection_get_or_create(name="poison")
    good = {f"{i}.png": image_bytes(pattern=i) for i in range(3)}
    images = _pending_rows(collection, {"0.png": good["0.png"], "bad.png": None, "1.png": good["1.png"], "2.png": good["2.png"]})
    bad = images[1]
    others = [image.pk for image in images if image.pk != bad.pk]

    index_images.delay([image.pk for image in images])  # one request: its first attempt stops on the bad file
    # the request's images are queued again one by one, so the others are indexed at once
    wait_for(lambda: Image.objects.filter(pk__in=others, status=Image.Status.INDEXED).count() == 3, message="the others indexed")
    wait_for(lambda: _image(bad.pk).attempts == 2, message="the bad file's second attempt, alone")
    assert [(image.attempts, image.error) for image in Image.objects.filter(pk__in=others)] == [(0, "")] * 3  # done
    assert _image(bad.pk).status == Image.Status.PENDING
    assert _image(bad.pk).error.startswith("the last attempt stopped: IsADirectoryError")

    index_images.delay([bad.pk])  # as the sweep queues it again
    wait_for(lambda: _image(bad.pk).attempts == MAX_INDEX_ATTEMPTS, message="the third attempt")
    index_images.delay([bad.pk])
    wait_for(lambda: _image(bad.pk).status == Image.Status.FAILED, message="given up")
    failed = _image(bad.pk)
    assert failed.error.startswith(f"{GIVEN_UP_REASON}; the last attempt stopped: IsADirectoryError")
    assert failed.attempts == MAX_INDEX_ATTEMPTS
    assert Embedding.objects.filter(image_id__in=others).count() == 3 and not Embedding.objects.filter(image_id=bad.pk).exists()

    # Storage repaired, the admin indexes it again.
    path = failed.file.path
    os.rmdir(path)
    with open(path, "wb") as handle:
        handle.write(image_bytes(pattern=7))
    response = admin_client.post(
        reverse("admin:gallery_image_changelist"), {"action": "index_again", "_selected_action": [bad.pk, others[0]]}
    )
    assert response.status_code == 302
    wait_for(lambda: _image(bad.pk).status == Image.Status.INDEXED, message="indexed again")
    assert (_image(bad.pk).attempts, _image(bad.pk).error) == (0, "")


def _pool_children(pid: int) -> list[int]:
    """The worker's pool processes; none once it has exited."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


def _swept_until(sender, ended):
    """A ``wait_for`` predicate: true once ``ended()``; until then it sends the sweep, as beat
    would, and gives the worker 2 s."""

    def check():
        if ended():
            return True
        sender.send_task("workers.tasks.sweep_pending")
        time.sleep(2)
        return False

    return check


@pytest.fixture
def prefork_worker(transactional_db, media_root):
    """Starts a real Celery worker in its own process with one prefork child, as `make run` and
    compose start them, on its own Redis database (so the in-process test worker never takes its
    messages), on the test database and media, with these settings (environment variables).
    Returns its pid and a Celery app that sends to it."""
    import signal
    import subprocess
    import sys

    from django.conf import settings

    broker = settings.CELERY_BROKER_URL.rsplit("/", 1)[0] + "/9"
    sender = Celery("sender", broker=broker, set_as_current=False)  # the product's tasks keep their own app
    sender.conf.broker_transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    sender.control.purge()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": broker,
        "CBIR_MEDIA_ROOT": str(media_root),
        "CBIR_VAR_DIR": str(settings.VAR_DIR),
        "CBIR_WORKER_CONCURRENCY": "1",
        "DJANGO_SETTINGS_MODULE": "cbir_site.settings",
    }
    command = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "prefork", "--loglevel", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
    started = []

    def start(**overrides: str) -> tuple[int, Celery]:
        started.append(subprocess.Popen(command, env={**env, **overrides}, cwd=settings.BASE_DIR))
        return started[-1].pid, sender

    yield start
    for worker in started:
        for child in _pool_children(worker.pid):
            os.kill(child, signal.SIGKILL)  # a child blocked on a read would hold up a warm shutdown
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    sender.control.purge()


def test_a_file_that_hangs_its_worker_until_it_is_killed_is_given_up_after_three_kills(prefork_worker):
    """A worker process killed mid-batch (here on a stored file whose read never returns, as on a
    hung network mount) has its request delivered again (CELERY_TASK_REJECT_ON_WORKER_LOST):
    the images of the killed attempt are then tried one by one, the others are indexed, and the
    one that was being read each time is given up after the third kill."""
    import signal

    pid, sender = prefork_worker()
    make_encoder()
    collection = collection_get_or_create(name="killed")
    hung, others = _pending_rows_one_hung(collection)

    sender.send_task("workers.tasks.index_images", args=[[hung.pk, *others]])
    for attempt in range(1, MAX_INDEX_ATTEMPTS + 1):
        wait_for(lambda: _image(hung.pk).attempts == attempt, message=f"attempt {attempt} on the hung file")
        wait_for(lambda: _pool_children(pid), message="a pool child")
        for child in _pool_children(pid):
            os.kill(child, signal.SIGKILL)
    wait_for(lambda: _image(hung.pk).status == Image.Status.FAILED, message="given up")
    wait_for(lambda: Image.objects.filter(pk__in=others, status=Image.Status.INDEXED).count() == 2, message="the others")
    assert _image(hung.pk).error == GIVEN_UP_REASON
    assert Embedding.objects.filter(image_id__in=others).count() == 2


def test_a_file_whose_read_never_returns_is_given_up_after_three_time_limits(prefork_worker):
    """Nobody kills anything here: Celery's time limit ends each attempt, and the sweep, as beat
    runs it, queues the images again."""
    pid, sender = prefork_worker(CBIR_INDEX_TIME_LIMIT_S="6", CBIR_SWEEP_AFTER_S="1")
    make_encoder()
    hung, others = _pending_rows_one_hung(collection_get_or_create(name="hung"))

    sender.send_task("workers.tasks.index_images", args=[[hung.pk, *others]])
    wait_for(_swept_until(sender, lambda: _image(hung.pk).status == Image.Status.FAILED), message="given up")
    assert _image(hung.pk).error == GIVEN_UP_REASON
    wait_for(lambda: Image.objects.filter(pk__in=others, status=Image.Status.INDEXED).count() == 2, message="the others")


@pytest.mark.django_db
def test_a_retry_after_a_transient_error_is_not_a_new_attempt():
    make_encoder()
    bad = _pending_rows(collection_get_or_create(name="retried"), {"bad.png": None})[0]
    with pytest.raises(IsADirectoryError):
        images_index_request(image_ids=[bad.pk], counted=False)
    assert _image(bad.pk).attempts == 0
    with pytest.raises(IsADirectoryError):
        images_index_request(image_ids=[bad.pk])
    assert _image(bad.pk).attempts == 1
    assert _image(bad.pk).error.startswith("the last attempt stopped: IsADirectoryError")


def test_activating_an_encoder_gives_up_on_a_file_that_stops_every_backfill_step(prefork_worker):
    """The re-embedding chain of an activating encoder, killed by the time limit on a stored file
    whose read never returns and restarted by the sweep each time, takes that step's images one by
    one, gives up on the file, and the encoder becomes the active one."""
    from search.models import EncoderVersion

    pid, sender = prefork_worker(CBIR_INDEX_TIME_LIMIT_S="6", CBIR_SWEEP_AFTER_S="1")
    make_encoder()
    collection = collection_get_or_create(name="activating")
    images = _pending_rows(collection, {f"{i}.png": image_bytes(pattern=i) for i in range(3)})
    images_index(image_ids=[image.pk for image in images])
    hung, others = images[1], [images[0].pk, images[2].pk]
    os.unlink(hung.file.path)
    os.mkfifo(hung.file.path)
    new = make_encoder(status="activating", seed=1)

    sender.send_task("workers.tasks.backfill_embeddings", args=[new.pk])
    wait_for(
        _swept_until(sender, lambda: EncoderVersion.objects.get(pk=new.pk).status == EncoderVersion.Status.ACTIVE),
        message="the new encoder active",
    )
    assert (_image(hung.pk).status, _image(hung.pk).error) == (Image.Status.FAILED, GIVEN_UP_REASON)
    assert set(Embedding.objects.values_list("image_id", "encoder_id")) == {(pk, new.pk) for pk in others}
    assert [(image.status, image.attempts) for image in Image.objects.filter(pk__in=others)] == [("indexed", 0)] * 2


def _held_by_a_worker(model, pk: int) -> bool:
    """Whether a transaction of another connection holds row ``pk`` of ``model`` (the stretch of a run)."""
    from django.db import transaction

    with transaction.atomic():
        return not model.objects.select_for_update(skip_locked=True).filter(pk=pk).exists()


def test_a_copy_removal_stuck_on_a_lock_is_ended_by_the_time_limit_and_a_stop_meanwhile_says_so(prefork_worker, admin_client, settings):
    """A stretch that waits for a row held elsewhere holds its run's row too. The stop waits
    CBIR_STOP_WAIT_S for it, then the copies page says why nothing was stopped. The time limit
    kills the stretch (its server process notices and lets the rows go), the sweep takes the run
    up again, and its fourth start ends it as failed; nothing was deleted. Once the row is free, a
    new removal deletes the copy."""
    import io

    from PIL import Image as PILImage

    from gallery.models import CopyRemovalRun
    from gallery.services import COPY_REMOVAL_TRIES_MAX, copy_removal_advance, copy_removal_record

    _, sender = prefork_worker(CBIR_STRETCH_TIME_LIMIT_S="4", CBIR_SWEEP_AFTER_S="1")
    settings.CBIR_STOP_WAIT_S = 1
    make_encoder()
    photos = collection_get_or_create(name="photos")
    picture = image_bytes(pattern=7, size=(400, 300))
    smaller = io.BytesIO()
    PILImage.open(io.BytesIO(picture)).convert("RGB").resize((200, 150)).save(smaller, "JPEG", quality=90)
    images_create(collection=photos, files=[IncomingFile(name="large.png", data=picture), IncomingFile(name="small.jpg", data=smaller.getvalue())])
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    kept = Image.objects.get(original_name="large.png")
    release = row_locked_elsewhere(Image, kept.pk)  # the stretch's lock on the picture it keeps waits
    try:
        run = copy_removal_record(collection=photos)
        sender.send_task("workers.tasks.remove_copies", args=[run.pk, 1, 0])
        wait_for(lambda: _held_by_a_worker(CopyRemovalRun, run.pk), message="the worker's stretch")
        url = reverse("gallery:collection-copies", args=[photos.pk])
        page = admin_client.post(url, {"remove": "stop"}, follow=True).content.decode()
        assert "The removal goes on: the stretch of images a worker is on has not finished after 1 s" in page
        wait_for(_swept_until(sender, lambda: CopyRemovalRun.objects.get(pk=run.pk).status != "running"), message="the run to end")
        run.refresh_from_db()
        assert run.status == "failed" and f"were started {COPY_REMOVAL_TRIES_MAX} times and never finished" in run.error
        assert Image.objects.filter(collection=photos).count() == 2
    finally:
        release()
    again = copy_removal_record(collection=photos)
    assert copy_removal_advance(run_id=again.pk, round_number=1, after=0).deleted == 1
    assert list(Image.objects.values_list("original_name", flat=True)) == ["large.png"]


def test_a_move_stuck_on_a_lock_is_ended_by_the_time_limit_and_fails_after_its_starts(prefork_worker):
    """A stretch of a move waits for its target collection, held elsewhere: the time limit ends each
    start, the sweep takes it up again, and the fourth start ends the run as failed, with nothing moved."""
    from gallery.models import Collection, MoveRun
    from gallery.services import MOVE_RUN_TRIES_MAX

    _, sender = prefork_worker(CBIR_STRETCH_TIME_LIMIT_S="4", CBIR_SWEEP_AFTER_S="1")
    drafts, final = collection_get_or_create(name="drafts"), collection_get_or_create(name="final")
    images_create(collection=drafts, files=[IncomingFile(name=f"{i}.png", data=image_bytes(pattern=i)) for i in range(3)])
    ids = list(Image.objects.values_list("id", flat=True))
    run = MoveRun.objects.create(to=final, image_ids=ids, total=len(ids))
    release = row_locked_elsewhere(Collection, final.pk)
    try:
        sender.send_task("workers.tasks.move_images", args=[run.pk, 0])
        wait_for(_swept_until(sender, lambda: MoveRun.objects.get(pk=run.pk).status != "running"), message="the run to end")
    finally:
        release()
    run.refresh_from_db()
    assert run.status == "failed" and f"were started {MOVE_RUN_TRIES_MAX} times and never finished" in run.error
    assert (run.position, run.moved) == (0, 0) and Image.objects.filter(collection=drafts).count() == 3


def _encoder_without_its_checkpoint(**fields):
    """An encoder whose checkpoint file this worker cannot read: deleted, or on a volume that a
    worker on another machine lacks."""
    encoder = make_encoder(**fields)
    os.unlink(encoder.checkpoint.path)
    return encoder


@pytest.mark.django_db
def test_an_activating_encoder_that_cannot_be_loaded_does_not_hold_up_uploads():
    """The active encoder indexes them; the activating one's error is recorded on it, and its
    re-embedding gives them their vectors once it can be loaded."""
    active = make_encoder()
    broken = _encoder_without_its_checkpoint(status="activating", seed=1)
    images = _pending_rows(collection_get_or_create(name="uploads"), {f"{i}.png": image_bytes(pattern=i) for i in range(2)})

    images_index_request(image_ids=[image.pk for image in images])

    assert [(image.status, image.attempts, image.error) for image in Image.objects.order_by("id")] == [("indexed", 0, "")] * 2
    assert set(Embedding.objects.values_list("encoder_id", flat=True)) == {active.pk}
    broken.refresh_from_db()
    assert broken.status == "activating"
    assert broken.error.startswith("could not load its checkpoint: FileNotFoundError")


@pytest.mark.django_db
def test_an_encoder_that_cannot_be_loaded_leaves_the_indexed_images_as_they_are():
    """Its re-embedding stops with the reason on the encoder, however often the sweep restarts
    it: the images are not the cause, so no attempt is counted on them and none is given up on."""
    from workers.services import encoder_backfill_step

    make_encoder()
    images = _pending_rows(collection_get_or_create(name="kept"), {f"{i}.png": image_bytes(pattern=i) for i in range(3)})
    images_index(image_ids=[image.pk for image in images])
    broken = _encoder_without_its_checkpoint(status="activating", seed=1)

    for _ in range(MAX_INDEX_ATTEMPTS + 1):
        with pytest.raises(FileNotFoundError):
            encoder_backfill_step(encoder_id=broken.pk)

    assert [(image.status, image.attempts) for image in Image.objects.order_by("id")] == [("indexed", 0)] * 3
    broken.refresh_from_db()
    assert (broken.status, broken.error.split(":")[0]) == ("activating", "could not load its checkpoint")
    assert not Embedding.objects.filter(encoder=broken).exists()


@pytest.mark.django_db
def test_an_error_that_stops_a_reembedding_step_is_recorded_on_the_encoder_until_it_is_promoted():
    from search.models import EncoderVersion
    from workers.services import encoder_backfill_step

    make_encoder()
    images = _pending_rows(collection_get_or_create(name="stopped"), {f"{i}.png": image_bytes(pattern=i) for i in range(2)})
    images_index(image_ids=[image.pk for image in images])
    new = make_encoder(status="activating", seed=1)
    path = images[1].file.path
    os.rename(path, path + ".away")
    os.mkdir(path)  # reading it raises IsADirectoryError, which no decoder check catches

    with pytest.raises(IsADirectoryError):
        encoder_backfill_step(encoder_id=new.pk)
    new.refresh_from_db()
    assert new.error.startswith(f"re-embedding stopped on images {images[0].pk}, {images[1].pk}: IsADirectoryError")

    os.rmdir(path)
    os.rename(path + ".away", path)
    while not encoder_backfill_step(encoder_id=new.pk):
        pass
    new.refresh_from_db()
    assert (new.status, new.error) == (EncoderVersion.Status.ACTIVE, "")


@pytest.mark.django_db
def test_the_admin_shows_how_far_a_reembedding_got_and_what_stopped_it(admin_client):
    from workers.services import encoder_backfill_step

    make_encoder()
    images = _pending_rows(collection_get_or_create(name="shown"), {f"{i}.png": image_bytes(pattern=i) for i in range(3)})
    images_index(image_ids=[image.pk for image in images])
    new = _encoder_without_its_checkpoint(status="activating", seed=1)
    embeddings_store(encoder=new, images=images[:1], vectors=np.ones((1, new.dim), dtype=np.float32))  # one done so far
    with pytest.raises(FileNotFoundError):
        encoder_backfill_step(encoder_id=new.pk)

    page = admin_client.get(reverse("admin:search_encoderversion_changelist")).content.decode()

    assert "1 of 3 images" in page
    assert "could not load its checkpoint: FileNotFoundError" in page


@pytest.mark.django_db
def test_encoder_versions_come_from_training_not_from_the_admins_add_form(admin_client):
    """A row added by hand had no width: saving it was a 500 (the column is NOT NULL)."""
    from search.models import EncoderVersion

    response = admin_client.post(reverse("admin:search_encoderversion_add"), {"name": "by hand"})
    assert response.status_code == 403
    assert not EncoderVersion.objects.exists()
    assert reverse("admin:search_encoderversion_add") not in admin_client.get(reverse("admin:search_encoderversion_changelist")).content.decode()


@pytest.mark.django_db
def test_a_request_for_images_indexed_since_it_was_queued_does_no_work():
    """As when the sweep queued an image again while its first request waited in a long queue."""
    make_encoder()
    image = _pending_rows(collection_get_or_create(name="done"), {"0.png": image_bytes(pattern=0)})[0]
    images_index_request(image_ids=[image.pk])
    path = _image(image.pk).file.path
    os.unlink(path)
    os.mkdir(path)  # reading it again would raise
    images_index_request(image_ids=[image.pk])
    assert (_image(image.pk).status, _image(image.pk).attempts, _image(image.pk).error) == ("indexed", 0, "")


@pytest.mark.django_db
def test_indexing_again_leaves_refused_files_and_files_uploaded_again():
    collection = collection_get_or_create(name="again")
    images_create(collection=collection, files=[IncomingFile(name="junk.png", data=b"not an image")])
    failed_twice, lost = _pending_rows(collection, {"a.png": image_bytes(pattern=1), "b.png": image_bytes(pattern=2)})
    Image.objects.filter(pk__in=[failed_twice.pk, lost.pk]).update(status=Image.Status.FAILED, error="x", attempts=3)
    Image.objects.create(collection=collection, original_name="a again.png", sha256=failed_twice.sha256)  # uploaded again
    copy = Image.objects.create(collection=collection, original_name="b copy.png", sha256=lost.sha256, file=lost.file.name)
    Image.objects.filter(pk=copy.pk).update(status=Image.Status.FAILED, error="x")  # uploaded twice, both failed
    assert images_index_again(images=Image.objects.all()) == 1
    states = dict(Image.objects.values_list("original_name", "status"))
    assert states == {"junk.png": "failed", "a.png": "failed", "b.png": "pending", "a again.png": "pending", "b copy.png": "failed"}
    assert (_image(lost.pk).error, _image(lost.pk).attempts) == ("", 0)


@contextmanager
def _without_the_media_volume(settings, tmp_path):
    """This worker's MEDIA_ROOT an empty folder of its own, as on a machine where the shared
    volume is not mounted."""
    shared = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = tmp_path / "not-mounted"
    settings.MEDIA_ROOT.mkdir(exist_ok=True)
    try:
        yield
    finally:
        settings.MEDIA_ROOT = shared


@pytest.mark.django_db
def test_a_worker_without_the_media_volume_leaves_the_images_pending_with_the_reason(settings, tmp_path):
    """Every stored file reads as missing there. They used to be failed ('stored file is missing
    from media storage'), every image that worker touched; now they wait, no attempt counted, and
    a worker that has the volume indexes them."""
    make_encoder()
    images = _pending_rows(collection_get_or_create(name="elsewhere"), {f"{i}.png": image_bytes(pattern=i) for i in range(3)})
    ids = [image.pk for image in images]

    with _without_the_media_volume(settings, tmp_path):
        for _ in range(MAX_INDEX_ATTEMPTS + 1):
            with pytest.raises(MediaStorageUnavailable, match="media storage is not mounted on "):
                images_index_request(image_ids=ids)
    rows = list(Image.objects.order_by("id"))
    assert [(image.status, image.attempts) for image in rows] == [("pending", 0)] * 3
    assert all(image.error.startswith("waiting: media storage is not mounted") and ".cbir-media" in image.error for image in rows)

    images_index_request(image_ids=ids)
    assert [(image.status, image.attempts, image.error) for image in Image.objects.order_by("id")] == [("indexed", 0, "")] * 3


@pytest.mark.django_db
def test_a_reembedding_on_a_worker_without_the_media_volume_waits_and_fails_no_image(settings, tmp_path):
    from workers.services import encoder_backfill_step

    make_encoder()
    images = _pending_rows(collection_get_or_create(name="kept"), {f"{i}.png": image_bytes(pattern=i) for i in range(3)})
    images_index(image_ids=[image.pk for image in images])
    new = make_encoder(status="activating", seed=1)

    with _without_the_media_volume(settings, tmp_path):
        for _ in range(MAX_INDEX_ATTEMPTS + 1):
            with pytest.raises(MediaStorageUnavailable):
                encoder_backfill_step(encoder_id=new.pk)
    assert [(image.status, image.attempts) for image in Image.objects.order_by("id")] == [("indexed", 0)] * 3
    new.refresh_from_db()
    assert (new.status, new.error.split(":")[0]) == ("activating", "re-embedding waits")

    while not encoder_backfill_step(encoder_id=new.pk):
        pass
    new.refresh_from_db()
    assert (new.status, new.error, Embedding.objects.filter(encoder=new).count()) == ("active", "", 3)


@pytest.mark.django_db
def test_deleting_files_on_a_worker_without_the_media_volume_is_left_to_a_worker_that_has_it(settings, tmp_path):
    """It used to find nothing to delete and count as done, the files left on the volume."""
    from workers.tasks import delete_collection_files, delete_media_files

    images = _pending_rows(collection_get_or_create(name="going"), {"0.png": image_bytes(pattern=0)})
    with _without_the_media_volume(settings, tmp_path):
        with pytest.raises(MediaStorageUnavailable):
            delete_media_files([images[0].file.name])
        with pytest.raises(MediaStorageUnavailable):
            delete_collection_files(images[0].collection_id)
    assert images[0].file.storage.exists(images[0].file.name)
    delete_media_files([images[0].file.name])
    assert not images[0].file.storage.exists(images[0].file.name)


@pytest.mark.django_db
def test_migrate_and_uploads_mark_the_media_volume(settings, tmp_path):
    for volume, mark in enumerate((lambda: call_command("migrate", verbosity=0), lambda: images_create(
        collection=collection_get_or_create(name="marks"), files=[IncomingFile(name="a.png", data=image_bytes(pattern=0))]
    ))):
        settings.MEDIA_ROOT = tmp_path / f"volume-{volume}"
        with pytest.raises(MediaStorageUnavailable):
            media_storage_check()
        mark()
        media_storage_check()
        assert "media storage of the CBIR service" in (settings.MEDIA_ROOT / MEDIA_MARKER).read_text()


@pytest.mark.django_db
def test_migrate_still_finishes_where_media_storage_cannot_be_marked(settings, tmp_path, caplog):
    (tmp_path / "a file").write_bytes(b"")
    settings.MEDIA_ROOT = tmp_path / "a file" / "media"
    call_command("migrate", verbosity=0)
    assert "could not mark media storage" in caplog.text

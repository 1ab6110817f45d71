"""Moving images to another collection (``gallery.services.images_move`` / ``image_update``): the
admin's action, the API's PATCH, and what a move must keep: vectors found under the new
collection, counts, files, and no file twice in a collection."""
import threading
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.admin import helpers
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from gallery.models import Collection, Image, MoveRun
from gallery.selectors import collection_stats
from gallery.services import (
    MOVE_RUN_IMAGES_MAX, MOVE_RUN_TRIES_MAX, StretchUnderway, collection_delete, images_move, move_run_advance, move_run_stop,
    move_runs_resume,
)
from search import selectors
from search.models import EncoderVersion, Embedding
from search.services import embeddings_store
from tests.conftest import wait_for
from tests.utils import image_bytes, in_own_thread, paused_after, row_locked_elsewhere, vector

pytestmark = pytest.mark.django_db


def _image(collection: Collection, name: str, *, sha256: str, encoder: EncoderVersion | None = None, hot: int = 0, label: str = "") -> Image:
    """An image with a stored file; indexed with a hand-made vector when ``encoder`` is given."""
    image = Image(collection=collection, original_name=name, label=label, sha256=sha256, status="indexed" if encoder else "pending")
    image.file.save(name, ContentFile(image_bytes(pattern=hot)), save=True)
    if encoder is not None:
        Embedding.objects.create(image=image, encoder=encoder, collection=collection, vector=vector((hot, 1.0)))
    return image


@pytest.fixture
def encoder():
    return EncoderVersion.objects.create(name="hand-made", arch="conv_ae", dim=256, status="active")


def test_moved_images_are_searched_counted_and_listed_under_their_new_collection(encoder):
    birds, mammals = Collection.objects.create(name="birds"), Collection.objects.create(name="mammals")
    hen = _image(birds, "hen.png", sha256="1" * 64, encoder=encoder, hot=0, label="farm")
    cat = _image(birds, "cat.png", sha256="2" * 64, encoder=encoder, hot=1, label="pet")
    dog = _image(birds, "dog.png", sha256="3" * 64, hot=2)  # pending: a worker has not seen it yet
    cow = _image(mammals, "cow.png", sha256="4" * 64, encoder=encoder, hot=1)

    moved = images_move(images=Image.objects.filter(pk__in=[cat.pk, dog.pk]), to=mammals)

    assert (moved.moved, moved.duplicates, moved.already) == ([cat.pk, dog.pk], [], [])
    assert dict(Image.objects.values_list("original_name", "collection__name")) == {
        "hen.png": "birds", "cat.png": "mammals", "dog.png": "mammals", "cow.png": "mammals",
    }
    assert dict(Embedding.objects.values_list("image_id", "collection_id")) == {hen.pk: birds.pk, cat.pk: mammals.pk, cow.pk: mammals.pk}
    near_cow = selectors.image_list_similar(image=cow, k=5, collection_ids=[mammals.pk], expand=0)
    assert [hit.image.pk for hit in near_cow] == [cat.pk]
    near_hen = selectors.image_list_similar(image=hen, k=5, collection_ids=[birds.pk], expand=0)
    assert near_hen == []
    assert [collection_stats(collection=c)[key] for c in (birds, mammals) for key in ("total", "indexed", "pending")] == [1, 1, 0, 3, 2, 1]
    cat.refresh_from_db()
    assert (cat.label, cat.status) == ("pet", "indexed")
    assert default_storage.exists(cat.file.name) and cat.file.name.startswith(f"images/{birds.pk}/")  # the file stays put


def test_a_file_the_collection_holds_already_stays_where_it_was(encoder):
    first, second, target = (Collection.objects.create(name=name) for name in ("first", "second", "target"))
    held = _image(target, "held.png", sha256="a" * 64)
    again = _image(first, "again.png", sha256="a" * 64)  # the file target holds
    new = _image(first, "new.png", sha256="b" * 64)
    twin = _image(second, "twin.png", sha256="b" * 64)  # the same file as new, from another collection
    there = _image(target, "there.png", sha256="c" * 64)

    moved = images_move(images=Image.objects.filter(pk__in=[again.pk, new.pk, twin.pk, there.pk]), to=target)

    assert moved.moved == [new.pk]
    assert moved.duplicates == [(again.pk, held.pk), (twin.pk, new.pk)]
    assert moved.already == [there.pk]
    assert dict(Image.objects.values_list("original_name", "collection__name")) == {
        "held.png": "target", "again.png": "first", "new.png": "target", "twin.png": "second", "there.png": "target",
    }
    assert Image.objects.filter(collection=target, sha256="b" * 64).count() == 1


def test_deleting_the_collection_an_image_left_keeps_the_image_and_its_file(encoder, django_capture_on_commit_callbacks):
    old, new = Collection.objects.create(name="old"), Collection.objects.create(name="new")
    leaving = _image(old, "leaving.png", sha256="1" * 64, encoder=encoder)
    staying = _image(old, "staying.png", sha256="2" * 64, encoder=encoder)
    images_move(images=Image.objects.filter(pk=leaving.pk), to=new)

    with django_capture_on_commit_callbacks(execute=True):
        assert collection_delete(collection=old) == 1

    assert list(Image.objects.values_list("pk", flat=True)) == [leaving.pk]
    assert Embedding.objects.get().image_id == leaving.pk
    assert default_storage.exists(leaving.file.name) and not default_storage.exists(staying.file.name)


def test_moving_to_a_deleted_collection_moves_nothing():
    from gallery.services import MoveTargetGone

    home = Collection.objects.create(name="home")
    image = _image(home, "a.png", sha256="1" * 64)
    gone = Collection.objects.create(name="gone")
    Collection.objects.filter(pk=gone.pk).delete()
    with pytest.raises(MoveTargetGone, match="'gone' was deleted; nothing was moved"):
        images_move(images=Image.objects.filter(pk=image.pk), to=gone)
    assert Image.objects.get().collection_id == home.pk


def test_a_vector_stored_after_its_image_moved_goes_with_it(encoder):
    """A worker loads its images, then embeds them; a move in between must not leave the vector
    under the collection the image left, where collection filters would find it."""
    before, after = Collection.objects.create(name="before"), Collection.objects.create(name="after")
    loaded = _image(before, "a.png", sha256="1" * 64)  # as the worker read it
    images_move(images=Image.objects.filter(pk=loaded.pk), to=after)
    embeddings_store(encoder=encoder, images=[loaded], vectors=np.ones((1, 256), dtype=np.float32))
    assert Embedding.objects.get().collection_id == after.pk


@pytest.mark.django_db(transaction=True)
def test_a_move_waits_for_a_vector_being_stored_and_takes_it_along(encoder):
    before, after = Collection.objects.create(name="before"), Collection.objects.create(name="after")
    image = _image(before, "a.png", sha256="1" * 64)
    outcome = {}

    def move() -> None:
        try:
            outcome["moved"] = images_move(images=Image.objects.filter(pk=image.pk), to=after).moved
        finally:
            connection.close()

    with transaction.atomic():  # a worker's batch, between storing its vectors and committing
        embeddings_store(encoder=encoder, images=[image], vectors=np.ones((1, 256), dtype=np.float32))
        mover = threading.Thread(target=move)
        mover.start()
        mover.join(timeout=1.0)
        assert mover.is_alive()  # waits for the share lock on the image
    mover.join(timeout=30)
    assert outcome == {"moved": [image.pk]}
    assert Embedding.objects.get().collection_id == after.pk


def _basic(username: str, password: str) -> dict:
    import base64

    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_the_api_moves_and_relabels_an_image_for_staff_only(client, encoder, django_user_model):
    django_user_model.objects.create_user("viewer", password="pw")
    django_user_model.objects.create_user("keeper", password="pw", is_staff=True)
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    image = _image(drafts, "a.png", sha256="1" * 64, encoder=encoder, label="old")
    held = _image(final, "held.png", sha256="2" * 64)
    twin = _image(drafts, "twin.png", sha256="2" * 64)
    url = reverse("api-image-detail", args=[image.pk])
    patch = lambda url, body, **auth: client.patch(url, body, content_type="application/json", **auth)  # noqa: E731

    assert patch(url, {"collection": "final"}).status_code == 401
    assert patch(url, {"collection": "final"}, **_basic("viewer", "pw")).status_code == 403
    answer = patch(url, {"collection": "final", "label": "new"}, **_basic("keeper", "pw"))
    assert answer.status_code == 200
    body = answer.json()
    assert (body["collection"], body["label"], body["status"]) == ({"id": final.pk, "name": "final"}, "new", "indexed")
    assert Embedding.objects.get().collection_id == final.pk
    assert patch(url, {"label": ""}, **_basic("keeper", "pw")).json()["label"] == ""
    assert patch(url, {"collection": str(drafts.pk)}, **_basic("keeper", "pw")).json()["collection"]["id"] == drafts.pk

    refused = patch(reverse("api-image-detail", args=[twin.pk]), {"collection": "final", "label": "x"}, **_basic("keeper", "pw"))
    assert refused.status_code == 409
    assert refused.json()["duplicate_of"] == held.pk and "'final' holds the same file already" in refused.json()["error"]
    twin.refresh_from_db()
    assert (twin.collection_id, twin.label) == (drafts.pk, "")  # nothing changed, the label neither

    for body, field in (({}, "non_field_errors"), ({"collection": "nowhere"}, "collection"), ({"label": "two\nlines"}, "label")):
        bad = patch(url, body, **_basic("keeper", "pw"))
        assert bad.status_code == 400 and field in bad.json()["errors"], body
    assert patch(reverse("api-image-detail", args=[999_999]), {"label": "x"}, **_basic("keeper", "pw")).status_code == 404


def test_the_admin_moves_the_images_picked_after_asking_where(admin_client):
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}") for i in range(3)]
    _image(final, "held.png", sha256=picked[2].sha256)
    url = reverse("admin:gallery_image_changelist")
    chosen = {"action": "move_to_collection", helpers.ACTION_CHECKBOX_NAME: [image.pk for image in picked[1:]]}

    asked = admin_client.post(url, chosen)
    assert asked.status_code == 200 and b"Move 2 images to another collection" in asked.content
    assert Image.objects.filter(collection=final).count() == 1  # nothing moved before the answer
    unanswered = admin_client.post(url, {**chosen, "apply": "Move"})  # no collection picked: asked again
    assert unanswered.status_code == 200 and b"This field is required" in unanswered.content
    assert Image.objects.filter(collection=final).count() == 1

    done = admin_client.post(url, {**chosen, "collection": final.pk, "apply": "Move"}, follow=True)
    said = [str(message) for message in done.context["messages"]]
    assert any(message.startswith("1 image(s) moved to") for message in said), said
    assert any(f"#{picked[2].pk} (as #" in message for message in said), said
    assert dict(Image.objects.values_list("original_name", "collection__name")) == {
        "0.png": "drafts", "1.png": "final", "2.png": "drafts", "held.png": "final",
    }


def test_the_admin_moves_every_image_of_a_filtered_list(admin_client):
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    for i in range(3):
        _image(drafts, f"{i}.png", sha256=f"{i:064x}")
    _image(final, "other.png", sha256="f" * 64)
    url = reverse("admin:gallery_image_changelist") + f"?collection__id__exact={drafts.pk}"
    one_ticked = {"action": "move_to_collection", "select_across": "1", helpers.ACTION_CHECKBOX_NAME: [Image.objects.first().pk]}

    asked = admin_client.post(url, one_ticked)
    assert b"Move 3 images to another collection" in asked.content and b'name="select_across" value="1"' in asked.content
    admin_client.post(url, {**one_ticked, "collection": final.pk, "apply": "Move"})
    assert Image.objects.filter(collection=final).count() == 4 and not Image.objects.filter(collection=drafts).exists()


def test_the_api_moves_many_images_in_one_call_and_says_what_became_of_each(client, encoder, django_user_model):
    django_user_model.objects.create_user("viewer", password="pw")
    django_user_model.objects.create_user("keeper", password="pw", is_staff=True)
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    held = _image(final, "held.png", sha256="1" * 64)
    again = _image(drafts, "again.png", sha256="1" * 64)
    new = [_image(drafts, f"{i}.png", sha256=f"{i + 2:064x}", encoder=encoder, hot=i) for i in range(3)]
    url = reverse("api-images-move")
    asked = {"collection": "final", "images": [new[2].pk, again.pk, new[0].pk, held.pk, 999_999, new[1].pk]}
    post = lambda body, **auth: client.post(url, body, content_type="application/json", **auth)  # noqa: E731

    assert post(asked).status_code == 401
    assert post(asked, **_basic("viewer", "pw")).status_code == 403
    assert Image.objects.filter(collection=final).count() == 1
    answer = post(asked, **_basic("keeper", "pw"))
    assert answer.status_code == 200
    assert answer.json() == {
        "collection": {"id": final.pk, "name": "final"},
        "moved": sorted(image.pk for image in new),
        "duplicates": [{"id": again.pk, "duplicate_of": held.pk}],
        "already": [held.pk],
        "missing": [999_999],
    }
    assert set(Embedding.objects.values_list("collection_id", flat=True)) == {final.pk}
    assert Image.objects.get(pk=again.pk).collection_id == drafts.pk

    for body, field in (
        ({"collection": "final", "images": []}, "images"),
        ({"collection": "final", "images": ["x"]}, "images"),
        ({"collection": "final", "images": [2**63]}, "images"),
        ({"collection": "final", "images": list(range(1, MOVE_RUN_IMAGES_MAX + 2))}, "images"),  # past what the workers take a call
        ({"collection": "nowhere", "images": [new[0].pk]}, "collection"),
        ({"images": [new[0].pk]}, "collection"),
    ):
        bad = post(body, **_basic("keeper", "pw"))
        assert bad.status_code == 400 and field in bad.json()["errors"], str(body)[:80]


def test_the_workers_move_more_images_than_a_request_takes_a_stretch_at_a_time(admin_client, encoder, celery_worker, monkeypatch):
    """The admin's move of more than MOVE_IMAGES_MAX images: recorded, and done by the workers in
    stretches, each committed with the run's counts; a duplicate stays, and the run lists it."""
    for module in ("gallery.admin", "gallery.services"):  # the worker thread runs gallery.services too
        monkeypatch.setattr(f"{module}.MOVE_IMAGES_MAX", 2)
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}", encoder=encoder, hot=i) for i in range(5)]
    held = _image(final, "kept.png", sha256=f"{3:064x}")  # the same file as 3.png
    chosen = {"action": "move_to_collection", helpers.ACTION_CHECKBOX_NAME: [image.pk for image in picked]}
    url = reverse("admin:gallery_image_changelist")

    asked = admin_client.post(url, chosen).content.decode()
    done = admin_client.post(url, {**chosen, "collection": final.pk, "apply": "Move"}, follow=True)
    run = MoveRun.objects.get()
    wait_for(lambda: MoveRun.objects.get().status == "done", message="the workers to end the move")
    run.refresh_from_db()

    assert "more than one request moves (2 at a time" in asked
    said = [str(message) for message in done.context["messages"]]
    assert said[0].startswith('The workers are moving 5 images to <a href="') and "2 at a time" in said[0]
    assert (run.position, run.moved, run.already, run.missing, run.tries, run.error) == (5, 4, 0, 0, 0, "")
    assert run.duplicates == [[picked[3].pk, held.pk]]
    assert sorted(Image.objects.filter(collection=final).values_list("pk", flat=True)) == sorted(
        [held.pk] + [image.pk for image in picked if image is not picked[3]]
    )
    assert Embedding.objects.filter(collection=final).count() == 4 and Embedding.objects.filter(collection=drafts).count() == 1
    page = admin_client.get(reverse("admin:gallery_moverun_change", args=[run.pk])).content.decode()
    assert "5 of 5 checked" in page and f"#{picked[3].pk} (as #{held.pk})" in page


def test_a_move_that_cannot_be_queued_is_not_recorded(admin_client, monkeypatch):
    from workers.tasks import move_images

    monkeypatch.setattr("gallery.admin.MOVE_IMAGES_MAX", 1)

    def unreachable(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(move_images, "apply_async", unreachable)
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}") for i in range(2)]
    chosen = {"action": "move_to_collection", helpers.ACTION_CHECKBOX_NAME: [image.pk for image in picked], "collection": final.pk}

    done = admin_client.post(reverse("admin:gallery_image_changelist"), {**chosen, "apply": "Move"}, follow=True)

    assert [str(message) for message in done.context["messages"]] == [
        "the workers' queue cannot be reached (connection refused); nothing was moved"
    ]
    assert not MoveRun.objects.exists() and not Image.objects.filter(collection=final).exists()


def test_a_stretch_that_keeps_failing_is_recorded_and_ends_the_move_as_failed(monkeypatch):
    from workers.tasks import move_images

    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}") for i in range(2)]
    run = MoveRun.objects.create(to=final, image_ids=[image.pk for image in picked], total=len(picked))
    monkeypatch.setattr("gallery.services.images_move", lambda **kwargs: 1 / 0)

    for _ in range(MOVE_RUN_TRIES_MAX):
        with pytest.raises(ZeroDivisionError):
            move_images.run(run.pk, 0)
    run.refresh_from_db()
    assert (run.status, run.tries, run.error) == ("running", MOVE_RUN_TRIES_MAX, "ZeroDivisionError: division by zero")
    move_images.run(run.pk, 0)  # one start more than the tries
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith(f"stopped: the images from #1 of the move were started {MOVE_RUN_TRIES_MAX} times")
    assert not Image.objects.filter(collection=final).exists()


def test_the_sweep_takes_up_a_move_whose_next_stretch_was_lost(encoder, celery_worker):
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}", encoder=encoder, hot=i) for i in range(3)]
    quiet = MoveRun.objects.create(
        to=final, image_ids=[image.pk for image in picked[:2]], total=2, progress_at=timezone.now() - timedelta(minutes=10)
    )
    recent = MoveRun.objects.create(to=final, image_ids=[picked[2].pk], total=1, progress_at=timezone.now())  # its message on its way

    assert move_runs_resume(older_than=timedelta(minutes=5)) == 1
    wait_for(lambda: MoveRun.objects.get(pk=quiet.pk).status == "done", message="the worker to end the resumed move")

    assert sorted(Image.objects.filter(collection=final).values_list("pk", flat=True)) == [picked[0].pk, picked[1].pk]
    recent.refresh_from_db()
    assert recent.status == "running" and recent.position == 0  # not quiet: left alone


def test_the_sweep_skips_a_run_whose_stretch_is_under_way_instead_of_waiting_for_it(encoder, celery_worker):
    """A stretch that outlasts the sweep's age holds its run's row: the sweep leaves that run
    alone at once (a worker is on it) and takes up the other quiet one."""
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}", encoder=encoder, hot=i) for i in range(2)]
    long_ago = timezone.now() - timedelta(minutes=10)
    busy = MoveRun.objects.create(to=final, image_ids=[picked[0].pk], total=1, progress_at=long_ago)
    lost = MoveRun.objects.create(to=final, image_ids=[picked[1].pk], total=1, progress_at=long_ago)
    release = row_locked_elsewhere(MoveRun, busy.pk)
    try:
        resumed = []
        sweep = in_own_thread(lambda: move_runs_resume(older_than=timedelta(minutes=5)), resumed)
        sweep.join(timeout=30)
        assert not sweep.is_alive() and resumed == [1]  # it did not wait for the row
        assert MoveRun.objects.get(pk=busy.pk).progress_at == long_ago
    finally:
        release()
    wait_for(lambda: MoveRun.objects.get(pk=lost.pk).status == "done", message="the worker to end the resumed move")
    assert list(Image.objects.filter(collection=final).values_list("pk", flat=True)) == [picked[1].pk]
    assert MoveRun.objects.get(pk=busy.pk).status == "running"


def test_the_api_hands_a_move_of_more_than_a_request_takes_to_the_workers(client, admin_client, encoder, celery_worker, monkeypatch):
    monkeypatch.setattr("gallery.services.MOVE_IMAGES_MAX", 2)
    monkeypatch.setattr("gallery.apis.MOVE_IMAGES_MAX", 2)
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}", encoder=encoder, hot=i) for i in range(5)]
    held = _image(final, "kept.png", sha256=f"{3:064x}")  # the same file as 3.png
    unknown = max(image.pk for image in picked) + 100
    asked = [image.pk for image in picked] + [unknown, picked[0].pk]  # an id twice counts once

    started = admin_client.post(reverse("api-images-move"), {"collection": "final", "images": asked}, content_type="application/json")
    wait_for(lambda: MoveRun.objects.get().status == "done", message="the workers to end the move")
    followed = admin_client.get(started["Location"])

    assert started.status_code == 202, started.content
    assert started.json()["status"] == "running" and started.json()["total"] == 6
    assert started["Location"] == reverse("api-move-run", args=[started.json()["id"]])
    body = followed.json()
    assert (body["status"], body["position"], body["moved"], body["already"], body["missing"]) == ("done", 6, 4, 0, 1)
    assert body["duplicates"] == [{"id": picked[3].pk, "duplicate_of": held.pk}]
    assert body["collection"] == {"id": final.pk, "name": "final"} and body["finished_at"]
    assert Image.objects.filter(collection=final).count() == 5
    assert admin_client.get(reverse("api-move-run", args=[body["id"] + 1])).status_code == 404
    assert client.get(started["Location"]).status_code in (401, 403)


def _run_of(count: int, *, encoder: EncoderVersion) -> tuple[MoveRun, list[Image], Collection]:
    """A move run of ``count`` images of "drafts" into "final", its first stretch not yet done."""
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}", encoder=encoder, hot=i) for i in range(count)]
    return MoveRun.objects.create(to=final, image_ids=[image.pk for image in picked], total=count), picked, final


def test_a_stopped_move_goes_no_further_and_keeps_what_it_moved(admin_client, client, encoder, monkeypatch):
    monkeypatch.setattr("gallery.services.MOVE_IMAGES_MAX", 2)
    run, picked, final = _run_of(5, encoder=encoder)
    assert move_run_advance(run_id=run.pk, position=0) == 2
    url = reverse("api-move-run", args=[run.pk])
    assert client.delete(url).status_code in (401, 403)
    assert admin_client.delete(reverse("api-move-run", args=[run.pk + 1])).status_code == 404

    response = admin_client.delete(url)
    stopped = response.json()
    assert response.status_code == 200, response.content
    assert (stopped["id"], stopped["status"], stopped["position"], stopped["moved"], stopped["error"]) == (run.pk, "stopped", 2, 2, "")
    assert stopped["finished_at"]
    from workers.tasks import move_images

    move_images.run(run.pk, 2)  # its next message, late: nothing moves, nothing is queued
    assert move_run_advance(run_id=run.pk, position=2) is None
    run.refresh_from_db()
    assert (run.status, run.position, run.moved) == ("stopped", 2, 2)
    assert sorted(Image.objects.filter(collection=final).values_list("pk", flat=True)) == [picked[0].pk, picked[1].pk]
    assert Embedding.objects.filter(collection=final).count() == 2
    again = admin_client.delete(url)  # not running now
    assert again.status_code == 409 and again.json()["error"] == "this move is not running: it was stopped"
    assert again.json()["move"]["id"] == run.pk and again.json()["move"]["status"] == "stopped"
    assert move_runs_resume(older_than=timedelta(0)) == 0  # the sweep leaves it stopped


def test_a_move_that_ended_is_not_stopped(admin_client, encoder):
    run, _, _ = _run_of(2, encoder=encoder)
    assert move_run_advance(run_id=run.pk, position=0) is None  # one stretch: done
    response = admin_client.delete(reverse("api-move-run", args=[run.pk]))
    assert response.status_code == 409 and response.json()["error"] == "this move is not running: it is done"
    assert move_run_stop(run_id=run.pk) is None and MoveRun.objects.get().status == "done"


@pytest.mark.django_db(transaction=True)
def test_stopping_waits_for_the_stretch_under_way_which_moves_its_images(encoder, monkeypatch):
    monkeypatch.setattr("gallery.services.MOVE_IMAGES_MAX", 2)
    run, picked, final = _run_of(5, encoder=encoder)
    inside, go = paused_after(monkeypatch, "gallery.services.images_move")

    advanced, stopped = [], []
    stretch = in_own_thread(lambda: move_run_advance(run_id=run.pk, position=0), advanced)
    assert inside.wait(timeout=60)
    stopping = in_own_thread(lambda: move_run_stop(run_id=run.pk), stopped)
    stopping.join(timeout=1)
    assert stopping.is_alive()  # waits for the stretch's row lock
    go.set()
    stretch.join(timeout=60)
    stopping.join(timeout=60)
    assert advanced == [2] and stopped[0].pk == run.pk and stopped[0].status == "stopped"
    run.refresh_from_db()
    assert (run.status, run.position, run.moved) == ("stopped", 2, 2)  # the stretch's move and position, then the stop
    assert Image.objects.filter(collection=final).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_stop_that_the_stretch_under_way_outlasts_says_so_and_changes_nothing(admin_client, encoder, monkeypatch, settings):
    """The stop waits CBIR_STOP_WAIT_S for the stretch's row, then refuses with the reason: the API
    with a 503 and Retry-After, the admin with a warning. The run goes on; once the stretch is
    done, a stop works."""
    settings.CBIR_STOP_WAIT_S = 1
    monkeypatch.setattr("gallery.services.MOVE_IMAGES_MAX", 2)
    run, picked, final = _run_of(5, encoder=encoder)
    inside, go = paused_after(monkeypatch, "gallery.services.images_move")
    advanced = []
    stretch = in_own_thread(lambda: move_run_advance(run_id=run.pk, position=0), advanced)
    try:
        assert inside.wait(timeout=60)
        with pytest.raises(StretchUnderway, match="has not finished after 1 s, and a stop waits for it; nothing was stopped"):
            move_run_stop(run_id=run.pk)
        response = admin_client.delete(reverse("api-move-run", args=[run.pk]))
        assert response.status_code == 503 and response["Retry-After"] == "10"
        assert "nothing was stopped: try again in a moment" in response.json()["error"]
        page = admin_client.post(
            reverse("admin:gallery_moverun_changelist"), {"action": "stop", helpers.ACTION_CHECKBOX_NAME: [run.pk]}, follow=True
        ).content.decode()
        assert f"Move #{run.pk}</a>: the stretch of images a worker is on has not finished after 1 s" in page
        assert MoveRun.objects.get(pk=run.pk).status == "running"
    finally:
        go.set()
        stretch.join(timeout=60)
    assert advanced == [2]
    assert move_run_stop(run_id=run.pk).status == "stopped"
    run.refresh_from_db()
    assert (run.status, run.position, run.moved) == ("stopped", 2, 2)
    assert Image.objects.filter(collection=final).count() == 2


def test_the_admin_stops_the_running_moves_ticked_and_lists_counts_without_the_lists(admin_client, client, django_user_model, encoder):
    running, picked, final = _run_of(3, encoder=encoder)
    ended = MoveRun.objects.create(to=final, image_ids=[picked[0].pk], total=1, status="done", duplicates=[[1, 2], [3, 4]])
    changelist = reverse("admin:gallery_moverun_changelist")

    listed = admin_client.get(changelist).content.decode()
    page = admin_client.post(changelist, {"action": "stop", "_selected_action": [running.pk, ended.pk]}, follow=True).content.decode()

    assert '<td class="field-duplicate_count">2</td>' in listed and '<td class="field-duplicate_count">0</td>' in listed
    assert f"Move #{running.pk}</a> is stopped, after 0 of 3 images checked (0 moved); the others stay where they are." in page
    assert MoveRun.objects.get(pk=running.pk).status == "stopped" and MoveRun.objects.get(pk=ended.pk).status == "done"
    assert not Image.objects.filter(collection=final).exists()
    again = admin_client.post(changelist, {"action": "stop", "_selected_action": [running.pk, ended.pk]}, follow=True)
    assert [str(message) for message in again.context["messages"]] == ["None of the moves ticked is running: each had ended already."]
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x-long-password-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_moverun"))
    client.force_login(viewer)
    assert 'value="stop"' in admin_client.get(changelist).content.decode()
    shown = client.get(changelist)
    assert shown.status_code == 200 and 'value="stop"' not in shown.content.decode()


def test_the_api_moves_a_collections_images_as_a_filter_leaves_them(admin_client, encoder, celery_worker, monkeypatch):
    """``from_collection`` with ``label`` and ``status``: the images they leave, as the admin's
    "select all" under a filter, moved in the request up to MOVE_IMAGES_MAX, by the workers past it."""
    monkeypatch.setattr("gallery.apis.MOVE_IMAGES_MAX", 2)
    monkeypatch.setattr("gallery.services.MOVE_IMAGES_MAX", 2)
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    cats = [_image(drafts, f"cat{i}.png", sha256=f"{i:064x}", encoder=encoder, hot=i, label="cat") for i in range(2)]
    pending_cat = _image(drafts, "cat9.png", sha256=f"{9:064x}", label="cat")  # no encoder: pending
    dogs = [_image(drafts, f"dog{i}.png", sha256=f"{i + 20:064x}", encoder=encoder, hot=i + 20, label="dog") for i in range(3)]
    url = reverse("api-images-move")

    by_label = admin_client.post(url, {"collection": "final", "from_collection": "drafts", "label": "cat", "status": "indexed"},
                                 content_type="application/json")
    by_workers = admin_client.post(url, {"collection": "final", "from_collection": drafts.pk, "label": "dog"}, content_type="application/json")
    wait_for(lambda: MoveRun.objects.get().status == "done", message="the workers to end the move")

    assert by_label.status_code == 200, by_label.content
    assert sorted(by_label.json()["moved"]) == sorted(image.pk for image in cats)
    assert by_workers.status_code == 202 and by_workers.json()["total"] == 3
    assert sorted(Image.objects.filter(collection=final).values_list("pk", flat=True)) == sorted(image.pk for image in cats + dogs)
    assert list(Image.objects.filter(collection=drafts).values_list("pk", flat=True)) == [pending_cat.pk]
    assert Embedding.objects.filter(collection=final).count() == 5


def test_the_api_refuses_a_move_given_both_ways_or_neither(admin_client):
    Collection.objects.create(name="drafts")
    url = reverse("api-images-move")

    def refused(body: dict) -> dict:
        response = admin_client.post(url, {"collection": "drafts", **body}, content_type="application/json")
        assert response.status_code == 400, response.content
        return response.json()["errors"]

    assert "images" in refused({})
    assert "images" in refused({"images": [1], "from_collection": "drafts"})
    assert "label" in refused({"images": [1], "label": "cat"})
    assert "status" in refused({"from_collection": "drafts", "status": "lost"})
    assert "from_collection" in refused({"from_collection": "nowhere"})


def test_the_api_lists_the_moves_newest_first_with_how_many_stayed(client, admin_client, encoder, django_user_model):
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}") for i in range(2)]
    ended = MoveRun.objects.create(to=final, image_ids=[picked[0].pk], total=1, status="done", duplicates=[[1, 2], [3, 4]])
    running = [MoveRun.objects.create(to=drafts, image_ids=[image.pk], total=1) for image in picked]
    url = reverse("api-move-run-list")

    every = admin_client.get(url).json()
    first = admin_client.get(url, {"status": "running", "limit": 1}).json()
    second = admin_client.get(first["next"]).json()
    done = admin_client.get(url, {"status": "done"}).json()["results"]

    assert [run["id"] for run in every["results"]] == [running[1].pk, running[0].pk, ended.pk] and every["next"] is None
    assert [run["id"] for run in first["results"]] == [running[1].pk] and f"before={running[1].pk}" in first["next"]
    assert [run["id"] for run in second["results"]] == [running[0].pk]
    assert admin_client.get(second["next"]).json() == {"next": None, "results": []}  # a full page links on, to an empty one
    assert [(run["id"], run["duplicates"], run["status"], run["collection"]["name"]) for run in done] == [(ended.pk, 2, "done", "final")]
    assert admin_client.get(url, {"status": "lost"}).status_code == 400
    assert admin_client.get(url, {"limit": 101}).status_code == 400
    assert client.get(url).status_code in (401, 403)


def test_a_collections_page_and_its_api_say_while_the_workers_move_images_into_it(client, admin_client, encoder):
    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final & more")
    picked = [_image(drafts, f"{i}.png", sha256=f"{i:064x}") for i in range(3)]
    running = MoveRun.objects.create(to=final, image_ids=[image.pk for image in picked], total=3, position=2, moved=1)
    MoveRun.objects.create(to=final, image_ids=[picked[0].pk], total=1, status="done", position=1, moved=1)  # ended: not counted
    page = reverse("gallery:collection-detail", args=[final.pk])

    anonymous = client.get(page).content.decode()
    api = client.get(reverse("api-collection-detail", args=[final.pk])).json()["moves_incoming"]
    as_staff = admin_client.get(page).content.decode()
    listed = admin_client.get(reverse("admin:gallery_moverun_changelist"), {"status__exact": "running", "q": "final & more"})
    running.status = "stopped"
    running.save()
    after = client.get(page).content.decode()

    assert "The workers are moving <span data-moves>3 images here: 2 checked and 1 moved so far</span>; the page shows them" in anonymous
    assert api == {"runs": 1, "total": 3, "position": 2, "moved": 1}
    assert "gallery/moverun/?status__exact=running&amp;q=final%20%26%20more" in as_staff and "moverun" not in anonymous
    assert listed.status_code == 200 and [run.pk for run in listed.context["cl"].result_list] == [running.pk]
    assert client.get(reverse("api-collection-detail", args=[final.pk])).json()["moves_incoming"] is None
    assert 'id="moves-incoming"' not in after and 'id="moves-incoming"' not in client.get(reverse("gallery:collection-detail", args=[drafts.pk])).content.decode()

"""A collection's pictures that are there more than once, found a page at a time: the selector,
the page (with the deletion of ticked copies) and the API; and every copy in a collection removed
in one go, keeping one picture of each: the plan, the service, the command, the workers' task from
the page and from the API."""
import io
from datetime import timedelta

import numpy as np

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from PIL import Image as PILImage

from gallery import imaging
from gallery.models import CopyRemovalRun, Image
from gallery.selectors import collection_copy_removal_latest, collection_list_copy_groups, collection_plan_copy_removal
from gallery.services import (
    COPY_REMOVAL_TRIES_MAX,
    CopyRemovalStep,
    CopyRemovalUnderway,
    IncomingFile,
    collection_get_or_create,
    collection_remove_copies,
    copy_removal_advance,
    copy_removal_record,
    copy_removal_stop,
    copy_removals_resume,
    images_create,
)
from tests.conftest import wait_for
from tests.utils import image_bytes, in_own_thread, make_encoder, paused_after
from workers.services import images_index

pytestmark = pytest.mark.django_db


def _resaved(data: bytes, *, size: tuple[int, int], fmt: str) -> bytes:
    picture = PILImage.open(io.BytesIO(data)).convert("RGB").resize(size, PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, quality=75)
    return buffer.getvalue()


@pytest.fixture
def library():
    """photos: seven (and its smaller JPEG), eight, nine (and a larger WebP of it), ten; archive:
    eight's file again. All indexed, created in that order. Returns the rows by name."""
    make_encoder()
    photos, archive = collection_get_or_create(name="photos"), collection_get_or_create(name="archive")
    seven, eight, nine = (image_bytes(pattern=n, size=(400, 300)) for n in (7, 8, 9))
    files = [
        ("seven.png", seven), ("seven-small.jpg", _resaved(seven, size=(200, 150), fmt="JPEG")), ("eight.png", eight),
        ("nine.png", nine), ("nine-large.webp", _resaved(nine, size=(800, 600), fmt="WEBP")),
        ("ten.png", image_bytes(pattern=10, size=(400, 300))),
    ]
    for name, data in files:  # one at a time: ids in this order
        images_create(collection=photos, files=[IncomingFile(name=name, data=data)])
    images_create(collection=archive, files=[IncomingFile(name="eight-again.png", data=eight)])
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    assert not Image.objects.exclude(status=Image.Status.INDEXED).exists()
    return {image.original_name: image for image in Image.objects.select_related("collection")}


def _names(found) -> list[tuple[str, list[str]]]:
    return [(group.image.original_name, [copy.image.original_name for copy in group.copies]) for group in found.groups]


def test_each_picture_with_copies_is_listed_once_under_its_first_image(library):
    photos = library["seven.png"].collection
    found = collection_list_copy_groups(collection=photos)
    assert _names(found) == [("seven.png", ["seven-small.jpg"]), ("nine.png", ["nine-large.webp"])]
    assert found.done and found.checked == 6 and found.checked_to == library["ten.png"].pk
    assert not found.groups[0].copies[0].identical
    # everywhere: eight's file in the archive makes it a group too, the same bytes
    everywhere = collection_list_copy_groups(collection=photos, everywhere=True)
    assert _names(everywhere) == [("seven.png", ["seven-small.jpg"]), ("eight.png", ["eight-again.png"]), ("nine.png", ["nine-large.webp"])]
    assert everywhere.groups[1].copies[0].identical
    archive = library["eight-again.png"].collection
    assert _names(collection_list_copy_groups(collection=archive)) == []
    assert _names(collection_list_copy_groups(collection=archive, everywhere=True)) == [("eight-again.png", ["eight.png"])]


def test_pages_go_on_after_the_last_image_checked(library):
    photos = library["seven.png"].collection
    first = collection_list_copy_groups(collection=photos, groups=1)
    assert _names(first) == [("seven.png", ["seven-small.jpg"])]
    assert (first.checked, first.checked_to, first.done) == (1, library["seven.png"].pk, False)
    second = collection_list_copy_groups(collection=photos, groups=1, after=first.checked_to)
    assert _names(second) == [("nine.png", ["nine-large.webp"])]  # seven-small.jpg is in seven's group
    assert second.checked == 3 and not second.done
    third = collection_list_copy_groups(collection=photos, groups=1, after=second.checked_to)
    assert _names(third) == [] and third.done and third.checked == 2
    # a page that runs out of checks stops there, with no group yet
    short = collection_list_copy_groups(collection=photos, after=first.checked_to, checks=2)
    assert _names(short) == [] and short.checked == 2 and short.checked_to == library["eight.png"].pk and not short.done


def test_the_page_lists_the_groups_and_pages_on(client, library):
    photos = library["seven.png"].collection
    collection_page = client.get(reverse("gallery:collection-detail", args=[photos.pk])).content.decode()
    url = reverse("gallery:collection-copies", args=[photos.pk])
    assert url in collection_page
    page = client.get(url).content.decode()
    for name in ("seven.png", "seven-small.jpg", "nine.png", "nine-large.webp"):
        assert reverse("gallery:image-detail", args=[library[name].pk]) in page
    assert reverse("gallery:image-detail", args=[library["eight.png"].pk]) not in page
    assert "Images 1–6 checked, the last of them" in page and 'rel="next"' not in page
    assert 'type="checkbox"' not in page  # only for a user who may delete images
    everywhere = client.get(url, {"scope": "all"}).content.decode()
    assert reverse("gallery:image-detail", args=[library["eight-again.png"].pk]) in everywhere and "the same file" in everywhere
    later = client.get(url, {"after": library["seven.png"].pk, "seen": 1}).content.decode()
    assert "Images 2–6 checked" in later and reverse("gallery:image-detail", args=[library["seven.png"].pk]) not in later
    assert client.get(url, {"after": "x", "seen": "-4"}).status_code == 200


def test_a_user_who_may_delete_drops_ticked_copies_and_every_group_keeps_one(admin_client, library):
    photos = library["seven.png"].collection
    url = reverse("gallery:collection-copies", args=[photos.pk])
    page = admin_client.get(url).content.decode()
    assert 'type="checkbox"' in page and "Delete the ticked copies" in page
    seven, small, nine, large = (library[name].pk for name in ("seven.png", "seven-small.jpg", "nine.png", "nine-large.webp"))
    response = admin_client.post(url, {"group": [f"{seven},{small}", f"{nine},{large}"], "delete": [small, nine, large]}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain[0][0] == url and response.status_code == 200
    assert "Deleted 1 copy" in page and "1 group was left as it was" in page
    assert not Image.objects.filter(pk=small).exists() and Image.objects.filter(pk__in=[seven, nine, large]).count() == 3


def test_only_copies_of_a_kept_picture_are_deleted_whatever_the_form_says(admin_client, library):
    photos = library["seven.png"].collection
    seven, eight, ten = (library[name].pk for name in ("seven.png", "eight.png", "ten.png"))
    response = admin_client.post(reverse("gallery:collection-copies", args=[photos.pk]), {"group": f"{seven},{eight},{ten}", "delete": [eight, ten]}, follow=True)
    assert "Nothing was deleted" in response.content.decode()
    assert Image.objects.filter(pk__in=[seven, eight, ten]).count() == 3


def test_deleting_needs_the_permission(client, django_user_model, library):
    photos = library["seven.png"].collection
    seven, small = library["seven.png"].pk, library["seven-small.jpg"].pk
    url = reverse("gallery:collection-copies", args=[photos.pk])
    assert client.post(url, {"group": f"{seven},{small}", "delete": small}).status_code == 403
    client.force_login(django_user_model.objects.create_user("viewer", password="x-long-password-1"))
    assert client.post(url, {"group": f"{seven},{small}", "delete": small}).status_code == 403
    assert Image.objects.filter(pk=small).exists()


def test_the_api_pages_through_the_groups(client, library):
    photos = library["seven.png"].collection
    url = reverse("api-collection-copies", args=[photos.pk])
    body = client.get(url, {"scope": "all"}).json()
    assert body["checked"] == 6 and body["next"] is None
    assert [(group["image"]["original_name"], [copy["original_name"] for copy in group["copies"]]) for group in body["results"]] == [
        ("seven.png", ["seven-small.jpg"]), ("eight.png", ["eight-again.png"]), ("nine.png", ["nine-large.webp"]),
    ]
    copy = body["results"][1]["copies"][0]
    assert copy["identical"] and copy["collection"]["name"] == "archive" and copy["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert body["results"][2]["copies"][0]["width"] == 800
    assert client.get(url, {"after": library["ten.png"].pk}).json() == {"checked": 0, "next": None, "results": []}
    for bad in ({"scope": "everything"}, {"after": "-1"}, {"after": "x"}):
        response = client.get(url, bad)
        assert response.status_code == 400 and set(bad) <= set(response.json()["errors"])
    assert client.get(reverse("api-collection-copies", args=[999_999])).status_code == 404


def test_the_apis_next_links_walk_every_group_once(client, library, monkeypatch):
    monkeypatch.setattr("gallery.apis.COPY_GROUPS_PER_PAGE", 1)
    url, seen = reverse("api-collection-copies", args=[library["seven.png"].collection_id]) + "?scope=all", []
    while url:
        body = client.get(url).json()
        seen += [group["image"]["original_name"] for group in body["results"]]
        url = body["next"]
        assert url is None or "scope=all" in url
    assert seen == ["seven.png", "eight.png", "nine.png"]


def _signature_at(turn: float) -> list[float]:
    """A signature ``turn`` steps along a circle where one step is 0.99 alike (two steps: 0.96)."""
    angle = np.arccos(0.99)
    signature = np.zeros(384)
    signature[:2] = np.cos(turn * angle), np.sin(turn * angle)
    return signature.tolist()


def _chain(*, sizes=(100, 100, 100)) -> dict[str, Image]:
    """q ~ p and p ~ c at 0.99, but q and c only 0.96 alike: no copies of each other (with a
    fourth size, d ~ c too). Square pictures of these sides, in that order, with thumbnails of one
    picture (alike in every region: the signatures alone decide)."""
    from gallery.models import Collection

    chain = Collection.objects.create(name="chain")
    thumbnail = imaging.thumbnail_webp(PILImage.open(io.BytesIO(image_bytes(pattern=3, size=(100, 100)))), size=256)
    return {
        name: Image.objects.create(
            collection=chain, original_name=name, sha256=name, status="indexed", signature=_signature_at(turn), width=side, height=side,
            thumbnail=default_storage.save(f"thumbnails/chain/{name}.webp", ContentFile(thumbnail)),
        )
        for (name, turn), side in zip((("q", 0), ("p", 1), ("c", 2), ("d", 3)), sizes)
    }


def test_a_chain_of_copies_lists_every_pair_together():
    # q's group cannot show c, so p is listed too, with both; with a third copy of q that p
    # shares, p would add nothing.
    rows = _chain()
    chain = rows["q"].collection
    assert _names(collection_list_copy_groups(collection=chain)) == [("q", ["p"]), ("p", ["q", "c"])]
    Image.objects.filter(pk=rows["c"].pk).update(signature=_signature_at(0.5))  # now a copy of both: q's group has it
    assert _names(collection_list_copy_groups(collection=chain)) == [("q", ["c", "p"])]


def _plan(collection, **options) -> dict[str, str]:
    rows = Image.objects.in_bulk()
    plan = collection_plan_copy_removal(collection=collection, **options)
    return {rows[image_id].original_name: rows[copy_of].original_name for image_id, copy_of in plan.doomed.items()}


def test_removal_keeps_the_largest_or_the_first_imported_picture_of_each(library):
    photos = library["seven.png"].collection
    assert _plan(photos) == {"seven-small.jpg": "seven.png", "nine.png": "nine-large.webp"}
    assert _plan(photos, keep="oldest") == {"seven-small.jpg": "seven.png", "nine-large.webp": "nine.png"}
    # eight's file is in the archive too: another collection's copy is no reason to remove it
    assert _plan(library["eight-again.png"].collection) == {}
    with pytest.raises(ValueError, match="keep takes one of largest, oldest"):
        collection_plan_copy_removal(collection=photos, keep="newest")
    removal = collection_remove_copies(collection=photos, dry_run=True)
    assert removal.deleted == 0 and removal.plan.done and removal.plan.checked == 6
    assert Image.objects.count() == 7


def test_removing_copies_deletes_them_with_their_vectors_and_files_once(library, django_capture_on_commit_callbacks):
    from search.models import Embedding

    photos = library["seven.png"].collection
    doomed = [library["seven-small.jpg"], library["nine.png"]]
    files = [name for image in doomed for name in (image.file.name, image.thumbnail.name)]
    assert all(default_storage.exists(name) for name in files)
    with django_capture_on_commit_callbacks(execute=True):
        removal = collection_remove_copies(collection=photos)
    assert removal.deleted == 2
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["eight-again.png", "eight.png", "nine-large.webp", "seven.png", "ten.png"]
    assert not Embedding.objects.filter(image_id__in=[image.pk for image in doomed]).exists()
    assert not any(default_storage.exists(name) for name in files)
    again = collection_remove_copies(collection=photos)
    assert again.deleted == 0 and again.plan.doomed == {}


def _remove_all(collection, **options) -> list[tuple[int, int, int]]:
    """Every stretch of ``collection_remove_copies``, as the workers' task follows them: (round,
    images checked, images deleted) of each."""
    stretches, step = [], CopyRemovalStep()
    while step is not None:
        removal = collection_remove_copies(collection=collection, step=step, **options)
        stretches.append((step.round, removal.plan.checked, removal.deleted))
        step = removal.next
    return stretches


def test_removal_goes_in_stretches_and_rounds_until_a_round_removes_nothing(library):
    photos = library["seven.png"].collection
    # six images, two a stretch: the first round deletes seven-small.jpg, then nine.png; the
    # second checks what the first left with a copy of a higher rank, none here, which ends it
    assert _remove_all(photos, checks=2) == [(1, 2, 1), (1, 2, 1), (1, 2, 0), (1, 0, 0), (2, 0, 0)]
    assert sorted(Image.objects.filter(collection=photos).values_list("original_name", flat=True)) == ["eight.png", "nine-large.webp", "seven.png", "ten.png"]
    assert _remove_all(photos, dry_run=True) == [(1, 4, 0)]  # nothing to delete: one round


@pytest.mark.parametrize(("keep", "sizes", "removed"), [
    ("largest", (100, 200, 300), {"p": "c"}),  # c stays; q's larger copy p is no keeper, so q stays too
    ("largest", (300, 200, 100), {"p": "q"}),
    ("oldest", (100, 200, 300), {"p": "q"}),
    ("largest", (200, 300, 200), {"q": "p", "c": "p"}),  # p is the copy of both that stays
])
def test_no_picture_of_a_chain_of_copies_is_lost(keep, sizes, removed):
    rows = _chain(sizes=sizes)
    chain = rows["q"].collection
    assert _plan(chain, keep=keep) == removed
    assert [deleted for _, _, deleted in _remove_all(chain, keep=keep)] == [len(removed), 0]  # the second round finds nothing more
    left = set(Image.objects.filter(collection=chain).values_list("original_name", flat=True))
    assert left == {"q", "p", "c"} - set(removed)
    assert all(copy_of in left for copy_of in removed.values())  # every picture removed has a copy left


def test_a_later_round_removes_the_copies_of_a_picture_that_became_the_one_kept(monkeypatch):
    # q < p < c < d in size, each a copy of the next: c goes as d's copy (d stays); p had a larger
    # copy, c, so it was no keeper then; with c gone it is, and q goes as its copy. One stretch
    # settles that by itself; stretches of one image each need a second round for it. A later
    # round checks only what the round before left with a higher copy: p (d has none).
    rows = _chain(sizes=(100, 200, 300, 400))
    chain = rows["q"].collection
    assert _remove_all(chain, dry_run=True) == [(1, 4, 0), (2, 1, 0)] and _plan(chain) == {"c": "d", "q": "p"}
    # a dry run in stretches of one image goes through the rounds the removal will, as if it deleted
    stretches, step, named = [], CopyRemovalStep(), set()
    while step is not None:
        removal = collection_remove_copies(collection=chain, step=step, checks=1, dry_run=True)
        stretches.append((step.round, removal.plan.checked, len(removal.plan.doomed)))
        named |= removal.plan.doomed.keys()
        step = removal.next
    assert Image.objects.filter(collection=chain).count() == 4 and named == {rows["c"].pk, rows["q"].pk}
    monkeypatch.setattr("gallery.services.COPY_REMOVAL_CHECKS", 1)  # the workers' recorded removal, as the dry run went
    run, recorded = copy_removal_record(collection=chain), []
    while run.status == "running":
        removal = copy_removal_advance(run_id=run.pk, round_number=run.round, after=run.after)
        recorded.append((run.round, removal.plan.checked, removal.deleted))
        if run.round == 1 and removal.next.round == 2:
            assert set(run.candidates.values_list("image_id", flat=True)) == {rows["q"].pk, rows["p"].pk}
        run.refresh_from_db()
    assert not run.candidates.exists()  # gone once it ended
    assert recorded == stretches == [
        (1, 1, 0), (1, 1, 0), (1, 1, 1), (1, 1, 0), (1, 0, 0), (2, 1, 1), (2, 1, 0), (2, 0, 0), (3, 0, 0),
    ]  # round 2 checks q and p, which round 1 left with a higher copy; round 3 what round 2 left: none
    assert set(Image.objects.filter(collection=chain).values_list("original_name", flat=True)) == {"p", "d"}  # 0.96 alike: no copies


def test_the_command_lists_what_it_would_remove_then_removes_it(library, capsys):
    with pytest.raises(CommandError, match="no collection is named 'nowhere'"):
        call_command("remove_copies", "--collection", "nowhere")
    with pytest.raises(CommandError, match="invalid choice: 'newest'"):
        call_command("remove_copies", "--collection", "photos", "--keep", "newest")
    call_command("remove_copies", "--collection", "photos", "--dry-run")
    out = capsys.readouterr().out
    small, seven = library["seven-small.jpg"], library["seven.png"]
    assert f"seven-small.jpg (#{small.pk}, 200x150) is a copy of seven.png (#{seven.pk}, 400x300)" in out
    assert "photos: 2 copies would be deleted in 2 rounds, keeping the largest picture of each." in out
    assert Image.objects.count() == 7
    Image.objects.filter(pk=library["ten.png"].pk).update(signature=None)
    call_command("remove_copies", "--collection", "photos", "--keep", "oldest")
    out = capsys.readouterr().out
    assert "photos: deleted 2 copies in 2 rounds, keeping the oldest picture of each." in out
    assert "1 images were not checked: they have no copy signature yet" in out
    assert not Image.objects.filter(original_name__in=["seven-small.jpg", "nine-large.webp"]).exists()


def test_a_user_who_may_delete_has_the_workers_remove_every_copy(admin_client, client, django_user_model, library, celery_worker):
    photos = library["seven.png"].collection
    url = reverse("gallery:collection-copies", args=[photos.pk])
    assert "Remove every copy in this collection" not in client.get(url).content.decode()
    assert 'name="remove"' not in admin_client.get(url, {"scope": "all"}).content.decode()
    assert client.post(url, {"remove": "all"}).status_code == 403
    page = admin_client.post(url, {"remove": "all", "keep": "newest"}, follow=True).content.decode()
    assert "Nothing was removed: choose to keep the largest or the first imported picture of each." in page
    assert Image.objects.count() == 7
    page = admin_client.post(url, {"remove": "all", "keep": "largest"}, follow=True).content.decode()
    assert "The workers are removing every copy in photos, keeping the largest picture of each." in page
    wait_for(lambda: Image.objects.filter(collection=photos).count() == 4, message="the worker to remove two copies")
    assert not Image.objects.filter(pk__in=[library["seven-small.jpg"].pk, library["nine.png"].pk]).exists()
    assert Image.objects.filter(pk=library["eight-again.png"].pk).exists()


def test_the_api_has_the_workers_remove_every_copy(admin_client, client, library, celery_worker, monkeypatch):
    photos = library["seven.png"].collection
    url = reverse("api-collection-copies", args=[photos.pk])
    assert client.delete(url).status_code in (401, 403)
    response = admin_client.delete(url + "?keep=newest")
    assert response.status_code == 400 and "keep" in response.json()["errors"]
    assert admin_client.delete(reverse("api-collection-copies", args=[999_999])).status_code == 404
    removal_url = reverse("api-collection-copy-removal", args=[photos.pk])
    assert client.get(removal_url).status_code == 404  # none started yet
    response = admin_client.delete(url + "?keep=oldest")
    started = response.json()
    assert response.status_code == 202 and started["keep"] == "oldest" and started["status"] == "running"
    wait_for(lambda: client.get(removal_url).json()["status"] == "done", message="the worker to end the removal")
    assert not Image.objects.filter(pk__in=[library["seven-small.jpg"].pk, library["nine-large.webp"].pk]).exists()
    assert Image.objects.filter(collection=photos).count() == 4
    done = client.get(removal_url).json()
    assert done["id"] == started["id"] and (done["deleted"], done["round"], done["error"]) == (2, 2, "")
    assert done["checked"] == 6 and done["finished_at"]  # every image in round 1; none was left with a higher copy for round 2
    # a broker that cannot be reached: told, and nothing queued or removed
    from workers.tasks import remove_copies

    def unreachable(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(remove_copies, "apply_async", unreachable)
    response = admin_client.delete(url)
    assert response.status_code == 503 and "cannot be reached (connection refused); nothing was removed" in response.json()["error"]


def test_the_admin_has_the_workers_remove_the_copies_of_the_collections_ticked(admin_client, client, django_user_model, library, celery_worker):
    photos, archive = library["seven.png"].collection, library["eight-again.png"].collection
    changelist = reverse("admin:gallery_collection_changelist")
    page = admin_client.post(changelist, {"action": "remove_copies", "_selected_action": [photos.pk, archive.pk]}, follow=True).content.decode()
    assert "The workers are removing the copies in" in page
    wait_for(lambda: Image.objects.filter(collection=photos).count() == 4, message="the worker to remove two copies")
    assert Image.objects.filter(collection=archive).count() == 1
    wait_for(lambda: not CopyRemovalRun.objects.filter(status="running").exists(), message="both removals to end")
    runs = admin_client.get(reverse("admin:gallery_copyremovalrun_changelist")).content.decode()
    assert runs.count('<td class="field-status">Done</td>') == 2  # each collection's removal, listed
    _offered_only_to_those_who_may_delete(admin_client, client, django_user_model, changelist, action="remove_copies", view="view_collection")


def _offered_only_to_those_who_may_delete(admin_client, client, django_user_model, changelist: str, *, action: str, view: str) -> None:
    """The admin's ``changelist`` offers ``action`` to a superuser, not to staff who may only ``view``."""
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x-long-password-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename=view))
    client.force_login(viewer)
    assert f'value="{action}"' in admin_client.get(changelist).content.decode()
    response = client.get(changelist)
    assert response.status_code == 200 and f'value="{action}"' not in response.content.decode()


def _flag(badge: tuple[int, int, int], *, size=(256, 128), fmt="PNG") -> bytes:
    """A flag drawn as clip art is: flat fields, and a round badge of 20 px in ``badge``'s colour."""
    from PIL import ImageDraw

    flag = PILImage.new("RGB", (256, 128), (20, 40, 140))
    draw = ImageDraw.Draw(flag)
    draw.rectangle([0, 0, 100, 60], fill=(200, 30, 30))
    draw.ellipse([170, 40, 190, 60], fill=badge)
    buffer = io.BytesIO()
    flag.resize(size, PILImage.Resampling.BICUBIC).save(buffer, format=fmt, quality=85)
    return buffer.getvalue()


def test_pictures_alike_overall_but_not_in_every_region_are_not_removed(capsys):
    # two flags that differ only in their badge's colour are copies by signature (0.98 alike), and
    # listed so; removing copies keeps both, and removes only the true copy, a rescaled JPEG
    make_encoder()
    flags = collection_get_or_create(name="flags")
    for name, data in (
        ("white-badge.png", _flag((240, 240, 240))), ("white-badge-small.jpg", _flag((240, 240, 240), size=(128, 64), fmt="JPEG")),
        ("yellow-badge-large.png", _flag((240, 200, 40), size=(512, 256))),
    ):
        images_create(collection=flags, files=[IncomingFile(name=name, data=data)])
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    assert _names(collection_list_copy_groups(collection=flags)) == [("white-badge.png", ["white-badge-small.jpg", "yellow-badge-large.png"])]
    plan = collection_plan_copy_removal(collection=flags)
    # the white one's larger copy by signature is the yellow one: no keeper of its own picture
    assert plan.doomed == {Image.objects.get(original_name="white-badge-small.jpg").pk: Image.objects.get(original_name="white-badge.png").pk}
    assert plan.unlike == 1
    call_command("remove_copies", "--collection", "flags")
    out = capsys.readouterr().out
    assert "flags: deleted 1 copies in 2 rounds" in out and "1 images were left although their copy signatures match a picture kept" in out
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["white-badge.png", "yellow-badge-large.png"]


def _run(collection) -> CopyRemovalRun:
    return CopyRemovalRun.objects.get(collection=collection)


def test_a_removal_walks_its_recorded_position_and_a_message_for_a_stretch_done_does_nothing(library):
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos, keep="largest")
    assert copy_removal_advance(run_id=run.pk, round_number=1, after=run.after + 1) is None  # not where the run is
    first = copy_removal_advance(run_id=run.pk, round_number=1, after=0)
    assert first.deleted == 2 and first.next == CopyRemovalStep(round=2, among=frozenset())  # nothing left with a higher copy
    run.refresh_from_db()
    assert (run.status, run.round, run.after, run.checked, run.deleted, run.tries) == ("running", 2, 0, 6, 2, 0)
    assert copy_removal_advance(run_id=run.pk, round_number=1, after=0) is None  # the same message again: done already
    last = copy_removal_advance(run_id=run.pk, round_number=2, after=0)
    assert last.deleted == 0 and last.next is None
    run.refresh_from_db()
    assert (run.status, run.round, run.checked, run.deleted) == ("done", 2, 6, 2) and run.finished_at
    assert copy_removal_advance(run_id=run.pk, round_number=2, after=0) is None
    assert Image.objects.filter(collection=photos).count() == 4 and run.error == ""


def test_a_removal_that_reaches_the_last_round_still_deleting_says_so(admin_client, monkeypatch):
    # the four-link chain needs a round that deletes and one that finds nothing more; with one
    # allowed, the first still deletes when it ends the removal
    monkeypatch.setattr("gallery.services.COPY_REMOVAL_ROUNDS_MAX", 1)
    rows = _chain(sizes=(100, 200, 300, 400))
    chain = rows["q"].collection
    run = copy_removal_record(collection=chain)
    while run.status == "running":
        copy_removal_advance(run_id=run.pk, round_number=run.round, after=run.after)
        run.refresh_from_db()
    assert (run.status, run.round, run.deleted) == ("done", 1, 2)
    assert run.error == "it stopped after round 1, which still deleted 2: copies may be left; removing them again goes on"
    page = admin_client.get(reverse("gallery:collection-copies", args=[chain.pk])).content.decode()
    assert "which still deleted 2: copies may be left; removing them again goes on." in page


def test_one_removal_runs_at_a_time_in_a_collection(admin_client, library):
    photos, archive = library["seven.png"].collection, library["eight-again.png"].collection
    running = copy_removal_record(collection=photos)
    with pytest.raises(CopyRemovalUnderway) as refused:
        copy_removal_record(collection=photos, keep="oldest")
    assert refused.value.run == running
    copy_removal_record(collection=archive)  # another collection's runs beside it
    response = admin_client.delete(reverse("api-collection-copies", args=[photos.pk]))
    assert response.status_code == 409 and response.json()["removal"]["id"] == running.pk
    url = reverse("gallery:collection-copies", args=[photos.pk])
    page = admin_client.post(url, {"remove": "all", "keep": "largest"}, follow=True).content.decode()
    assert "A removal of this collection&#x27;s copies is under way already" in page
    assert "The workers are removing every copy here" in page and 'id="remove-copies"' not in page  # its progress, no second form
    assert CopyRemovalRun.objects.filter(collection=photos).count() == 1 and Image.objects.count() == 7
    # once it ends, another may start
    CopyRemovalRun.objects.filter(pk=running.pk).update(status=CopyRemovalRun.Status.DONE)
    assert 'id="remove-copies"' in admin_client.get(url).content.decode()
    assert copy_removal_record(collection=photos).pk != running.pk


def test_a_stretch_that_never_finishes_is_tried_again_then_stops_the_removal(admin_client, library, monkeypatch):
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)

    def broken(**kwargs):
        Image.objects.filter(pk=library["seven-small.jpg"].pk).delete()  # undone with the stretch
        raise RuntimeError("the disk went away")

    monkeypatch.setattr("gallery.services.collection_remove_copies", broken)
    for tries in range(1, COPY_REMOVAL_TRIES_MAX + 1):
        with pytest.raises(RuntimeError):
            copy_removal_advance(run_id=run.pk, round_number=1, after=0)
        run.refresh_from_db()
        assert (run.status, run.tries) == ("running", tries)
    assert Image.objects.count() == 7
    assert copy_removal_advance(run_id=run.pk, round_number=1, after=0) is None
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at and f"were started {COPY_REMOVAL_TRIES_MAX} times and never finished" in run.error
    page = admin_client.get(reverse("gallery:collection-copies", args=[photos.pk])).content.decode()
    assert "The last removal of copies here stopped in round 1, having deleted 0 copies" in page
    assert 'id="remove-copies"' in page  # it can be started again


def test_the_workers_record_the_error_of_a_stretch_and_the_page_shows_it(admin_client, library, monkeypatch):
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)
    monkeypatch.setattr("gallery.services.collection_remove_copies", lambda **kwargs: 1 / 0)
    from workers.tasks import remove_copies

    with pytest.raises(ZeroDivisionError):
        remove_copies.run(run.pk, 1, 0)
    run.refresh_from_db()
    assert run.status == "running" and run.error == "ZeroDivisionError: division by zero"
    page = admin_client.get(reverse("gallery:collection-copies", args=[photos.pk])).content.decode()
    assert "The last try of a stretch failed (ZeroDivisionError: division by zero); the workers try it again." in page


def test_the_sweep_takes_up_a_removal_whose_next_stretch_was_lost(client, library, celery_worker):
    photos, archive = library["seven.png"].collection, library["eight-again.png"].collection
    quiet = copy_removal_record(collection=photos)  # recorded, its message never sent
    recent = copy_removal_record(collection=archive)
    CopyRemovalRun.objects.filter(pk=quiet.pk).update(progress_at=timezone.now() - timedelta(minutes=10))
    assert copy_removals_resume(older_than=timedelta(minutes=5)) == 1
    wait_for(lambda: _run(photos).status == "done", message="the worker to end the resumed removal")
    assert _run(photos).deleted == 2 and Image.objects.filter(collection=photos).count() == 4
    assert _run(archive).status == "running" and _run(archive).progress_at == recent.progress_at  # not quiet: left alone
    page = client.get(reverse("gallery:collection-copies", args=[photos.pk])).content.decode()
    assert "The last removal of copies here deleted 2 copies in 2 rounds, keeping the largest picture of each." in page


def test_the_command_records_its_removal_and_refuses_while_one_runs(library, capsys):
    photos = library["seven.png"].collection
    call_command("remove_copies", "--collection", "photos")
    run = _run(photos)
    assert (run.status, run.deleted, run.round, run.keep) == ("done", 2, 2, "largest")
    running = copy_removal_record(collection=photos)
    with pytest.raises(CommandError, match="photos: a removal of this collection's copies is under way"):
        call_command("remove_copies", "--collection", "photos")
    call_command("remove_copies", "--collection", "photos", "--dry-run")  # a dry run records nothing
    assert CopyRemovalRun.objects.filter(collection=photos).count() == 2
    assert collection_copy_removal_latest(collection=photos) == running


def test_a_stopped_removal_goes_no_further_and_another_may_start(admin_client, client, library):
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)
    assert copy_removal_advance(run_id=run.pk, round_number=1, after=0).deleted == 2
    url = reverse("api-collection-copy-removal", args=[photos.pk])
    assert client.delete(url).status_code in (401, 403)
    assert admin_client.delete(reverse("api-collection-copy-removal", args=[999_999])).status_code == 404
    response = admin_client.delete(url)
    stopped = response.json()
    assert response.status_code == 200 and (stopped["id"], stopped["status"], stopped["round"], stopped["deleted"]) == (run.pk, "stopped", 2, 2)
    assert stopped["finished_at"] and stopped["error"] == ""
    assert copy_removal_advance(run_id=run.pk, round_number=2, after=0) is None  # its next message does nothing
    run.refresh_from_db()
    assert (run.status, run.checked, run.deleted) == ("stopped", 6, 2) and Image.objects.filter(collection=photos).count() == 4
    response = admin_client.delete(url)  # none running now
    assert response.status_code == 409 and response.json()["removal"]["id"] == run.pk
    page = admin_client.get(reverse("gallery:collection-copies", args=[photos.pk])).content.decode()
    assert "The last removal of copies here was stopped in round 2" in page and "having deleted 2 copies" in page
    assert 'id="remove-copies"' in page and 'id="stop-removal"' not in page
    assert copy_removal_record(collection=photos).pk != run.pk


def test_the_copies_page_stops_a_removal_for_a_user_who_may_delete(admin_client, client, library):
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)  # running, its first stretch not yet done
    url = reverse("gallery:collection-copies", args=[photos.pk])
    assert 'id="stop-removal"' not in client.get(url).content.decode()
    assert client.post(url, {"remove": "stop"}).status_code == 403
    assert 'id="stop-removal"' in admin_client.get(url).content.decode()
    page = admin_client.post(url, {"remove": "stop"}, follow=True).content.decode()
    assert "The removal is stopped, after 0 copies deleted." in page and 'id="remove-copies"' in page
    from workers.tasks import remove_copies

    remove_copies.run(run.pk, 1, 0)  # its first message, late: nothing is deleted
    assert Image.objects.count() == 7 and _run(photos).status == "stopped"
    page = admin_client.post(url, {"remove": "stop"}, follow=True).content.decode()
    assert "No removal of copies was running here: it had ended." in page


@pytest.mark.django_db(transaction=True)
def test_stopping_waits_for_the_stretch_under_way_which_keeps_its_deletions(library, monkeypatch):
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)
    inside, go = paused_after(monkeypatch, "gallery.services.collection_remove_copies")

    advanced, stopped = [], []
    stretch = in_own_thread(lambda: copy_removal_advance(run_id=run.pk, round_number=1, after=0), advanced)
    assert inside.wait(timeout=60)
    stopping = in_own_thread(lambda: copy_removal_stop(collection=photos), stopped)
    stopping.join(timeout=1)
    assert stopping.is_alive()  # waits for the stretch's row lock
    go.set()
    stretch.join(timeout=60)
    stopping.join(timeout=60)
    assert advanced[0].deleted == 2 and stopped[0].pk == run.pk
    run.refresh_from_db()
    assert (run.status, run.round, run.deleted) == ("stopped", 2, 2)  # the stretch's position and deletions, then the stop
    assert Image.objects.filter(collection=photos).count() == 4


def test_the_command_stops_a_removal_and_an_interrupted_one_stops_itself(library, capsys, monkeypatch):
    photos = library["seven.png"].collection
    with pytest.raises(CommandError, match="photos: no removal of its copies is running"):
        call_command("remove_copies", "--collection", "photos", "--stop")
    run = copy_removal_record(collection=photos)
    call_command("remove_copies", "--collection", "photos", "--stop")
    assert "photos: the removal is stopped in round 1, after 0 copies deleted." in capsys.readouterr().out
    assert _run(photos).status == "stopped"
    # Ctrl-C in the command's second round: the first round's deletions stay, the run stops
    from gallery import services

    real = services.collection_remove_copies

    def interrupted(**kwargs):
        if kwargs["step"].round == 2:
            raise KeyboardInterrupt
        return real(**kwargs)

    monkeypatch.setattr("gallery.services.collection_remove_copies", interrupted)
    with pytest.raises(CommandError, match="photos: interrupted; the removal is stopped after 2 copies deleted"):
        call_command("remove_copies", "--collection", "photos")
    last = collection_copy_removal_latest(collection=photos)
    assert last.pk != run.pk and (last.status, last.round, last.deleted) == ("stopped", 2, 2)


def test_a_removal_asked_for_before_removals_were_recorded_starts_as_a_recorded_one(library, celery_worker):
    from workers.tasks import remove_copies

    photos = library["seven.png"].collection
    remove_copies.run(photos.pk, "largest", 3)  # an old message: (collection id, keep, after)
    wait_for(lambda: _run(photos).status == "done", message="the worker to end the removal")
    assert _run(photos).deleted == 2 and Image.objects.filter(collection=photos).count() == 4
    remove_copies.run(photos.pk, "newest", 0)  # an unknown rule, or a collection gone: nothing
    remove_copies.run(999_999, "largest", 0)
    running = copy_removal_record(collection=photos)
    remove_copies.run(photos.pk, "largest", 0)  # one runs already: dropped
    assert CopyRemovalRun.objects.filter(collection=photos).count() == 2 and collection_copy_removal_latest(collection=photos) == running
    remove_copies.run(photos.pk, "largest", 3, 2, 1)  # a later stretch's old message: (..., round, deleted in round)
    assert CopyRemovalRun.objects.filter(collection=photos).count() == 2  # read as one, and dropped while one runs


def test_the_admin_stops_the_running_removals_ticked(admin_client, client, django_user_model, library):
    photos, archive = library["seven.png"].collection, library["eight-again.png"].collection
    running = copy_removal_record(collection=photos)
    ended = copy_removal_record(collection=archive)
    CopyRemovalRun.objects.filter(pk=ended.pk).update(status=CopyRemovalRun.Status.DONE)
    changelist = reverse("admin:gallery_copyremovalrun_changelist")
    page = admin_client.post(changelist, {"action": "stop", "_selected_action": [running.pk, ended.pk]}, follow=True).content.decode()
    assert "The removal in" in page and "is stopped, after 0 copies deleted." in page
    assert _run(photos).status == "stopped" and _run(archive).status == "done"  # an ended one stays as it ended
    again = admin_client.post(changelist, {"action": "stop", "_selected_action": [running.pk, ended.pk]}, follow=True)
    assert [str(message) for message in again.context["messages"]] == ["None of the removals ticked is running: each had ended already."]
    _offered_only_to_those_who_may_delete(admin_client, client, django_user_model, changelist, action="stop", view="view_copyremovalrun")

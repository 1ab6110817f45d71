"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright against a
live server on the test database. Skipped where Chromium is not installed (`apt-get install
chromium`; Playwright's own browser download is not used)."""
import base64
import shutil
from contextlib import contextmanager

import pytest
from django.urls import reverse

from gallery.models import Image
from gallery.services import collection_get_or_create
from tests.gallery.test_copy_groups import library  # noqa: F401  (fixture)
from tests.search.test_apis import indexed  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.django_db(transaction=True),  # the live server's thread must see the rows
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


@contextmanager
def chromium_page():
    """A page of headless Chromium, with the errors its scripts raise collected in a list."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page, errors
        finally:
            browser.close()


ADMIN_PASSWORD = "a-long-password"


def sign_in_as_admin(page, live_server, then: str) -> None:
    """Signs ``page`` in through the admin's form as the test's superuser "admin" (password
    ADMIN_PASSWORD), and waits for ``then``, the absolute URL it goes on to."""
    page.goto(f"{live_server.url}{reverse('admin:login')}?next={then}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(then)


# Builds a File from base64 and hands it to the page as a user's drop or paste would.
DROP = """([data, name]) => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const carried = new DataTransfer();
    carried.items.add(new File([bytes], name, {type: "image/png"}));
    document.dispatchEvent(new DragEvent("dragover", {dataTransfer: carried, bubbles: true, cancelable: true}));
    document.querySelector("main").dispatchEvent(new DragEvent("drop", {dataTransfer: carried, bubbles: true, cancelable: true}));
}"""
PASTE = """([data, name]) => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const carried = new DataTransfer();
    carried.items.add(new File([bytes], name, {type: "image/png"}));
    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: carried, bubbles: true}));
}"""


def test_choosing_dropping_or_pasting_an_image_searches_with_it_and_results_lead_to_similar_images(live_server, indexed, tmp_path):  # noqa: F811
    _, pictures = indexed
    collection_get_or_create(name="elsewhere")
    # Everything the database says is read first: Django refuses ORM calls while Playwright's
    # event loop runs in this thread.
    detail = {name: reverse("gallery:image-detail", args=[pk]) for name, pk in Image.objects.values_list("original_name", "pk")}
    page_url = live_server.url + reverse("search:search-page")
    with chromium_page() as (page, errors):
        for how, script, name in (("drop", DROP, "c3.png"), ("paste", PASTE, "c1.png")):
            page.goto(page_url)
            with page.expect_navigation():
                page.evaluate(script, [base64.b64encode(pictures[name]).decode(), name])
            tiles = page.locator("#results a.tile")
            assert tiles.count() == 6, how  # the six indexed images, the same picture first
            assert tiles.first.get_attribute("href") == detail[name], how
            assert "sim 1.000" in tiles.first.inner_text(), how
        (tmp_path / "c5.png").write_bytes(pictures["c5.png"])
        page.goto(page_url)
        with page.expect_navigation():  # chosen with the button: no second click on Search
            page.set_input_files("input[type=file]", str(tmp_path / "c5.png"))
        assert page.locator("#results a.tile").first.get_attribute("href") == detail["c5.png"]
        # the same image again, for fewer results (the browser no longer holds the file)
        page.fill("input[name=k]", "2")
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert page.locator("#results a.tile").count() == 2
        assert page.locator("#results a.tile").first.get_attribute("href") == detail["c5.png"]
        hrefs = lambda: [tile.get_attribute("href") for tile in page.locator("#results a.tile").all()]  # noqa: E731
        first_two = hrefs()
        with page.expect_navigation():  # the pager's button sends the form on, a page further
            page.click(".pager button:has-text('more')")
        assert len(hrefs()) == 2 and not set(hrefs()) & set(first_two)
        assert page.locator("h2").inner_text() == "Most similar, 3 to 4"
        with page.expect_navigation():  # Enter is the Search button's: from the nearest again
            page.press("input[name=k]", "Enter")
        assert hrefs() == first_two
        with page.expect_navigation():  # another collection searches at once
            page.select_option("select[name=collection]", label="elsewhere")
        assert page.locator("#results a.tile").count() == 0
        with page.expect_navigation():
            page.select_option("select[name=collection]", label="All collections")
        tiles = page.locator("#results a.tile")
        assert tiles.count() == 2
        tiles.first.click()
        page.wait_for_url(live_server.url + detail["c5.png"])
        assert page.locator("#results a.tile").count() == 5  # its similar images, never itself
        assert errors == []


def test_a_box_dragged_over_the_query_picture_searches_with_that_part_of_it(live_server, indexed, tmp_path):  # noqa: F811
    from tests.utils import side_by_side

    _, pictures = indexed
    detail = {name: reverse("gallery:image-detail", args=[pk]) for name, pk in Image.objects.values_list("original_name", "pk")}
    (tmp_path / "both.png").write_bytes(side_by_side(pictures["c1.png"], pictures["c4.png"]))
    with chromium_page() as (page, errors):
        page.goto(live_server.url + reverse("search:search-page"))
        with page.expect_navigation():
            page.set_input_files("input[type=file]", str(tmp_path / "both.png"))
        hrefs = lambda: [tile.get_attribute("href") for tile in page.locator("#results a.tile").all()]  # noqa: E731
        whole = hrefs()

        def drag(left, top, right, bottom):
            box = page.locator("[data-region-picker] img").bounding_box()
            page.mouse.move(box["x"] + left * box["width"], box["y"] + top * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + right * box["width"], box["y"] + bottom * box["height"], steps=4)
            page.mouse.up()

        for (left, right), name in (((0.02, 0.48), "c1.png"), ((0.52, 0.98), "c4.png")):
            with page.expect_navigation():
                drag(left, 0.05, right, 0.95)
            assert hrefs()[0] == detail[name], name
            assert page.locator("h2").inner_text() == "6 most similar to the part in the box"
            assert page.locator("[data-region-box]").count() == 1
        on_the_right = hrefs()
        drag(0.3, 0.5, 0.31, 0.51)  # a click, not a box: nothing is sent, the box stays
        page.wait_for_timeout(300)
        assert hrefs() == on_the_right and page.locator("[data-region-box]").count() == 1
        with page.expect_navigation():
            page.click("button:has-text('search with the whole image')")
        assert hrefs() == whole and page.locator("[data-region-box]").count() == 0
        # the keyboard's way: Enter puts the middle half on, arrows move it, Shift with arrows resizes
        page.focus("[data-region-picker]")
        page.keyboard.press("Enter")
        assert page.locator(".region-picker .region").count() == 1
        for key, times in (("ArrowUp", 6), ("Shift+ArrowDown", 12), ("ArrowLeft", 6)):
            for _ in range(times):  # past the picture's edge: the box stops there
                page.keyboard.press(key)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.locator("[data-region-picker]").get_attribute("data-region") == "0.0000,0.0000,0.5000,1.0000"
        assert hrefs()[0] == detail["c1.png"]
        assert errors == []


def test_the_admin_uploads_a_folder_picked_in_the_browser_with_labels_from_its_folders(live_server, django_user_model, tmp_path):
    from gallery.services import collection_get_or_create
    from tests.utils import image_bytes

    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    collection = collection_get_or_create(name="picked")
    for folder, pattern in (("red", 1), ("blue", 2)):
        (tmp_path / "shots" / folder).mkdir(parents=True)
        (tmp_path / "shots" / folder / f"{folder}.png").write_bytes(image_bytes(pattern=pattern))
    upload_url = live_server.url + reverse("admin:gallery_collection_upload", args=[collection.pk])
    with chromium_page() as (page, errors):
        sign_in_as_admin(page, live_server, upload_url)
        page.set_input_files("#id_folder", str(tmp_path / "shots"))
        page.check("#id_labels_from_dirs")
        # more files than the server takes: the page says so and sends nothing
        page.evaluate("document.getElementById('upload-form').dataset.maxFiles = '1'")
        dialogs = []
        page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.click("input[type=submit]")
        refusal = dialogs[0]
        page.evaluate("document.getElementById('upload-form').dataset.maxFiles = '1000'")
        page.click("input[type=submit]")
        page.wait_for_load_state()
        message = page.locator(".messagelist").inner_text()
    assert refusal.startswith("2 files picked; one upload takes at most 1")
    assert "2 queued for indexing" in message
    rows = dict(Image.objects.filter(collection=collection).values_list("original_name", "label"))
    assert rows == {"shots/red/red.png": "red", "shots/blue/blue.png": "blue"}


# Elements of the page whose content runs out of their box: a card, a title, a label list.
OVERFLOWING = """() => [...document.querySelectorAll("main .card, main h1, main h2, main p, main .labels, main form")]
    .filter(element => element.scrollWidth > element.clientWidth + 1)
    .map(element => element.tagName + "." + element.className)"""


# Header links broken over more than one line: taller than the brand beside them.
BROKEN_LINKS = """() => [...document.querySelectorAll("header nav a, header nav button")]
    .filter(link => link.getBoundingClientRect().height > document.querySelector("header .brand").getBoundingClientRect().height + 1)
    .map(link => link.textContent)"""

# Counts ("12 indexed", "1 failed") broken over two lines.
BROKEN_COUNTS = """() => [...document.querySelectorAll(".stats span, .stats a")]
    .filter(count => count.getClientRects().length > 1)
    .map(count => count.textContent)"""


def test_long_names_without_spaces_wrap_inside_their_boxes_on_a_phone_and_a_desktop(live_server, indexed, django_user_model):  # noqa: F811
    """Camera and hash file names, and labels from deep folder names, hold no space to break at:
    they ran out of the collection cards over the cards beside them, and past the screen's edge
    on a phone (the page scrolled sideways). Signed in on a phone, the header's links broke into
    columns of words ("Search / by / image", "Sign / out / admin")."""
    from playwright.sync_api import sync_playwright

    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    collection, _ = indexed
    collection.name = "Holiday" + "o" * 180 + "Photos"
    collection.save()
    image = Image.objects.filter(status=Image.Status.INDEXED).first()
    Image.objects.filter(pk=image.pk).update(original_name="IMG_" + "0123456789abcdef" * 8 + ".jpg", label="very" * 40)
    paths = [
        reverse("gallery:collection-list"),
        reverse("gallery:collection-detail", args=[collection.pk]),
        reverse("gallery:image-detail", args=[image.pk]),
        reverse("search:search-page"),
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for width, height in ((390, 844), (1280, 900)):
                page = browser.new_page(viewport={"width": width, "height": height})
                sign_in_as_admin(page, live_server, live_server.url + reverse("gallery:collection-list"))
                for path in paths:
                    page.goto(live_server.url + path)
                    assert page.evaluate(OVERFLOWING) == [], (width, path)
                    assert page.evaluate("document.documentElement.scrollWidth") <= width, (width, path)
                    assert "Sign out admin" in page.locator("header").inner_text()
                    assert page.evaluate(BROKEN_LINKS) == [], (width, path)
                    assert page.evaluate(BROKEN_COUNTS) == [], (width, path)
                page.close()
        finally:
            browser.close()


def test_results_marked_more_or_less_like_the_query_refine_the_search(live_server, indexed, tmp_path):  # noqa: F811
    from search.selectors import Feedback, encoder_active, image_vector, vector_list_similar

    _, pictures = indexed
    (tmp_path / "c5.png").write_bytes(pictures["c5.png"])
    # the upload is the stored c5.png, so its searches are those of the stored vector
    vector = image_vector(image=Image.objects.get(original_name="c5.png"), encoder=encoder_active())
    plain = [hit.image.pk for hit in vector_list_similar(vector=vector, encoder=encoder_active(), k=6)]
    liked, disliked = plain[-1], plain[1]
    marks = Feedback(liked=(liked,), disliked=(disliked,))
    refined = [reverse("gallery:image-detail", args=[hit.image.pk]) for hit in vector_list_similar(vector=vector, encoder=encoder_active(), k=6, feedback=marks)]
    assert refined != [reverse("gallery:image-detail", args=[pk]) for pk in plain]
    with chromium_page() as (page, errors):
        page.goto(live_server.url + reverse("search:search-page"))
        with page.expect_navigation():
            page.set_input_files("input[type=file]", str(tmp_path / "c5.png"))
        # a window too short for the results: the refine bar stays at its foot, saying what it sends
        page.set_viewport_size({"width": 1000, "height": 420})
        assert page.locator("#results .hit").last.bounding_box()["y"] + 100 > 420  # results go on below the window
        button = page.locator("button[name=refine]").bounding_box()
        assert 0 <= button["y"] and button["y"] + button["height"] <= 420
        assert page.locator("[data-marked-now]").inner_text() == ""
        page.check(f"input[name=like][value='{liked}']")
        assert page.locator("[data-marked-now]").inner_text() == "Refining sends 1 more, 0 less."
        page.check(f"input[name=unlike][value='{disliked}']")
        assert page.locator("[data-marked-now]").inner_text() == "Refining sends 1 more, 1 less."
        with page.expect_navigation():
            page.click("button:has-text('Refine with my marks')")
        assert [tile.get_attribute("href") for tile in page.locator("#results a.tile").all()] == refined
        assert page.locator("h2").inner_text() == "6 most similar, steered by your marks"
        assert page.is_checked(f"input[name=like][value='{liked}']") and page.is_checked(f"input[name=unlike][value='{disliked}']")
        page.uncheck(f"input[name=like][value='{liked}']")  # the marks shown ticked count as they stand
        assert page.locator("[data-marked-now]").inner_text() == "Refining sends 0 more, 1 less."
        page.check(f"input[name=like][value='{liked}']")
        with page.expect_navigation():
            page.click("button:has-text('clear the marks')")
        assert page.locator("h2").inner_text() == "6 most similar"
        assert [tile.get_attribute("href") for tile in page.locator("#results a.tile").all()] == [
            reverse("gallery:image-detail", args=[pk]) for pk in plain
        ]
        assert errors == []


def test_the_refine_bar_counts_the_marks_carried_from_other_pages(live_server, indexed, monkeypatch):  # noqa: F811
    from gallery import views
    from search.selectors import image_list_similar

    monkeypatch.setattr(views, "SIMILAR_PER_PAGE", 2)
    image = Image.objects.get(original_name="c0.png")
    first, second = image_list_similar(image=image, k=2), image_list_similar(image=image, k=2, offset=2)
    url = reverse("gallery:image-detail", args=[image.pk])
    with chromium_page() as (page, errors):
        page.goto(f"{live_server.url}{url}?page=2&like={first[0].image.pk}")  # marked on page 1
        page.check(f"input[name=unlike][value='{second[1].image.pk}']")
        assert page.locator("[data-marked-now]").inner_text() == "Refining sends 1 more, 1 less."
        assert errors == []


def test_an_admin_keeps_the_largest_picture_of_each_group_of_copies(live_server, library, django_user_model):  # noqa: F811
    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    photos = library["seven.png"].collection_id
    copies_url = live_server.url + reverse("gallery:collection-copies", args=[photos])
    with chromium_page() as (page, errors):
        sign_in_as_admin(page, live_server, copies_url)
        page.click("#tick-smaller")
        ticked = page.eval_on_selector_all("input[name=delete]:checked", "boxes => boxes.map(box => Number(box.value))")
        page.click("text=Delete the ticked copies")
        page.wait_for_url(copies_url)
        message = page.inner_text(".messages")
        groups_left = page.locator("section.copy-group").count()
    assert not errors
    # seven (400x300) over its 200x150 JPEG; nine's 800x600 WebP over nine (400x300)
    assert sorted(ticked) == sorted([library["seven-small.jpg"].pk, library["nine.png"].pk])
    assert "Deleted 2 copies" in message and groups_left == 0
    assert set(Image.objects.filter(collection_id=photos).values_list("original_name", flat=True)) == {
        "seven.png", "eight.png", "nine-large.webp", "ten.png",
    }


def test_an_admin_has_the_workers_remove_every_copy_after_confirming(live_server, library, django_user_model, celery_worker):  # noqa: F811
    from tests.conftest import wait_for

    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    photos = library["seven.png"].collection_id
    copies_url = live_server.url + reverse("gallery:collection-copies", args=[photos])
    asked, posted = [], []
    with chromium_page() as (page, errors):
        sign_in_as_admin(page, live_server, copies_url)
        page.on("request", lambda request: request.method == "POST" and posted.append(request.post_data))
        page.check("input[name=keep][value=oldest]")
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.click("text=Remove the copies")
        page.wait_for_timeout(500)
        sent_when_dismissed = list(posted)
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        page.click("text=Remove the copies")
        page.wait_for_selector(".messages")
        message = page.inner_text(".messages")
    assert not errors
    assert asked == ["Delete every copy in this collection, keeping the first imported picture of each?"] * 2
    assert sent_when_dismissed == [] and len(posted) == 1 and "remove=all" in posted[0] and "keep=oldest" in posted[0]
    assert "The workers are removing every copy in photos, keeping the first imported picture of each." in message
    wait_for(lambda: Image.objects.filter(collection_id=photos).count() == 4, message="the worker to remove two copies")
    assert set(Image.objects.filter(collection_id=photos).values_list("original_name", flat=True)) == {"seven.png", "eight.png", "nine.png", "ten.png"}


def test_the_copies_page_follows_a_removal_until_it_ends(live_server, library, celery_worker):  # noqa: F811
    from gallery.services import copy_removal_record
    from workers.tasks import remove_copies

    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)  # running, its first stretch not yet asked for
    with chromium_page() as (page, errors):
        page.goto(live_server.url + reverse("gallery:collection-copies", args=[photos.pk]))
        running = page.inner_text("#copy-removal")
        remove_copies.delay(run.pk, run.round, run.after)
        page.wait_for_selector("#copy-removal.done", timeout=30_000)  # read back, then the page loaded again
        done = page.inner_text("#copy-removal")
        groups_left = page.locator(".copy-group").count()
    assert not errors
    assert "The workers are removing every copy here" in running and "0 images checked and 0 copies deleted so far" in running
    assert "The last removal of copies here deleted 2 copies in 2 rounds, keeping the largest picture of each." in done
    assert groups_left == 0


def test_an_admin_stops_a_removal_from_the_copies_page(live_server, library, django_user_model):  # noqa: F811
    from gallery.models import CopyRemovalRun
    from gallery.services import copy_removal_record

    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    photos = library["seven.png"].collection
    run = copy_removal_record(collection=photos)  # running, its first stretch not yet asked for
    copies_url = live_server.url + reverse("gallery:collection-copies", args=[photos.pk])
    with chromium_page() as (page, errors):
        sign_in_as_admin(page, live_server, copies_url)
        start_form_while_running = page.locator("#remove-copies").count()
        page.click("text=Stop the removal")
        page.wait_for_selector("#copy-removal.stopped")
        message, status = page.inner_text(".messages"), page.inner_text("#copy-removal")
        start_form_after = page.locator("#remove-copies").count()
    assert not errors
    assert start_form_while_running == 0 and start_form_after == 1
    assert "The removal is stopped, after 0 copies deleted." in message
    assert "The last removal of copies here was stopped in round 1" in status and "having deleted 0 copies" in status
    assert CopyRemovalRun.objects.get(pk=run.pk).status == "stopped" and Image.objects.count() == 7


def test_an_admin_downloads_a_collection_from_its_page(live_server, django_user_model):
    import io
    import zipfile

    from gallery.services import IncomingFile, images_create
    from tests.utils import image_bytes

    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    collection = collection_get_or_create(name="to take home")
    pictures = {"red.png": image_bytes(pattern=1), "blue.png": image_bytes(pattern=2)}
    images_create(collection=collection, files=[IncomingFile(name=name, label="colours", data=data) for name, data in pictures.items()])
    page_url = live_server.url + reverse("gallery:collection-detail", args=[collection.pk])
    with chromium_page() as (page, errors):
        sign_in_as_admin(page, live_server, page_url)
        with page.expect_download() as download:
            page.click("text=download as zip")
        name, archive = download.value.suggested_filename, download.value.path().read_bytes()
    assert name == "to take home.zip"
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert {member: opened.read(member) for member in opened.namelist() if member != "manifest.csv"} == {
            f"colours/{member}": data for member, data in pictures.items()
        }
    assert errors == []


def test_an_admin_hands_a_large_move_to_the_workers_and_follows_it(live_server, django_user_model, monkeypatch, celery_worker):
    """Images → tick all → *Move selected images…* → where → Move: more than a request moves, so
    the workers do it, and Image moves shows how far they are; stopping it once ended says so."""
    from gallery.models import MoveRun
    from gallery.services import IncomingFile, images_create
    from tests.utils import image_bytes

    for module in ("gallery.admin", "gallery.services"):  # the live server's and the worker's threads read them
        monkeypatch.setattr(f"{module}.MOVE_IMAGES_MAX", 2)
    django_user_model.objects.create_superuser("admin", "admin@example.com", ADMIN_PASSWORD)
    drafts, final = collection_get_or_create(name="drafts"), collection_get_or_create(name="final")
    images_create(collection=drafts, files=[IncomingFile(name=f"{i}.png", label="", data=image_bytes(pattern=i)) for i in range(3)])
    images_url = live_server.url + reverse("admin:gallery_image_changelist")
    with chromium_page() as (page, errors):
        sign_in_as_admin(page, live_server, images_url)
        page.check("#action-toggle")
        page.select_option("select[name=action]", "move_to_collection")
        page.click("button[name=index]")
        asked = page.inner_text("#content")
        page.select_option("select[name=collection]", label="final")
        page.click("input[name=apply]")
        page.wait_for_selector(".messagelist")
        started = page.inner_text(".messagelist")
        page.click(".messagelist >> text=Image moves")
        run_url = page.url
        for _ in range(120):  # the workers move them, 2 at a time
            if "3 of 3 checked" in page.inner_text("#content"):
                break
            page.wait_for_timeout(250)
            page.goto(run_url)
        shown = page.inner_text("#content")
        page.goto(live_server.url + reverse("admin:gallery_moverun_changelist"))
        listed = page.inner_text("#result_list")
        page.check("#action-toggle")
        page.select_option("select[name=action]", "stop")
        page.click("button[name=index]")
        page.wait_for_selector(".messagelist")
        stopped = page.inner_text(".messagelist")
    assert not errors
    assert "Move 3 images to another collection" in asked and "the workers move them in the background" in asked
    assert "The workers are moving 3 images to final, 2 at a time" in started
    assert "3 of 3 checked" in shown and "done" in shown
    run = MoveRun.objects.get()
    assert f"move #{run.pk} of 3 images to collection {final.pk} (done)" in listed
    assert "None of the moves ticked is running: each had ended already." in stopped
    assert run.status == "done" and run.moved == 3 and Image.objects.filter(collection=final).count() == 3


def test_a_collections_page_follows_the_moves_into_it_and_shows_the_images_once_they_end(live_server):
    from gallery.models import Collection, MoveRun
    from gallery.services import IncomingFile, images_create
    from tests.utils import image_bytes, in_own_thread

    drafts, final = Collection.objects.create(name="drafts"), Collection.objects.create(name="final")
    images_create(collection=drafts, files=[IncomingFile(name=f"{i}.png", label="", data=image_bytes(pattern=i)) for i in range(3)])
    ids = list(Image.objects.values_list("pk", flat=True))
    run = MoveRun.objects.create(to=final, image_ids=ids, total=3)

    def move_some():  # as a stretch would: the images, then the run's counts (in a thread: its own connection)
        Image.objects.filter(pk__in=ids[:2]).update(collection=final)
        MoveRun.objects.filter(pk=run.pk).update(position=2, moved=2)

    def end():
        Image.objects.filter(pk=ids[2]).update(collection=final)
        MoveRun.objects.filter(pk=run.pk).update(position=3, moved=3, status="done")

    with chromium_page() as (page, errors):
        page.goto(live_server.url + reverse("gallery:collection-detail", args=[final.pk]))
        before = page.inner_text("#moves-incoming")
        in_own_thread(move_some, []).join()
        page.wait_for_function("document.querySelector('#moves-incoming [data-moves]').textContent.includes('2 moved')", timeout=15_000)
        during = page.inner_text("#moves-incoming")
        in_own_thread(end, []).join()
        page.wait_for_function("!document.getElementById('moves-incoming')", timeout=15_000)  # reloaded once none runs
        tiles = page.locator(".grid .tile").count()
    assert not errors
    assert "The workers are moving 3 images here: 0 checked and 0 moved so far" in before
    assert "3 images here: 2 checked and 2 moved so far" in during
    assert tiles == 3

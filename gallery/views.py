from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from gallery.models import Collection, Image
from gallery.selectors import (
    COPY_GROUPS_PER_PAGE,
    MAX_COPIES,
    ImagePage,
    collection_copy_removal_latest,
    collection_images,
    collection_labels,
    collection_list_copy_groups,
    collection_list_with_covers,
    collection_moves_incoming,
    collection_stats,
    image_page,
    image_list_copies,
    images_copy_ids,
)
from gallery.services import (
    CopyRemovalUnderway,
    QueueUnavailable,
    StretchUnderway,
    copy_removal_start,
    copy_removal_stop,
    images_delete,
)
from search import selectors as search_selectors
from search.views import is_image_id, marks_context, marks_read, search_with_marks

IMAGES_PER_PAGE = 60
# Similar images on an image's page; "more similar" pages on to search.selectors.MAX_DEPTH.
SIMILAR_PER_PAGE = 20
# Label links listed on a collection's page; past them, a label is typed into the filter box.
LABELS_SHOWN = 300
# Groups one POST of the copies page may name: a page's worth, with room to spare.
COPY_GROUPS_PER_POST = 4 * COPY_GROUPS_PER_PAGE


def collection_list(request):
    return render(request, "gallery/collection_list.html", {"collections": collection_list_with_covers()})


def _query(marks: search_selectors.Feedback = search_selectors.Feedback(), **params: str) -> str:
    """A query string of the non-empty ``params`` and the ``marks`` (``like`` and ``unlike`` ids),
    with its "?"."""
    pairs = [(key, value) for key, value in params.items() if value]
    pairs += [("like", i) for i in marks.liked] + [("unlike", i) for i in marks.disliked]
    return "?" + urlencode(pairs)


def collection_detail(request, collection_id: int):
    """The collection's images, 60 a page, narrowed by ``label`` and ``status`` (failed images show
    their reason), with the counts that the page keeps up to date while images are pending."""
    collection = get_object_or_404(Collection, pk=collection_id)
    label = request.GET.get("label", "")
    status = request.GET.get("status", "")
    if status not in Image.Status.values:
        status = ""
    images = collection_images(collection=collection, label=label, status=status).order_by("id")
    stats = collection_stats(collection=collection)
    # the kept counts say how many there are, instead of a COUNT over the collection's rows
    count = images.count() if label else stats[status or "total"]
    page = image_page(
        images=images, count=count, per_page=IMAGES_PER_PAGE, number=_natural(request.GET.get("page")) or 1,
        after=_image_id(request.GET.get("after")), before=_image_id(request.GET.get("before")),
    )
    labels = collection_labels(collection=collection, limit=LABELS_SHOWN + 1)
    return render(
        request,
        "gallery/collection_detail.html",
        {
            "collection": collection,
            "page": page,
            "stats": stats,
            "labels": [(name, _query(label=name, status=status)) for name in labels[:LABELS_SHOWN]],
            "more_labels": len(labels) > LABELS_SHOWN,
            "label": label,
            "status": status,
            # each status link keeps the label, each label link the status, the pager both
            "status_urls": {"all": _query(label=label), **{name: _query(label=label, status=name) for name in Image.Status.values}},
            "all_labels_url": _query(status=status),
            "export_query": _query(label=label, status=status) if label or status else "",
            "moves_incoming": collection_moves_incoming(collection=collection),
            **_pager_urls(page, label=label, status=status),
        },
    )


def _pager_urls(page: ImagePage, **params: str) -> dict[str, str]:
    """The links to the pages before and after ``page``, and to the first and the last page when
    they are not those (or ""), keeping ``params``. *Previous* and *next* name the image their
    page starts after (or ends before), so the database seeks to it instead of counting the pages
    before it; the first page needs neither, and the last is counted back from the end."""
    previous = next_ = first = last = ""
    if page.has_previous:
        previous = _query(**params)
        if page.number > 2:
            previous = _query(**params, page=str(page.number - 1), before=str(page.images[0].pk) if page.images else "")
            first = _query(**params)
    if page.has_next:
        next_ = _query(**params, page=str(page.number + 1), after=str(page.images[-1].pk) if page.images else "")
        if page.number < page.pages - 1:
            last = _query(**params, page=str(page.pages))  # counted back from the end
    return {"previous_url": previous, "next_url": next_, "first_url": first, "last_url": last}


@require_http_methods(["GET", "HEAD", "POST"])
def collection_copies(request, collection_id: int):
    """The collection's pictures that have copies (``collection_list_copy_groups``), in it or in
    every collection (``scope=all``), a page of groups at a time (``after``: the last image the
    previous page checked; ``seen``: how many images the pages before checked). A user who may
    delete images ticks the copies to drop and POSTs them (``delete``): each group keeps at least
    one image, and only images of the groups on the page go. Or they ask the workers to remove
    every copy in the collection (``remove=all``, ``keep``: which picture of each stays)."""
    collection = get_object_or_404(Collection, pk=collection_id)
    scope = "all" if request.GET.get("scope") == "all" else ""
    after, seen = _natural(request.GET.get("after")), _natural(request.GET.get("seen"))
    may_delete = request.user.has_perm("gallery.delete_image")
    if request.method == "POST":
        if not may_delete:
            return HttpResponseForbidden("Deleting images needs the permission to delete images.")
        if request.POST.get("remove") == "all":
            _remove_all_copies(request, collection)
        elif request.POST.get("remove") == "stop":
            _stop_removal(request, collection)
        else:
            _delete_copies(request)
        return redirect(request.get_full_path())
    found = collection_list_copy_groups(collection=collection, after=after, everywhere=bool(scope))
    stats = collection_stats(collection=collection)
    return render(
        request,
        "gallery/collection_copies.html",
        {
            "collection": collection, "found": found, "scope": scope, "may_delete": may_delete, "stats": stats,
            "removal": None if scope else collection_copy_removal_latest(collection=collection),  # shown for this collection only
            "first_checked": seen + 1, "last_checked": seen + found.checked,
            "next_url": "" if found.done else _query(scope=scope, after=str(found.checked_to), seen=str(seen + found.checked)),
            "first_url": _query(scope=scope) if after else "",
            "this_collection_url": _query(), "all_collections_url": _query(scope="all"),
        },
    )


def _image_id(value: str | None) -> int | None:
    """``value`` from the query string as an image id, else None."""
    return int(value) if value and is_image_id(value) else None


def _natural(value: str | None) -> int:
    """``value`` from the query string as a whole number, 0 for anything else."""
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _remove_all_copies(request, collection: Collection) -> None:
    keep = request.POST.get("keep", "largest")
    try:
        run = copy_removal_start(collection=collection, keep=keep)
    except ValueError:
        messages.error(request, "Nothing was removed: choose to keep the largest or the first imported picture of each.")
    except CopyRemovalUnderway:
        messages.info(request, "A removal of this collection's copies is under way already: its progress is shown below.")
    except QueueUnavailable:
        messages.error(request, "Nothing was removed: the workers cannot be reached now. Try again later.")
    else:
        messages.success(request, f"The workers are removing every copy in {collection.name}, keeping the {run.kept} picture of each.")


def _stop_removal(request, collection: Collection) -> None:
    try:
        run = copy_removal_stop(collection=collection)
    except StretchUnderway as exc:
        messages.warning(request, f"The removal goes on: {exc}.")
        return
    if run is None:
        messages.info(request, "No removal of copies was running here: it had ended. Its outcome is shown below.")
    else:
        messages.success(request, f"The removal is stopped, after {run.deleted:,} cop{'y' if run.deleted == 1 else 'ies'} deleted.")


def _delete_copies(request) -> None:
    """Deletes the images ticked in the POSTed groups (``group``: a group's image ids, comma
    separated; ``delete``: the ids ticked) that are copies of an image their group keeps, so every
    group keeps at least one picture and nothing but a copy of a kept picture goes (whatever the
    form said), and says what it did as a message."""
    ticked = {_natural(value) for value in request.POST.getlist("delete")} - {0}
    groups, refused = [], 0  # groups: (ids, the ids kept) of those with something ticked
    for group in request.POST.getlist("group")[:COPY_GROUPS_PER_POST]:
        ids = {_natural(value) for value in group.split(",")[: MAX_COPIES + 1]} - {0}
        if ids & ticked and ids <= ticked:
            refused += 1  # every picture of the group ticked: keep them all
        elif ids & ticked:
            groups.append((ids, ids - ticked))
    copy_ids = images_copy_ids(image_ids=sorted(set().union(*(kept for _, kept in groups)))) if groups else {}
    doomed = set()
    for ids, kept in groups:
        doomed |= ids & ticked & set().union(*(copy_ids.get(image_id, set()) for image_id in kept))
    deleted = images_delete(images=Image.objects.filter(pk__in=doomed)) if doomed else 0
    if deleted:
        messages.success(request, f"Deleted {deleted} cop{'y' if deleted == 1 else 'ies'}.")
    if refused:
        messages.error(
            request,
            "1 group was left as it was: every picture of it was ticked, and a group keeps at least one." if refused == 1 else
            f"{refused} groups were left as they were: every picture of each was ticked, and a group keeps at least one.",
        )
    if not deleted and not refused:
        messages.info(request, "Nothing was deleted: no copy of a picture its group keeps was ticked.")


def image_detail(request, image_id: int):
    """An image, its copies in every collection (rescaled, recompressed: ``image_list_copies``), and
    the images most similar to it, in its collection or in all (``scope``), a page of them at a
    time (``page``, up to the ranking's depth), steered by the results marked more or less like it
    (``like``, ``unlike``: relevance feedback)."""
    image = get_object_or_404(Image.objects.select_related("collection"), pk=image_id)
    within = request.GET.get("scope", "collection") == "collection"
    pages = search_selectors.MAX_DEPTH // SIMILAR_PER_PAGE
    number = _page_number(request.GET.get("page"), last=pages)
    offset = (number - 1) * SIMILAR_PER_PAGE
    hits, problem = [], ""
    marks, notice = marks_read(request.GET)
    if image.status == Image.Status.FAILED:
        problem = "This file could not be indexed (the reason is above), so it has no similar images."
    elif image.status == Image.Status.PENDING:
        problem = "This image is still being indexed; its similar images show here once it is."
    else:
        try:
            hits, marks, dropped = search_with_marks(
                lambda feedback: search_selectors.image_list_similar(
                    image=image, k=SIMILAR_PER_PAGE, offset=offset, collection_ids=[image.collection_id] if within else None,
                    feedback=feedback,
                ),
                marks,
            )
            notice = notice or dropped
        except (search_selectors.SearchUnavailable, search_selectors.ImageNotIndexed) as exc:
            problem = str(exc)
    scope = "" if within else "all"
    return render(
        request,
        "gallery/image_detail.html",
        {
            "image": image, "copies": image_list_copies(image=image).copies, "max_copies": MAX_COPIES, "hits": hits, "problem": problem, "notice": notice, "within": within, "scope": scope,
            "offset": offset, "last_rank": offset + len(hits), "feedback_form": "feedback",
            "previous_url": _query(marks, scope=scope, page=str(number - 1) if number > 2 else "") if number > 1 else "",
            "next_url": _query(marks, scope=scope, page=str(number + 1)) if len(hits) == SIMILAR_PER_PAGE and number < pages else "",
            "unmarked_url": _query(scope=scope),
            **marks_context(marks, hits),
        },
    )


def _page_number(value: str | None, *, last: int) -> int:
    """``value`` (a page's number from the query string) within 1..``last``; the first page for
    anything that is not a number."""
    try:
        return min(max(int(value), 1), last)
    except (TypeError, ValueError):
        return 1

from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from gallery.models import Collection, Image
from gallery.selectors import MAX_COPIES, collection_labels, collection_list_with_stats, collection_stats, image_list_copies
from search import selectors as search_selectors
from search.views import marks_context, marks_read, search_with_marks

IMAGES_PER_PAGE = 60
# Similar images on an image's page; "more similar" pages on to search.selectors.MAX_DEPTH.
SIMILAR_PER_PAGE = 20
# Label links listed on a collection's page; past them, a label is typed into the filter box.
LABELS_SHOWN = 300


def collection_list(request):
    return render(request, "gallery/collection_list.html", {"collections": collection_list_with_stats()})


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
    images = Image.objects.filter(collection=collection).order_by("id")
    label = request.GET.get("label", "")
    if label:
        images = images.filter(label=label)
    status = request.GET.get("status", "")
    if status in Image.Status.values:
        images = images.filter(status=status)
    else:
        status = ""
    stats = collection_stats(collection=collection)
    paginator = Paginator(images, IMAGES_PER_PAGE)
    if not label:  # the kept counts say how many there are, instead of a COUNT over the collection's rows
        paginator.count = stats[status or "total"]
    page = paginator.get_page(request.GET.get("page"))
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
            "page_query": _query(label=label, status=status)[1:],
        },
    )


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

from django.conf import settings
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from gallery.models import Collection, Image
from gallery.selectors import collection_list_with_stats, collection_stats
from search import selectors as search_selectors

IMAGES_PER_PAGE = 60


def collection_list(request):
    return render(request, "gallery/collection_list.html", {"collections": collection_list_with_stats()})


def collection_detail(request, collection_id: int):
    collection = get_object_or_404(Collection, pk=collection_id)
    images = Image.objects.filter(collection=collection).order_by("id")
    label = request.GET.get("label", "")
    if label:
        images = images.filter(label=label)
    page = Paginator(images, IMAGES_PER_PAGE).get_page(request.GET.get("page"))
    labels = (
        Image.objects.filter(collection=collection).exclude(label="").values_list("label", flat=True).distinct().order_by("label")
    )
    return render(
        request,
        "gallery/collection_detail.html",
        {
            "collection": collection,
            "page": page,
            "stats": collection_stats(collection=collection),
            "labels": list(labels),
            "label": label,
        },
    )


def image_detail(request, image_id: int):
    image = get_object_or_404(Image.objects.select_related("collection"), pk=image_id)
    k = settings.CBIR_SEARCH_DEFAULT_K * 2
    within = request.GET.get("scope", "collection") == "collection"
    hits, problem = [], ""
    try:
        hits = search_selectors.image_list_similar(image=image, k=k, collection_ids=[image.collection_id] if within else None)
    except (search_selectors.SearchUnavailable, search_selectors.ImageNotIndexed) as exc:
        problem = str(exc)
    return render(
        request,
        "gallery/image_detail.html",
        {"image": image, "hits": hits, "problem": problem, "within": within},
    )

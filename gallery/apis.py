from django.shortcuts import get_object_or_404
from rest_framework.response import Response
from rest_framework.views import APIView

from gallery.models import Collection
from gallery.selectors import collection_list_with_stats, collection_stats


def _collection_representation(collection: Collection, counts: dict) -> dict:
    return {
        "id": collection.pk,
        "name": collection.name,
        "description": collection.description,
        "images": {key: counts[key] for key in ("total", "indexed", "pending", "failed")},
    }


class CollectionListApi(APIView):
    """GET /api/collections/"""

    def get(self, request):
        return Response(
            {"results": [_collection_representation(c, vars(c)) for c in collection_list_with_stats()]}
        )


class CollectionDetailApi(APIView):
    """GET /api/collections/{id}/"""

    def get(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        return Response(_collection_representation(collection, collection_stats(collection=collection)))

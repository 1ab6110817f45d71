"""The search API: similar-to-an-indexed-image and search-by-upload."""
from __future__ import annotations

from django.conf import settings
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from gallery import imaging
from gallery.apis import CollectionRefField
from gallery.models import Image
from search import selectors


class SearchParamsSerializer(serializers.Serializer):
    k = serializers.IntegerField(min_value=1, max_value=settings.CBIR_SEARCH_MAX_K, default=settings.CBIR_SEARCH_DEFAULT_K)
    collection = CollectionRefField(required=False)


class HitOutputSerializer(serializers.Serializer):
    def to_representation(self, hit: selectors.Hit) -> dict:
        request = self.context["request"]
        return {
            **image_representation(hit.image, request),
            "distance": round(hit.distance, 6),
            "similarity": round(hit.similarity, 6),
        }


def image_representation(image: Image, request) -> dict:
    return {
        "id": image.pk,
        "collection": {"id": image.collection_id, "name": image.collection.name},
        "label": image.label,
        "original_name": image.original_name,
        "image_url": request.build_absolute_uri(image.file.url) if image.file else None,
        "thumbnail_url": request.build_absolute_uri(image.display_url) if image.file else None,
    }


def _error(message: str, code: int, **extra) -> Response:
    return Response({"error": message, **extra}, status=code)


def _ranked(request, hits, **extra) -> Response:
    return Response(
        {**extra, "count": len(hits), "results": HitOutputSerializer(hits, many=True, context={"request": request}).data}
    )


class ImageSimilarApi(APIView):
    """GET /api/images/{id}/similar/?k=10&collection=NAME_OR_ID"""

    def get(self, request, image_id: int):
        params = SearchParamsSerializer(data=request.query_params)
        if not params.is_valid():
            return Response({"error": "invalid parameters", "errors": params.errors}, status=status.HTTP_400_BAD_REQUEST)
        image = get_object_or_404(Image.objects.select_related("collection"), pk=image_id)
        collection = params.validated_data.get("collection")
        try:
            hits = selectors.image_list_similar(
                image=image, k=params.validated_data["k"], collection_ids=[collection.pk] if collection else None
            )
        except selectors.SearchUnavailable as exc:
            return _error(str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        except selectors.ImageNotIndexed as exc:
            return _error(str(exc), status.HTTP_409_CONFLICT, status=image.status)
        return _ranked(request, hits, query=image_representation(image, request))


class SearchApi(APIView):
    """POST /api/search/ (multipart: image, k, collection)"""

    class InputSerializer(SearchParamsSerializer):
        image = serializers.FileField(allow_empty_file=True)

    def post(self, request):
        params = self.InputSerializer(data=request.data)
        if not params.is_valid():
            return Response({"error": "invalid parameters", "errors": params.errors}, status=status.HTTP_400_BAD_REQUEST)
        upload = params.validated_data["image"]
        if upload.size > settings.CBIR_MAX_UPLOAD_BYTES:
            return _error(f"image: file larger than {settings.CBIR_MAX_UPLOAD_BYTES:,} bytes", status.HTTP_400_BAD_REQUEST)
        collection = params.validated_data.get("collection")
        try:
            hits = selectors.upload_list_similar(
                data=upload.read(), k=params.validated_data["k"], collection_ids=[collection.pk] if collection else None
            )
        except imaging.ImageRejected as exc:
            return Response(
                {"error": f"image: {exc}", "errors": {"image": [str(exc)]}}, status=status.HTTP_400_BAD_REQUEST
            )
        except selectors.SearchUnavailable as exc:
            return _error(str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        return _ranked(request, hits)

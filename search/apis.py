"""The search API: similar-to-an-indexed-image and search-by-upload, one selector underneath."""
from __future__ import annotations

from django.conf import settings
from django.http import QueryDict
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from gallery import imaging
from gallery.apis import (
    CollectionRefField, ErrorSerializer, ImageOutputSerializer, image_representation, invalid_parameters, lists_split,
    next_page_url,
)
from gallery.models import Image
from search import selectors


class SearchParamsSerializer(serializers.Serializer):
    k = serializers.IntegerField(
        min_value=1, max_value=settings.CBIR_SEARCH_MAX_K, default=settings.CBIR_SEARCH_DEFAULT_K,
        help_text=f"number of results (1..{settings.CBIR_SEARCH_MAX_K})",
    )
    offset = serializers.IntegerField(min_value=0, default=0, help_text="skip this many results (pagination)")
    collection = serializers.ListField(
        child=CollectionRefField(), required=False, default=list,
        help_text="restrict to these collections (id or name; repeat the parameter or separate with commas)",
    )
    label = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)
    min_similarity = serializers.FloatField(required=False, min_value=-1.0, max_value=1.0, default=None, allow_null=True)
    exact = serializers.BooleanField(
        required=False, default=None, allow_null=True,
        help_text="true: exhaustive scan (ground truth, slower); default: the HNSW index, or an exhaustive scan "
        "when the collection and label filters leave few candidates",
    )
    exclude = serializers.BooleanField(
        required=False, default=None, allow_null=True,
        help_text="leave out exact (byte-identical) duplicates of the query; "
        "default true for /similar/ (the query image itself is always left out), false for uploads",
    )
    expand = serializers.IntegerField(
        required=False, default=None, allow_null=True, min_value=0, max_value=selectors.MAX_QUERY_EXPANSION,
        help_text=f"query expansion: rank by the query plus its this-many nearest images (0 = off; "
        f"default {settings.CBIR_QUERY_EXPANSION})",
    )

    like = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False, default=list,
        max_length=selectors.MAX_FEEDBACK_IMAGES,
        help_text="relevance feedback: ids of images marked 'more like this' (repeat the parameter or separate "
        "with commas); the query is moved toward them",
    )
    unlike = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False, default=list,
        max_length=selectors.MAX_FEEDBACK_IMAGES,
        help_text="relevance feedback: ids of images marked 'less like this'; the query is moved away from them",
    )

    LISTS = ("collection", "like", "unlike")  # may repeat and may hold commas

    def to_internal_value(self, data):
        return super().to_internal_value(lists_split(data, self.LISTS))

    def validate(self, attrs):
        if attrs["offset"] + attrs["k"] > selectors.MAX_DEPTH:
            raise serializers.ValidationError({"offset": [f"offset + k may not exceed {selectors.MAX_DEPTH}"]})
        return attrs

    def filters(self) -> selectors.SearchFilters:
        data = self.validated_data
        return selectors.SearchFilters(
            collection_ids=tuple(c.pk for c in data["collection"]),
            label=data["label"],
            min_similarity=data["min_similarity"],
            exact=data["exact"],
        )

    def feedback(self) -> selectors.Feedback:
        data = self.validated_data
        return selectors.Feedback(liked=tuple(data["like"]), disliked=tuple(data["unlike"]))


class HitOutputSerializer(ImageOutputSerializer):
    distance = serializers.FloatField(
        help_text="cosine distance to the query, 0 = same direction, 2 = opposite; results come nearest first "
        "(with query expansion the expanded query picks which images make the page)"
    )
    similarity = serializers.FloatField(help_text="1 - distance (cosine similarity)")


class RankedOutputSerializer(serializers.Serializer):
    encoder = serializers.IntegerField(help_text="id of the encoder version whose vectors were ranked")
    count = serializers.IntegerField(help_text="number of results in this page")
    next = serializers.URLField(allow_null=True, help_text="the next page, or null when this one is not full")
    query = ImageOutputSerializer(required=False, help_text="the query image (/similar/ only)")
    results = HitOutputSerializer(many=True)


SEARCH_PARAMETERS = [
    OpenApiParameter("k", int, description=f"results per page, 1..{settings.CBIR_SEARCH_MAX_K}, default {settings.CBIR_SEARCH_DEFAULT_K}"),
    OpenApiParameter("offset", int, description="results to skip (pagination); offset + k <= 1000"),
    OpenApiParameter("collection", str, many=True, explode=True, description="collection id or name; repeatable"),
    OpenApiParameter("label", str, description="only images with this label"),
    OpenApiParameter("min_similarity", float, description="only results at least this similar (-1..1)"),
    OpenApiParameter("exact", bool, description="true: exhaustive scan instead of the HNSW index (ground truth)"),
    OpenApiParameter(
        "expand", int,
        description=f"query expansion, 0..{selectors.MAX_QUERY_EXPANSION}: rank by the query plus its this-many nearest "
        f"images, each weighted by its similarity cubed; distances stay those to the query. 0 = plain nearest "
        f"neighbours; default {settings.CBIR_QUERY_EXPANSION}",
    ),
    OpenApiParameter("like", int, many=True, explode=True, description="relevance feedback: images marked 'more like this'; repeatable"),
    OpenApiParameter("unlike", int, many=True, explode=True, description="relevance feedback: images marked 'less like this'; repeatable"),
    OpenApiParameter("exclude", bool, description="leave out byte-identical duplicates of the query (default true here)"),
]
ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid parameters; `errors` names each one"),
    503: OpenApiResponse(ErrorSerializer, description="no active encoder yet"),
}


def _bad_parameter(field: str, message: str) -> Response:
    return Response({"error": f"{field}: {message}", "errors": {field: [message]}}, status=status.HTTP_400_BAD_REQUEST)


def _ranked(request, hits, params, encoder_id: int, **extra) -> Response:
    data = params.validated_data
    next_url = None
    if len(hits) == data["k"] and data["offset"] + 2 * data["k"] <= selectors.MAX_DEPTH:
        next_url = next_page_url(request, offset=data["offset"] + data["k"], k=data["k"])
    results = [
        {**image_representation(hit.image, request), "distance": round(hit.distance, 6), "similarity": round(hit.similarity, 6)}
        for hit in hits
    ]
    return Response({"encoder": encoder_id, "count": len(hits), "next": next_url, **extra, "results": results})


class ImageSimilarApi(APIView):
    @extend_schema(
        operation_id="image_similar",
        summary="Images most similar to an indexed image",
        parameters=SEARCH_PARAMETERS,
        responses={
            200: RankedOutputSerializer,
            **ERRORS,
            404: OpenApiResponse(ErrorSerializer, description="no such image"),
            409: OpenApiResponse(ErrorSerializer, description="the image is not indexed (pending or failed)"),
        },
    )
    def get(self, request, image_id: int):
        params = SearchParamsSerializer(data=request.query_params)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        image = get_object_or_404(Image.objects.select_related("collection"), pk=image_id)
        data = params.validated_data
        try:
            encoder = selectors.encoder_active()
            hits = selectors.image_list_similar(
                image=image, k=data["k"], offset=data["offset"], filters=params.filters(),
                exclude_duplicates=data["exclude"] is not False, encoder=encoder, expand=data["expand"],
                feedback=params.feedback(),
            )
        except selectors.FeedbackInvalid as exc:
            return _bad_parameter(exc.field, str(exc))
        except selectors.SearchUnavailable as exc:
            return Response({"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        except selectors.ImageNotIndexed as exc:
            return Response({"error": str(exc), "status": image.status}, status=status.HTTP_409_CONFLICT)
        return _ranked(request, hits, params, encoder.pk, query=image_representation(image, request))


def _form_and_query(request) -> QueryDict:
    """The form fields (the upload among them), with any parameter in the query string replacing
    the form's: the ``next`` link of an upload search carries offset and k there. Built anew
    rather than copied, since a copy of ``request.data`` would deep-copy the uploaded file."""
    merged = QueryDict(mutable=True)
    form = request.data.lists() if hasattr(request.data, "lists") else ((key, [value]) for key, value in request.data.items())
    query = ((key, values) for key, values in request.query_params.lists() if key != "image")  # the upload is a file
    for key, values in [*form, *query]:
        merged.setlist(key, values)
    return merged


class SearchUploadInputSerializer(SearchParamsSerializer):
    image = serializers.FileField(allow_empty_file=True, help_text="the query picture")
    region = serializers.CharField(
        required=False, default=None, allow_null=True, max_length=200,
        help_text=f"search with a part of the picture: {imaging.REGION_FORMAT}; "
        f"at least {imaging.MIN_REGION_SIDE_PX} of its pixels each way",
    )

    def validate_region(self, value):
        if not value:
            return None
        try:
            return imaging.region_parse(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class SearchApi(APIView):
    InputSerializer = SearchUploadInputSerializer
    # the query is a file: a JSON body cannot carry one, and gets a 415 that says so
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="search_by_upload",
        summary="Images most similar to an uploaded picture",
        description="The search parameters may be form fields or in the query string; where both give one, the "
        "query string wins. So the next page is the same upload posted to the `next` URL.",
        parameters=[
            *SEARCH_PARAMETERS[:-1],
            OpenApiParameter("exclude", bool, description="leave out byte-identical duplicates of the query (default false here)"),
        ],
        request={"multipart/form-data": InputSerializer},
        responses={200: RankedOutputSerializer, **ERRORS},
    )
    def post(self, request):
        params = self.InputSerializer(data=_form_and_query(request))
        if not params.is_valid():
            return invalid_parameters(params.errors)
        data = params.validated_data
        upload = data["image"]
        if upload.size > settings.CBIR_MAX_UPLOAD_BYTES:
            return _bad_parameter("image", f"file larger than {settings.CBIR_MAX_UPLOAD_BYTES:,} bytes")
        try:
            encoder = selectors.encoder_active()
            hits = selectors.upload_list_similar(
                data=upload.read(), k=data["k"], offset=data["offset"], filters=params.filters(),
                exclude_duplicates=bool(data["exclude"]), encoder=encoder, expand=data["expand"], region=data["region"],
                feedback=params.feedback(),
            )
        except selectors.FeedbackInvalid as exc:
            return _bad_parameter(exc.field, str(exc))
        except imaging.RegionTooSmall as exc:
            return _bad_parameter("region", str(exc))
        except imaging.ImageRejected as exc:
            return _bad_parameter("image", str(exc))
        except selectors.SearchUnavailable as exc:
            return Response({"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return _ranked(request, hits, params, encoder.pk)

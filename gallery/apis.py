from django.conf import settings
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from cbir_site.access import RememberingBasicAuthentication
from gallery.export import EXPORT_IMAGES_MAX, EXPORT_MANIFEST, ExportsBusy, collection_export_response, images_export_response
from gallery.media import MediaStorageUnavailable
from gallery.models import Collection, CopyRemovalRun, Image, MoveRun, validate_one_line_label
from gallery.selectors import (
    COPY_CHECKS_PER_PAGE,
    COPY_GROUPS_PER_PAGE,
    COPY_KEEP_RULES,
    COPY_MIN_SIMILARITY,
    COVER_IMAGES,
    collection_copy_removal_latest,
    collection_covers,
    collection_images,
    collection_list_copy_groups,
    collection_list_with_covers,
    collection_moves_incoming,
    collection_stats,
    image_list,
    image_list_copies,
    move_run_list,
)
from gallery.services import (
    MOVE_IMAGES_MAX,
    MOVE_RUN_IMAGES_MAX,
    CollectionGone,
    CopyRemovalUnderway,
    DuplicateInCollection,
    ImportReport,
    MoveTargetGone,
    QueueUnavailable,
    StorageFailed,
    StretchUnderway,
    collection_delete,
    copy_removal_start,
    copy_removal_stop,
    image_update,
    images_create,
    images_delete,
    images_move,
    images_move_start,
    move_run_stop,
    uploads_to_incoming,
)


# How a staff user proves it where a call needs one: an API token or HTTP Basic auth (API clients),
# or the admin's session (with its CSRF token).
STAFF_AUTHENTICATION = [TokenAuthentication, RememberingBasicAuthentication, SessionAuthentication]


class StaffOnlyApi(APIView):
    """A call only a staff user may make (a token, HTTP Basic, or the admin's session)."""

    authentication_classes = STAFF_AUTHENTICATION
    permission_classes = [IsAdminUser]


class StaffMayChange:
    """Reading stays open like the rest of the API; DELETE and PATCH need a staff user."""

    authentication_classes = STAFF_AUTHENTICATION

    def get_permissions(self):
        return [IsAdminUser()] if self.request.method in ("DELETE", "PATCH") else [AllowAny()]


def next_page_url(request, **overrides) -> str:
    """This request's absolute URL with ``overrides`` in its query string: the ``next`` link of a
    paged answer."""
    query = request.GET.copy()
    for key, value in overrides.items():
        query[key] = value
    return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")


class CollectionRefField(serializers.CharField):
    """A collection given by id or by name."""

    def run_validation(self, data=serializers.empty):
        # After CharField's own checks, not in to_internal_value, which runs before its validators:
        # one of them refuses NUL characters, which PostgreSQL cannot take in a query.
        value = super().run_validation(data)
        # "²" is a digit to str.isdigit() but not to int(); past 19 digits no id fits (and past 4,300
        # int() refuses the string), so such a string can only be a name.
        is_id = value.isascii() and value.isdigit() and len(value) <= 19
        lookup = {"pk": int(value)} if is_id else {"name": value}
        collection = Collection.objects.filter(**lookup).first()
        if collection is None:
            raise serializers.ValidationError(f"no collection {value!r}")
        return collection


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="what went wrong, for a person")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="per-parameter messages, keyed by the parameter's name",
    )
    status = serializers.CharField(required=False, help_text="the image's status (409 only)")


def invalid_parameters(errors) -> Response:
    """The 400 for bad parameters: ``errors`` names each one, as a serializer's errors do."""
    return Response({"error": "invalid parameters", "errors": errors}, status=status.HTTP_400_BAD_REQUEST)


def lists_split(data, names: tuple[str, ...]):
    """``data`` for a serializer, with each parameter of ``names`` a list: repeated, or separated
    by commas, or both (``like=1&like=2,3``). A QueryDict (a query string or a form) is read so; a
    JSON body already holds lists and is returned as it is."""
    if not hasattr(data, "getlist"):
        return data
    lists = {}
    for name in names:
        parts = []
        for value in data.getlist(name):
            if isinstance(value, str):
                parts.extend(part for part in value.split(",") if part.strip())
            else:  # a file posted under the name: kept whole, for the field to refuse
                parts.append(value)
        lists[name] = parts
    return {key: data.get(key) for key in data} | lists


# What a GET of one collection's listing answers besides its 200.
COLLECTION_LISTING_ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="a bad parameter"),
    404: OpenApiResponse(ErrorSerializer, description="no such collection"),
}


class CollectionRefOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class ImageOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    collection = CollectionRefOutputSerializer()
    label = serializers.CharField(allow_blank=True)
    original_name = serializers.CharField()
    image_url = serializers.URLField(allow_null=True)
    thumbnail_url = serializers.URLField(allow_null=True, help_text="256 px WebP once a worker made it, else null (results never send originals)")


def image_representation(image, request) -> dict:
    return {
        "id": image.pk,
        "collection": {"id": image.collection_id, "name": image.collection.name},
        "label": image.label,
        "original_name": image.original_name,
        "image_url": request.build_absolute_uri(image.file.url) if image.file else None,
        "thumbnail_url": request.build_absolute_uri(image.display_url) if image.display_url else None,
    }


class ImageCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    indexed = serializers.IntegerField()
    pending = serializers.IntegerField()
    failed = serializers.IntegerField()


class CollectionOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    images = ImageCountsSerializer()


class MovesIncomingSerializer(serializers.Serializer):
    runs = serializers.IntegerField(help_text="moves running into this collection")
    total = serializers.IntegerField(help_text="ids they were given, in all")
    position = serializers.IntegerField(help_text="ids checked so far")
    moved = serializers.IntegerField(help_text="images moved here so far")


class CoverOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    thumbnail_url = serializers.URLField()


def _covers_field() -> CoverOutputSerializer:
    return CoverOutputSerializer(
        many=True, help_text=f"its most recently indexed pictures (up to {COVER_IMAGES}, the newest first), as the front page shows them"
    )


class CollectionDetailOutputSerializer(CollectionOutputSerializer):
    indexed_per_second = serializers.FloatField(
        help_text="images indexed per second over the last minute, or since indexing began when that was less than a minute ago"
    )
    moves_incoming = MovesIncomingSerializer(
        allow_null=True, help_text="the moves of many images into this collection that the workers are doing, summed; null if none"
    )
    covers = _covers_field()


class CollectionListItemOutputSerializer(CollectionOutputSerializer):
    covers = _covers_field()


class CollectionListOutputSerializer(serializers.Serializer):
    results = CollectionListItemOutputSerializer(many=True)


class UploadResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.ChoiceField(["pending", "failed", "duplicate", "skipped"])
    id = serializers.IntegerField(required=False)
    error = serializers.CharField(required=False, allow_blank=True)
    duplicate_of = serializers.IntegerField(required=False)


class UploadOutputSerializer(serializers.Serializer):
    collection = CollectionRefOutputSerializer()
    stored = serializers.IntegerField()
    failed = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    skipped = serializers.IntegerField()
    results = UploadResultSerializer(many=True)


def _collection_representation(collection: Collection, counts: dict) -> dict:
    return {
        "id": collection.pk,
        "name": collection.name,
        "description": collection.description,
        "images": {key: counts[key] for key in ("total", "indexed", "pending", "failed")},
    }


def _covers_representation(request, covers: list[Image]) -> list[dict]:
    return [{"id": image.pk, "thumbnail_url": request.build_absolute_uri(image.display_url)} for image in covers]


class CollectionListApi(APIView):
    @extend_schema(operation_id="collection_list", summary="Collections with image counts", responses={200: CollectionListOutputSerializer})
    def get(self, request):
        return Response({"results": [
            {**_collection_representation(c, vars(c)), "covers": _covers_representation(request, c.covers)}
            for c in collection_list_with_covers()
        ]})


def _staff_refusals(thing: str) -> dict:
    """The refusals of a staff-only call on a ``thing``, for the schema."""
    return {
        401: OpenApiResponse(ErrorSerializer, description="no credentials"),
        403: OpenApiResponse(ErrorSerializer, description="not a staff user"),
        404: OpenApiResponse(ErrorSerializer, description=f"no such {thing}"),
    }


def _delete_responses(thing: str) -> dict:
    """The answers of a staff-only DELETE, for the schema."""
    return {204: None, **_staff_refusals(thing)}


class CollectionDetailApi(StaffMayChange, APIView):
    @extend_schema(
        operation_id="collection_delete",
        summary="Delete a collection with its images, their vectors and their files (staff only)",
        responses=_delete_responses("collection"),
    )
    def delete(self, request, collection_id: int):
        collection_delete(collection=get_object_or_404(Collection, pk=collection_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="collection_detail",
        summary="A collection's counts by status and its indexing rate",
        responses={200: CollectionDetailOutputSerializer, 404: OpenApiResponse(ErrorSerializer, description="no such collection")},
    )
    def get(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        stats = collection_stats(collection=collection)
        return Response(
            {
                **_collection_representation(collection, stats),
                "indexed_per_second": stats["indexed_per_second"],
                "moves_incoming": collection_moves_incoming(collection=collection),
                "covers": _covers_representation(request, collection_covers(collections=[collection])[collection.pk]),
            }
        )


class _ErrorsAsJson(DefaultContentNegotiation):
    """The zip is not a rendering of data, so a client's Accept does not pick a renderer: a refusal
    is JSON whatever it asked for (DRF would answer ``Accept: application/zip`` with a 406). A body
    is parsed by its Content-Type, as anywhere else."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ImageFilterInputSerializer(serializers.Serializer):
    """What narrows a collection's images, in the image list and the export alike."""

    status = serializers.ChoiceField(choices=Image.Status.values, required=False, help_text="only images with this status")
    label = serializers.CharField(required=False, allow_blank=True, help_text="only images with this label")


# How long a client is told to wait while every download slot is taken.
EXPORT_RETRY_AFTER_S = 60


class _ZipDownloadApi(StaffOnlyApi):
    """A zip download for staff, whose refusals are JSON (``_zip_answer`` makes the download)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = _ErrorsAsJson


class CollectionExportApi(_ZipDownloadApi):
    """GET /api/collections/{id}/export/: the collection's original files as a zip (staff only)."""

    @extend_schema(
        operation_id="collection_export",
        summary="Download a collection's original files as a zip (staff only)",
        description=(
            "The files as they were uploaded, unchanged: each labelled image in a folder named after its label, each "
            f"unlabelled one at the top, and `{EXPORT_MANIFEST}` last (every image: its path in the archive, id, "
            "original name, label, SHA-256, size, status, and why it failed or is not in the archive). "
            "`import_images ARCHIVE --labels-from-dirs` imports it again with the same labels. The archive is sent as "
            "it is written, so it has no Content-Length. `label` and `status` narrow it as they narrow the image list."
        ),
        parameters=[ImageFilterInputSerializer],
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="the zip archive"),
            400: OpenApiResponse(ErrorSerializer, description="an unknown status"),
            **_staff_refusals("collection"),
            503: OpenApiResponse(
                ErrorSerializer,
                description="media storage is not mounted on this web server, or CBIR_MAX_EXPORTS downloads are running "
                "already (with Retry-After)",
            ),
        },
    )
    def get(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        params = ImageFilterInputSerializer(data=request.query_params)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        label, status_asked = params.validated_data.get("label", ""), params.validated_data.get("status", "")
        return _zip_answer(lambda: collection_export_response(collection, label=label, status=status_asked))


def _zip_answer(build) -> Response | StreamingHttpResponse:
    """The zip download ``build()`` makes, or a 503 where media storage is not mounted or every
    download slot is taken. Download managers ask HEAD first: they get the headers, without an
    archive being written that nobody reads (``cbir_site.head`` leaves the generator unstarted)."""
    try:
        return build()
    except MediaStorageUnavailable as exc:
        return Response({"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    except ExportsBusy as exc:
        return Response(
            {"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(EXPORT_RETRY_AFTER_S)}
        )


class ImagesExportInputSerializer(serializers.Serializer):
    images = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), min_length=1, max_length=EXPORT_IMAGES_MAX,
        help_text=f"ids of the images (repeat the parameter or separate with commas), at most {EXPORT_IMAGES_MAX:,}",
    )
    name = serializers.CharField(
        required=False, default="images", max_length=100, help_text="the archive's file name, without .zip (made safe)"
    )
    order = serializers.ChoiceField(
        choices=["label", "given"], required=False, default="label",
        help_text="`label`: a folder per label, as a collection's export; `given`: the ids' order, every file at the top, "
        "its name after its place (`01 `, `02 `...), the labels in the manifest (a page of search results, ranked)",
    )

    def to_internal_value(self, data):
        return super().to_internal_value(lists_split(data, ("images",)))


class ImagesExportApi(_ZipDownloadApi):
    """GET or POST /api/images/export/: chosen images' original files as a zip (staff only)."""

    @extend_schema(
        operation_id="images_export",
        summary="Download chosen images' original files as a zip (staff only)",
        description=(
            "Any images, from any collections (a page of search results, say), laid out as a collection's export is: "
            f"a folder per label and `{EXPORT_MANIFEST}`; or, with `order=given`, in the ids' order, each file's name "
            "after its place. An id with no image is left out. GET takes the ids in the query string (as the search "
            "pages' links send them), POST as form fields or JSON (many more ids)."
        ),
        parameters=[ImagesExportInputSerializer],
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="the zip archive"),
            400: OpenApiResponse(ErrorSerializer, description="no ids, too many, or one that is not an id"),
            **_staff_refusals("image among those ids"),
            503: OpenApiResponse(ErrorSerializer, description="media storage not mounted, or every download slot taken"),
        },
    )
    def get(self, request):
        return self._export(request, request.query_params)

    @extend_schema(operation_id="images_export_post", request=ImagesExportInputSerializer, responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def post(self, request):
        return self._export(request, request.data)

    def _export(self, request, data):
        params = ImagesExportInputSerializer(data=data)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        asked, name = params.validated_data["images"], params.validated_data["name"]
        images = Image.objects.filter(pk__in=asked)
        if not images.exists():
            return Response({"error": "none of these images exists"}, status=status.HTTP_404_NOT_FOUND)
        if params.validated_data["order"] == "given":
            return _zip_answer(lambda: images_export_response(ranked=asked, name=name))
        return _zip_answer(lambda: images_export_response(images, name=name))


class ImageUploadInputSerializer(serializers.Serializer):
    collection = CollectionRefField(help_text="collection id or name")
    label = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    labels_from_dirs = serializers.BooleanField(required=False, default=False)
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), help_text="one or more images or .zip archives")


class ImageUploadApi(APIView):
    """POST /api/images/ (multipart: files (one or many; .zip archives are expanded), collection,
    label, labels_from_dirs). Answers 202 with one result per file: stored (pending, then indexed
    by the workers), failed with a reason, duplicate of an existing image, or skipped. Open to
    anyone unless CBIR_API_OPEN_UPLOADS is off; then for staff users only."""

    InputSerializer = ImageUploadInputSerializer
    authentication_classes = STAFF_AUTHENTICATION

    def get_permissions(self):
        return [AllowAny()] if settings.CBIR_API_OPEN_UPLOADS else [IsAdminUser()]

    @extend_schema(
        operation_id="image_upload",
        summary="Upload one or many images (or .zip archives) into a collection",
        request={"multipart/form-data": InputSerializer},
        responses={
            202: UploadOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="invalid parameters"),
            401: OpenApiResponse(ErrorSerializer, description="no credentials, where uploads need a staff user"),
            403: OpenApiResponse(ErrorSerializer, description="not a staff user, where uploads need one"),
            409: OpenApiResponse(ErrorSerializer, description="the collection was deleted during the upload"),
            503: OpenApiResponse(description="media storage refused a file (e.g. a full disk): what was stored before it stays, listed in results"),
        },
    )
    def post(self, request):
        params = self.InputSerializer(data=request.data)
        files = request.FILES.getlist("files")
        errors = dict(params.errors) if not params.is_valid() else {}
        if not files:
            errors["files"] = ["upload one or more files in the multipart field 'files'"]
        if errors:
            return invalid_parameters(errors)
        collection = params.validated_data["collection"]
        report = ImportReport()
        incoming = uploads_to_incoming(
            files,
            label=params.validated_data["label"],
            labels_from_dirs=params.validated_data["labels_from_dirs"],
            report=report,
        )
        try:
            report.merge(images_create(collection=collection, files=incoming))
        except CollectionGone as gone:
            return Response({"error": str(gone)}, status=status.HTTP_409_CONFLICT)
        except StorageFailed as failed:  # what was stored before stays, and is listed
            return Response({"error": str(failed), "results": failed.report.results}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        results = report.results + [{"name": name, "status": "skipped", "error": reason} for name, reason in report.skipped]
        return Response(
            {
                "collection": {"id": collection.pk, "name": collection.name},
                "stored": report.queued,
                "failed": len(report.failed),
                "duplicates": len(report.duplicates),
                "skipped": len(report.skipped),
                "results": results,
            },
            status=status.HTTP_202_ACCEPTED,
        )


class ImageDetailOutputSerializer(ImageOutputSerializer):
    status = serializers.ChoiceField(choices=Image.Status.choices)
    error = serializers.CharField(
        allow_blank=True, help_text="why indexing failed (status failed), or why the last try stopped (pending: tried again)"
    )
    width = serializers.IntegerField(allow_null=True, help_text="the original's width as shown (after its EXIF orientation)")
    height = serializers.IntegerField(allow_null=True, help_text="the original's height as shown (after its EXIF orientation)")


def image_detail_representation(image: Image, request) -> dict:
    return {**image_representation(image, request), "status": image.status, "error": image.error, "width": image.width, "height": image.height}


class ImageUpdateInputSerializer(serializers.Serializer):
    collection = CollectionRefField(required=False, help_text="collection id or name to move the image to")
    label = serializers.CharField(required=False, allow_blank=True, max_length=200, validators=[validate_one_line_label])

    def validate(self, data):
        if not data:
            raise serializers.ValidationError("give a collection to move the image to, a label, or both")
        return data


class ImageDuplicateSerializer(ErrorSerializer):
    duplicate_of = serializers.IntegerField(help_text="the image of that collection with the same file")


class ImageDetailApi(StaffMayChange, APIView):
    @extend_schema(
        operation_id="image_detail",
        summary="One image: its URLs, label, status and, if it failed, why",
        responses={200: ImageDetailOutputSerializer, 404: OpenApiResponse(ErrorSerializer, description="no such image")},
    )
    def get(self, request, image_id: int):
        image = get_object_or_404(Image.objects.select_related("collection"), pk=image_id)
        return Response(image_detail_representation(image, request))

    @extend_schema(
        operation_id="image_delete",
        summary="Delete an image, its vectors and its files (staff only)",
        responses=_delete_responses("image"),
    )
    def delete(self, request, image_id: int):
        if not images_delete(images=Image.objects.filter(pk=image_id)):
            return Response({"error": f"no image {image_id}"}, status=status.HTTP_404_NOT_FOUND)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="image_update",
        summary="Move an image to another collection and/or relabel it (staff only)",
        description=(
            "The image keeps its status and vectors and is found under its new collection at once. A collection "
            "that holds the same file already is a 409 naming that image (`duplicate_of`); nothing changes then."
        ),
        request=ImageUpdateInputSerializer,
        responses={
            200: ImageDetailOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="no field to change, an unknown collection or a bad label"),
            409: OpenApiResponse(ImageDuplicateSerializer, description="the collection holds the same file already"),
            **_staff_refusals("image"),
        },
    )
    def patch(self, request, image_id: int):
        image = get_object_or_404(Image, pk=image_id)
        params = ImageUpdateInputSerializer(data=request.data)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        try:
            image = image_update(image=image, **params.validated_data)
        except DuplicateInCollection as exc:
            return Response({"error": str(exc), "duplicate_of": exc.held}, status=status.HTTP_409_CONFLICT)
        except MoveTargetGone as exc:
            return invalid_parameters({"collection": [str(exc)]})
        except Image.DoesNotExist:
            return Response({"error": f"no image {image_id}"}, status=status.HTTP_404_NOT_FOUND)
        return Response(image_detail_representation(image, request))


class ImagesMoveInputSerializer(serializers.Serializer):
    collection = CollectionRefField(help_text="collection id or name to move the images to")
    images = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), min_length=1, max_length=MOVE_RUN_IMAGES_MAX,
        required=False,
        help_text=f"ids of the images to move, at most {MOVE_RUN_IMAGES_MAX:,}; past {MOVE_IMAGES_MAX:,} the workers move them",
    )
    from_collection = CollectionRefField(
        required=False,
        help_text="instead of `images`: every image of this collection (id or name), or those `label` and `status` "
        "leave, as the admin's \"select all\" under a filter; any number (past "
        f"{MOVE_IMAGES_MAX:,} the workers move them)",
    )
    label = serializers.CharField(required=False, max_length=200, help_text="with `from_collection`: only the images with this label")
    status = serializers.ChoiceField(
        choices=Image.Status.choices, required=False, help_text="with `from_collection`: only the images with this status"
    )

    def validate(self, data):
        if ("images" in data) == ("from_collection" in data):
            raise serializers.ValidationError({"images": ["give either `images` (ids) or `from_collection` (and, to narrow it, `label`, `status`)"]})
        for narrowing in ("label", "status"):
            if narrowing in data and "from_collection" not in data:
                raise serializers.ValidationError({narrowing: ["narrows `from_collection`, which is not given"]})
        return data


class MoveDuplicateSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    duplicate_of = serializers.IntegerField(help_text="the image of that collection with the same file")


class ImagesMoveOutputSerializer(serializers.Serializer):
    collection = CollectionRefOutputSerializer()
    moved = serializers.ListField(child=serializers.IntegerField())
    duplicates = MoveDuplicateSerializer(many=True, help_text="stayed where they were: the collection holds the same file")
    already = serializers.ListField(child=serializers.IntegerField(), help_text="were in the collection already")
    missing = serializers.ListField(child=serializers.IntegerField(), help_text="no such image (deleted, or never there)")


class MoveRunOutputSerializer(serializers.ModelSerializer):
    collection = CollectionRefOutputSerializer(source="to", help_text="where the images go")
    status = serializers.ChoiceField(
        choices=MoveRun.Status.choices,
        help_text="running; done; failed (a stretch of images stopped its worker again and again: see `error`); or stopped (by a person)",
    )
    total = serializers.IntegerField(help_text="ids the move was given")
    position = serializers.IntegerField(help_text="ids checked so far (the workers take them in id order)")
    moved = serializers.IntegerField(help_text="images moved so far")
    duplicates = MoveDuplicateSerializer(many=True, source="duplicates_listed", help_text="stayed where they were: the collection holds the same file")
    already = serializers.IntegerField(help_text="were in the collection already")
    missing = serializers.IntegerField(help_text="no such image when their stretch came (deleted, or never there)")
    error = serializers.CharField(help_text="why the last try of a stretch failed, or why the move stopped; empty if none")

    class Meta:
        model = MoveRun
        fields = ["id", "collection", "status", "total", "position", "moved", "duplicates", "already", "missing", "error",
                  "started_at", "progress_at", "finished_at"]


class ImagesMoveApi(StaffOnlyApi):
    """POST /api/images/move/: many images to another collection in one call (staff only)."""

    @extend_schema(
        operation_id="images_move",
        summary="Move many images to another collection (staff only)",
        description=(
            "As the admin's action does: the images keep their labels, status and vectors and are found under the "
            "collection at once. An image whose file the collection holds already (or that repeats another of the "
            "call) stays where it was, listed in `duplicates`. The images are given by `images` (ids), or by "
            "`from_collection` with an optional `label` and `status` (every image they leave, as the admin's "
            "\"select all\" under a filter, whatever their number)."
        ),
        request=ImagesMoveInputSerializer,
        responses={
            200: ImagesMoveOutputSerializer,
            202: OpenApiResponse(MoveRunOutputSerializer, description=f"more than {MOVE_IMAGES_MAX:,} ids: the workers move them; follow `Location`"),
            400: OpenApiResponse(
                ErrorSerializer,
                description="no images, too many, an id that is not one, an unknown collection, or both `images` and `from_collection`",
            ),
            401: OpenApiResponse(ErrorSerializer, description="no credentials"),
            403: OpenApiResponse(ErrorSerializer, description="not a staff user"),
            503: OpenApiResponse(ErrorSerializer, description="more than one request moves, and the workers' queue cannot be reached"),
        },
    )
    def post(self, request):
        params = ImagesMoveInputSerializer(data=request.data)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        collection, asked = params.validated_data["collection"], params.validated_data.get("images")
        if asked is None:  # a collection's images, as a filter leaves them: their ids now
            source = params.validated_data["from_collection"]
            picked = collection_images(
                collection=source, label=params.validated_data.get("label", ""), status=params.validated_data.get("status", "")
            )
            asked = list(picked.order_by("pk").values_list("pk", flat=True))
        if len(set(asked)) > MOVE_IMAGES_MAX:
            try:
                run = images_move_start(image_ids=asked, to=collection)
            except QueueUnavailable as exc:
                return Response({"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
            return Response(
                MoveRunOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED,
                headers={"Location": reverse("api-move-run", args=[run.pk])},
            )
        try:
            moved = images_move(images=Image.objects.filter(pk__in=asked), to=collection)
        except MoveTargetGone as exc:
            return invalid_parameters({"collection": [str(exc)]})
        found = {*moved.moved, *moved.already, *(image_id for image_id, _ in moved.duplicates)}
        return Response(
            {
                "collection": {"id": collection.pk, "name": collection.name},
                "moved": moved.moved,
                "duplicates": [{"id": image_id, "duplicate_of": held} for image_id, held in moved.duplicates],
                "already": moved.already,
                "missing": sorted(set(asked) - found),
            }
        )


# What stopping a run of the workers (a move, a copy removal) waits for, for the schema.
_STOP_WAITS = (
    "The stretch of images a worker is on finishes first (the answer waits for it, up to CBIR_STOP_WAIT_S, 30 s by "
    "default), and no other starts. "
)
# A stop refused because the stretch under way outlasted CBIR_STOP_WAIT_S: when to ask again.
STOP_RETRY_AFTER_S = 10
_STOP_BUSY = OpenApiResponse(
    ErrorSerializer,
    description="the stretch a worker is on did not finish within CBIR_STOP_WAIT_S; nothing was stopped (with Retry-After)",
)


def _stop_busy(exc: StretchUnderway) -> Response:
    return Response({"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(STOP_RETRY_AFTER_S)})


# How a move that is not running ended, in words.
_MOVE_ENDED = {"done": "it is done", "failed": "it failed", "stopped": "it was stopped"}


class MoveRunNotRunningSerializer(serializers.Serializer):
    error = serializers.CharField()
    move = MoveRunOutputSerializer(help_text="the move, as it ended")


MOVE_PAGE_MAX = 100


class MoveRunListInputSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=MoveRun.Status.choices, required=False, help_text="only the moves in this status")
    before = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1, help_text="only moves with a smaller id (the `next` link sets it)")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MOVE_PAGE_MAX, default=20)


class MoveRunSummarySerializer(MoveRunOutputSerializer):
    duplicates = serializers.IntegerField(source="duplicates_count", help_text="how many stayed where they were (GET the move lists them)")


class MoveRunListOutputSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="the next page (older moves), while this one is full")
    results = MoveRunSummarySerializer(many=True)


class MoveRunListApi(StaffOnlyApi):
    """GET /api/moves/: the moves of many images, the newest first (staff only)."""

    @extend_schema(
        operation_id="move_run_list",
        summary="Moves of many images, the newest first (staff only)",
        description="Each move as `GET /api/moves/{id}/` gives it, but with how many images stayed (`duplicates`) instead of the list.",
        parameters=[MoveRunListInputSerializer],
        responses={
            200: MoveRunListOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="a parameter that is not one"),
            401: OpenApiResponse(ErrorSerializer, description="no credentials"),
            403: OpenApiResponse(ErrorSerializer, description="not a staff user"),
        },
    )
    def get(self, request):
        params = MoveRunListInputSerializer(data=request.query_params)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        limit = params.validated_data["limit"]
        runs = move_run_list(status=params.validated_data.get("status", ""), before=params.validated_data.get("before", 0), limit=limit)
        next_url = next_page_url(request, before=runs[-1].pk) if len(runs) == limit else None
        return Response({"next": next_url, "results": MoveRunSummarySerializer(runs, many=True).data})


class MoveRunApi(StaffOnlyApi):
    """GET /api/moves/{id}/: how far the workers are with a move of many images; DELETE stops it
    (staff only)."""

    @extend_schema(
        operation_id="move_run",
        summary="How far a move of many images is (staff only)",
        responses={200: MoveRunOutputSerializer, **_staff_refusals("move")},
    )
    def get(self, request, run_id: int):
        # Not the ids (up to 8 bytes an image), read again at every poll of a running move.
        return Response(MoveRunOutputSerializer(get_object_or_404(MoveRun.objects.select_related("to").defer("image_ids"), pk=run_id)).data)

    @extend_schema(
        operation_id="move_run_stop",
        summary="Stop a move of many images (staff only)",
        description=(
            _STOP_WAITS
            + "The images moved so far stay moved; the others stay where they are. Answers 200 with the move, now "
            "`stopped`, or 409 when it is not running, with the move as it ended."
        ),
        request=None,
        responses={
            200: MoveRunOutputSerializer,
            **_staff_refusals("move"),
            409: OpenApiResponse(MoveRunNotRunningSerializer, description="the move is not running: it ended, failed or was stopped"),
            503: _STOP_BUSY,
        },
    )
    def delete(self, request, run_id: int):
        try:
            stopped = move_run_stop(run_id=run_id)
        except StretchUnderway as exc:
            return _stop_busy(exc)
        if stopped is not None:
            return Response(MoveRunOutputSerializer(stopped).data)
        run = get_object_or_404(MoveRun.objects.select_related("to").defer("image_ids"), pk=run_id)
        return Response(
            {"error": f"this move is not running: {_MOVE_ENDED[run.status]}", "move": MoveRunOutputSerializer(run).data},
            status=status.HTTP_409_CONFLICT,
        )


class CopyOutputSerializer(ImageDetailOutputSerializer):
    similarity = serializers.FloatField(help_text=f"of the two pictures' copy signatures (cosine), at least {COPY_MIN_SIMILARITY}")
    identical = serializers.BooleanField(help_text="the same bytes (SHA-256): the same file, in another collection")


class ImageCopiesOutputSerializer(serializers.Serializer):
    query = serializers.IntegerField()
    count = serializers.IntegerField()
    results = CopyOutputSerializer(many=True)


class ImageCopiesApi(APIView):
    @extend_schema(
        operation_id="image_copies",
        summary="Copies of an image's picture in every collection: the same picture at another size, quality or format",
        responses={
            200: ImageCopiesOutputSerializer,
            404: OpenApiResponse(ErrorSerializer, description="no such image"),
            409: OpenApiResponse(ErrorSerializer, description="the image has no copy signature yet"),
        },
    )
    def get(self, request, image_id: int):
        image = get_object_or_404(Image.objects.select_related("collection"), pk=image_id)
        found = image_list_copies(image=image)
        if not found.has_signature:
            return Response(
                {"error": f"image {image_id} has no copy signature: {_why_no_signature(image)}"}, status=status.HTTP_409_CONFLICT
            )
        results = [copy_representation(copy, request) for copy in found.copies]
        return Response({"query": image.pk, "count": len(results), "results": results})


def copy_representation(copy, request) -> dict:
    return {**image_detail_representation(copy.image, request), "similarity": round(copy.similarity, 4), "identical": copy.identical}


class CopyGroupsInputSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=["collection", "all"], required=False, default="collection",
        help_text="collection: copies within the collection; all: copies in every collection",
    )
    after = serializers.IntegerField(
        required=False, min_value=0, default=0, help_text="check only images with a larger id (the `next` link sets it)"
    )


class CopyGroupOutputSerializer(serializers.Serializer):
    image = ImageDetailOutputSerializer(help_text="a picture of the collection that has copies")
    copies = CopyOutputSerializer(many=True, help_text="its copies, nearest first")


class CopyGroupsOutputSerializer(serializers.Serializer):
    checked = serializers.IntegerField(help_text="how many of the collection's images this page checked")
    next = serializers.URLField(allow_null=True, help_text="the next page, checking the images after these; null after the last")
    results = CopyGroupOutputSerializer(many=True)


class CopyRemovalInputSerializer(serializers.Serializer):
    keep = serializers.ChoiceField(
        choices=list(COPY_KEEP_RULES), required=False, default="largest",
        help_text="which picture of a set of copies stays: largest (the most pixels, then the oldest) or oldest (the first imported)",
    )


class CopyRemovalOutputSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(
        choices=CopyRemovalRun.Status.choices,
        help_text="running; done; failed (a stretch of images stopped its worker again and again: see `error`); or stopped "
        "(by a person: DELETE on copies/removal/)",
    )
    keep = serializers.ChoiceField(choices=list(COPY_KEEP_RULES))
    round = serializers.IntegerField(
        help_text="the round under way, or the last one: the first checks every image, each later one the images the round before left with a copy of a higher rank",
    )
    checked = serializers.IntegerField(help_text="images checked so far, over every round")
    deleted = serializers.IntegerField(help_text="copies deleted so far")
    unlike = serializers.IntegerField(
        help_text="images of the round under way (or the last) left although their copy signatures match a picture kept: "
        "they differ in a region; the copies listing shows them",
    )
    error = serializers.CharField(help_text="why the last try of a stretch failed, or why the removal stopped; empty if none")

    class Meta:
        model = CopyRemovalRun
        fields = ["id", "status", "keep", "round", "checked", "deleted", "unlike", "error", "started_at", "progress_at", "finished_at"]


class CopyRemovalUnderwaySerializer(serializers.Serializer):
    error = serializers.CharField()
    removal = CopyRemovalOutputSerializer()


class CollectionCopiesApi(StaffMayChange, APIView):
    @extend_schema(
        operation_id="collection_copies_remove",
        summary="Delete every copy within a collection, keeping one picture of each (staff only; done by the workers)",
        description=(
            "Answers 202 once the workers are asked: they check the collection's images in id order and delete each "
            "image that is a copy of one that stays (alike by signature, and region by region on their thumbnails), with "
            "its vectors and files, in rounds until one deletes nothing. "
            "Copies in other collections are left alone, and an image is deleted only while a copy of it stays. The answer "
            "is the removal as it starts; follow it at `copies/removal/`. One removal runs at a time per collection: "
            "while one runs, the answer is 409 with it."
        ),
        parameters=[CopyRemovalInputSerializer],
        responses={
            202: CopyRemovalOutputSerializer,
            400: OpenApiResponse(ErrorSerializer, description="an unknown `keep`"),
            **_staff_refusals("collection"),
            409: OpenApiResponse(CopyRemovalUnderwaySerializer, description="a removal of this collection's copies is under way"),
            503: OpenApiResponse(ErrorSerializer, description="the workers' queue cannot be reached; nothing was removed"),
        },
    )
    def delete(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        params = CopyRemovalInputSerializer(data=request.query_params)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        keep = params.validated_data["keep"]
        try:
            run = copy_removal_start(collection=collection, keep=keep)
        except CopyRemovalUnderway as exc:
            return Response(
                {"error": str(exc), "removal": CopyRemovalOutputSerializer(exc.run).data}, status=status.HTTP_409_CONFLICT,
            )
        except QueueUnavailable as exc:
            return Response({"error": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(CopyRemovalOutputSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="collection_copies",
        summary="A collection's pictures that are there more than once (or, with scope=all, anywhere), each with its copies",
        description=(
            f"Checks the collection's images in id order, up to {COPY_CHECKS_PER_PAGE:,} a page, and stops at the "
            f"{COPY_GROUPS_PER_PAGE}th picture with copies: follow `next` until it is null. A page may list no group "
            "and still have a `next`."
        ),
        parameters=[CopyGroupsInputSerializer],
        responses={200: CopyGroupsOutputSerializer, **COLLECTION_LISTING_ERRORS},
    )
    def get(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        params = CopyGroupsInputSerializer(data=request.query_params)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        found = collection_list_copy_groups(
            collection=collection, after=params.validated_data["after"], everywhere=params.validated_data["scope"] == "all",
            groups=COPY_GROUPS_PER_PAGE, checks=COPY_CHECKS_PER_PAGE,
        )
        results = [
            {"image": image_detail_representation(group.image, request), "copies": [copy_representation(copy, request) for copy in group.copies]}
            for group in found.groups
        ]
        next_url = None if found.done else next_page_url(request, after=found.checked_to)
        return Response({"checked": found.checked, "next": next_url, "results": results})


class CopyRemovalNotRunningSerializer(serializers.Serializer):
    error = serializers.CharField()
    removal = CopyRemovalOutputSerializer(allow_null=True, help_text="the last removal, as it ended; null if none ever started")


class CollectionCopyRemovalApi(StaffMayChange, APIView):
    @extend_schema(
        operation_id="collection_copy_removal",
        summary="The removal of a collection's copies running now, else the last one (started by DELETE on copies/)",
        responses={
            200: CopyRemovalOutputSerializer,
            404: OpenApiResponse(ErrorSerializer, description="no such collection, or no removal of its copies ever started"),
        },
    )
    def get(self, request, collection_id: int):
        removal = collection_copy_removal_latest(collection=get_object_or_404(Collection, pk=collection_id))
        if removal is None:
            return Response({"error": "no removal of this collection's copies has started"}, status=status.HTTP_404_NOT_FOUND)
        return Response(CopyRemovalOutputSerializer(removal).data)

    @extend_schema(
        operation_id="collection_copy_removal_stop",
        summary="Stop the removal of a collection's copies running now (staff only)",
        description=(
            _STOP_WAITS
            + "The copies deleted so far stay deleted; a new removal starts from what is left. Answers 200 with the "
            "removal, now `stopped`, or 409 when none runs, with the last one as it ended."
        ),
        request=None,
        responses={
            200: CopyRemovalOutputSerializer,
            **_staff_refusals("collection"),
            409: OpenApiResponse(CopyRemovalNotRunningSerializer, description="no removal of this collection's copies is running"),
            503: _STOP_BUSY,
        },
    )
    def delete(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        try:
            removal = copy_removal_stop(collection=collection)
        except StretchUnderway as exc:
            return _stop_busy(exc)
        if removal is None:
            last = collection_copy_removal_latest(collection=collection)
            return Response(
                {
                    "error": "no removal of this collection's copies is running",
                    "removal": None if last is None else CopyRemovalOutputSerializer(last).data,
                },
                status=status.HTTP_409_CONFLICT,
            )
        return Response(CopyRemovalOutputSerializer(removal).data)


def _why_no_signature(image: Image) -> str:
    if image.status == Image.Status.PENDING:
        return "it is still being indexed"
    if image.status == Image.Status.FAILED:
        return "its file could not be indexed"
    if image.thumbnail:
        return "it was indexed before signatures were recorded (manage.py rebuild_thumbnails gives it one), or its picture is one flat grey"
    return "it has no thumbnail"


IMAGE_PAGE_MAX = 500


class ImageListInputSerializer(ImageFilterInputSerializer):
    after = serializers.IntegerField(required=False, min_value=0, default=0, help_text="only images with a larger id (the `next` link sets it)")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=IMAGE_PAGE_MAX, default=100)


class ImageListOutputSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="the next page, while this one is full")
    results = ImageDetailOutputSerializer(many=True)


class CollectionImageListApi(APIView):
    @extend_schema(
        operation_id="collection_image_list",
        summary="A collection's images in id order, by status or label: e.g. the failed ones with their reasons",
        parameters=[ImageListInputSerializer],
        responses={200: ImageListOutputSerializer, **COLLECTION_LISTING_ERRORS},
    )
    def get(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        params = ImageListInputSerializer(data=request.query_params)
        if not params.is_valid():
            return invalid_parameters(params.errors)
        limit = params.validated_data["limit"]
        images = image_list(
            collection=collection,
            status=params.validated_data.get("status", ""),
            label=params.validated_data.get("label", ""),
            after=params.validated_data["after"],
            limit=limit,
        )
        next_url = next_page_url(request, after=images[-1].pk) if len(images) == limit else None
        return Response({"next": next_url, "results": [image_detail_representation(image, request) for image in images]})

from django.conf import settings
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from gallery.models import Collection
from gallery.selectors import collection_list_with_stats, collection_stats
from gallery.services import ImportReport, images_create, uploads_to_incoming


class CollectionRefField(serializers.CharField):
    """A collection given by id or by name."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        lookup = {"pk": int(value)} if value.isdigit() else {"name": value}
        collection = Collection.objects.filter(**lookup).first()
        if collection is None:
            raise serializers.ValidationError(f"no collection {value!r}")
        return collection


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
    """GET /api/collections/{id}/ : counts by status and the indexing rate over the last minute."""

    def get(self, request, collection_id: int):
        collection = get_object_or_404(Collection, pk=collection_id)
        stats = collection_stats(collection=collection)
        return Response(
            {
                **_collection_representation(collection, stats),
                "indexed_per_second": stats["indexed_per_second"],
            }
        )


class ImageUploadApi(APIView):
    """POST /api/images/ (multipart: files (one or many; .zip archives are expanded), collection,
    label, labels_from_dirs). Answers 202 with one result per file: stored (pending, then indexed
    by the workers), failed with a reason, duplicate of an existing image, or skipped."""

    class InputSerializer(serializers.Serializer):
        collection = CollectionRefField()
        label = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
        labels_from_dirs = serializers.BooleanField(required=False, default=False)

    def post(self, request):
        params = self.InputSerializer(data=request.data)
        files = request.FILES.getlist("files")
        errors = dict(params.errors) if not params.is_valid() else {}
        if not files:
            errors["files"] = ["upload one or more files in the multipart field 'files'"]
        if errors:
            return Response({"error": "invalid parameters", "errors": errors}, status=status.HTTP_400_BAD_REQUEST)
        collection = params.validated_data["collection"]
        report = ImportReport()
        incoming = uploads_to_incoming(
            files,
            label=params.validated_data["label"],
            labels_from_dirs=params.validated_data["labels_from_dirs"],
            report=report,
        )
        report.merge(images_create(collection=collection, files=incoming))
        results = report.results + [{"name": name, "status": "skipped", "error": reason} for name, reason in report.skipped]
        return Response(
            {
                "collection": {"id": collection.pk, "name": collection.name},
                "stored": len(report.created) - len(report.failed),
                "failed": len(report.failed),
                "duplicates": len(report.duplicates),
                "skipped": len(report.skipped),
                "results": results,
            },
            status=status.HTTP_202_ACCEPTED,
        )

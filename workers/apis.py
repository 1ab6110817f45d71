from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from workers.selectors import service_health


class HealthPartSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    ms = serializers.FloatField(help_text="how long the check took")
    error = serializers.CharField(required=False, help_text="why it failed")


class ActiveEncoderSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class DatabaseHealthSerializer(HealthPartSerializer):
    active_encoder = ActiveEncoderSerializer(required=False, allow_null=True, help_text="null until an encoder is activated")


class WorkersHealthSerializer(HealthPartSerializer):
    count = serializers.IntegerField(required=False)
    names = serializers.ListField(child=serializers.CharField(), required=False)


class HealthSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="every part checked answers")
    database = DatabaseHealthSerializer()
    broker = HealthPartSerializer()
    workers = WorkersHealthSerializer(required=False, help_text="with ?workers=1 only")


class HealthApi(APIView):
    """For load balancers and container health checks: no authentication, nothing written."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="health",
        parameters=[OpenApiParameter("workers", OpenApiTypes.BOOL, description="also ping the Celery workers (up to 1 s more)")],
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, description="a part does not answer; its `error` says why"),
        },
    )
    def get(self, request):
        ping_workers = request.query_params.get("workers", "").lower() in ("1", "true", "yes")
        health = service_health(ping_workers=ping_workers)
        return Response(health, status=status.HTTP_200_OK if health["ok"] else status.HTTP_503_SERVICE_UNAVAILABLE)

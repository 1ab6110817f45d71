from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gallery.apis import (
    CollectionCopiesApi, CollectionCopyRemovalApi, CollectionDetailApi, CollectionExportApi, CollectionImageListApi,
    CollectionListApi, ImageCopiesApi, ImageDetailApi, ImagesExportApi, ImagesMoveApi, ImageUploadApi, MoveRunApi,
    MoveRunListApi,
)
from search.apis import ImageSimilarApi, SearchApi
from workers.apis import HealthApi

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # a page for browsers: its HTML renderer has no template for OPTIONS' metadata (a 500), so 405
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema", http_method_names=["get", "head"]), name="api-docs"),
    path("collections/", CollectionListApi.as_view(), name="api-collection-list"),
    path("collections/<int:collection_id>/", CollectionDetailApi.as_view(), name="api-collection-detail"),
    path("collections/<int:collection_id>/copies/", CollectionCopiesApi.as_view(), name="api-collection-copies"),
    path("collections/<int:collection_id>/copies/removal/", CollectionCopyRemovalApi.as_view(), name="api-collection-copy-removal"),
    path("collections/<int:collection_id>/export/", CollectionExportApi.as_view(), name="api-collection-export"),
    path("collections/<int:collection_id>/images/", CollectionImageListApi.as_view(), name="api-collection-images"),
    path("images/", ImageUploadApi.as_view(), name="api-image-upload"),
    path("images/move/", ImagesMoveApi.as_view(), name="api-images-move"),
    path("images/export/", ImagesExportApi.as_view(), name="api-images-export"),
    path("moves/", MoveRunListApi.as_view(), name="api-move-run-list"),
    path("moves/<int:run_id>/", MoveRunApi.as_view(), name="api-move-run"),
    path("images/<int:image_id>/", ImageDetailApi.as_view(), name="api-image-detail"),
    path("images/<int:image_id>/copies/", ImageCopiesApi.as_view(), name="api-image-copies"),
    path("images/<int:image_id>/similar/", ImageSimilarApi.as_view(), name="api-image-similar"),
    path("search/", SearchApi.as_view(), name="api-search"),
    path("health/", HealthApi.as_view(), name="api-health"),
]

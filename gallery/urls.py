from django.urls import path

from gallery import views

app_name = "gallery"
urlpatterns = [
    path("", views.collection_list, name="collection-list"),
    path("collections/<int:collection_id>/", views.collection_detail, name="collection-detail"),
    path("collections/<int:collection_id>/copies/", views.collection_copies, name="collection-copies"),
    path("images/<int:image_id>/", views.image_detail, name="image-detail"),
]

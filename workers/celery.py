import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")

app = Celery("cbir")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

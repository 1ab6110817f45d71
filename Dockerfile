# One image for web and workers. torch comes from PyPI with CUDA; workers use the GPU when the
# container is given one (see compose.yaml), and the CPU otherwise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# collectstatic only reads settings; these URLs are parsed, never connected to.
RUN DATABASE_URL=postgres://build@localhost/build REDIS_URL=redis://localhost:6379/0 DJANGO_SECRET_KEY=build \
    CBIR_STATIC_ROOT=/app/staticfiles python manage.py collectstatic --noinput

RUN useradd --create-home --uid 1000 cbir && mkdir -p /data && chown cbir /data
USER cbir
EXPOSE 8000
# Threaded workers: a sync worker's --timeout bounds a whole request, so an upload slower than it
# (a large zip to the admin, 50 MB on a slow link) was killed mid-way with a 500. A gthread worker
# answers the arbiter from its own loop, so the timeout only catches a process that hangs.
CMD ["gunicorn", "cbir_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-class", "gthread", "--threads", "4", "--timeout", "60"]

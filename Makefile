# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: run test stop venv clean-test bench-search

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

## Start PostgreSQL, Redis, a Celery worker and the web app (http://127.0.0.1:8000); Ctrl-C stops all.
run: venv
	$(PY) -m cbir_site.devstack

## The whole test suite, against a real embedded PostgreSQL+pgvector, Redis and a Celery worker.
test: venv
	CBIR_VAR_DIR=$(CURDIR)/var/test $(PY) -m pytest $(PYTEST_ARGS)

## Stop the embedded database and Redis left running by manage.py commands.
stop: venv
	$(PY) -c "from cbir_site import embedded; embedded.stop_all()"

clean-test:
	CBIR_VAR_DIR=$(CURDIR)/var/test $(PY) -c "from cbir_site import embedded; embedded.stop_all()" || true
	rm -rf var/test

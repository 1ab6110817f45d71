# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: run test stop venv clean-test bench-search

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# A download from the package index can be cut off halfway: each step is tried up to 4 times.
	for step in "--upgrade pip" "--resume-retries 20 -r requirements.txt"; do \
	  for attempt in 1 2 3 4; do \
	    $(PY) -m pip install --quiet --retries 10 $$step && break; \
	    [ $$attempt -lt 4 ] || exit 1; \
	    echo "pip install $$step failed (attempt $$attempt of 4): trying again in $$((attempt * 20)) s" >&2; \
	    sleep $$((attempt * 20)); \
	  done; \
	done
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

# `make demo` and `make test` each create .venv in the checkout if missing, install, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=
# pytest-xdist processes for `make test`, one torch thread each (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: demo test install browser clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m skipganomaly demo $(DEMO_ARGS)

# The report's browser test needs Debian's chromium; install it when missing and possible (root + apt),
# otherwise that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "chromium could not be installed; the browser test will be skipped"

test: $(VENV)/.installed browser
	$(PY) -m pytest -q -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs .pytest_cache

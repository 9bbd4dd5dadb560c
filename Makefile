# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install check-python clean-data bench

run: install
	@$(PY) -m workers dev

test: install
	@$(PY) -m tests.run $(ARGS)

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "make: could not create $(VENV) (is the python3-venv package installed?)"; exit 1; }
	@echo "make: installing dependencies into $(VENV) ..."
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt || { echo "make: pip install failed (see above)"; exit 1; }
	@touch $(STAMP)

check-python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11 or newer"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { echo "make: Python 3.11+ is required, found $$($(PYTHON) --version)"; exit 1; }

bench: install
	@for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

clean-data:
	rm -rf var

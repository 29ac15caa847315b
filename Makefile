# The two commands the README promises: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: quickstart test test-fast lint typecheck venv system-deps bench docs clean

## Parallel test workers: each test module runs whole on one worker, the long ones in two
## lanes, longest first (tests/support/scheduling.py); see the README for what was measured.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel
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

## The whole test suite, installing what it needs (PYTEST_ARGS: more pytest arguments;
## PYTEST_ARGS=-n0 runs it in one process).
test: system-deps venv
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

## The fast subset: unit tests and the driver contract suite on all four drivers.
test-fast: venv
	$(PY) -m pytest $(XDIST) -m "not integration or contract" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check pacsinfra tests bench tools
	$(VENV)/bin/mypy pacsinfra
	$(PY) tools/importgraph.py --modules >/dev/null  # no import cycles, module by module

## The field references in docs/reference/, generated from the models
## (`$(PY) tools/gendocs.py --check` only verifies them; so does `make test`).
docs: venv
	$(PY) tools/gendocs.py

## Every benchmark, each printing its table; the peers they compare with (Orthanc, DCMTK,
## Chromium from system-deps; Ansible's community.vmware and check-jsonschema from the
## bench extra) are installed first, and a missing one stops the run instead of a row.
$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

bench: system-deps $(VENV)/.bench
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build *.egg-info

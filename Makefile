# git_ray: `make run` (quickstart sweep) and `make test` (whole suite) set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
RESULTS := results/quickstart

.PHONY: run test test-all bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip

# Two stamps: running needs only the package's own dependencies; the tests add their extras
# (pytest, moto, boto3, duckdb). Either is redone when pyproject.toml changes.
$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -qq --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(TEST_STAMP) $(RUN_STAMP)

install: $(RUN_STAMP)

run: $(RUN_STAMP)
	@$(VENV)/bin/git-ray sweep sweeps/quickstart.yaml
	@$(VENV)/bin/git-ray analyze $(RESULTS)
	@echo "results (Parquet): $(RESULTS)/  status: $(VENV)/bin/git-ray status $(RESULTS)"
	@echo "figures and report: $(RESULTS)/analysis/ (open $(RESULTS)/analysis/report.html)"

test: $(TEST_STAMP)
	$(PY) -m pytest -q

test-all: $(TEST_STAMP)
	$(PY) -m pytest -q -m ""

bench: $(TEST_STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf results build *.egg-info

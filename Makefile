# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install, reconstruct the built-in probe set (real weights when present)
#   make test   create .venv, install, run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= demo_out
MODEL ?=
PYTEST_ARGS ?=

.PHONY: install demo test test-gpu lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torchaudio's compiled ops need the matching torch build: install the pair together.
	$(PY) -m pip install --quiet "torch==2.11.*" "torchaudio==2.11.*"
	$(PY) -m pip install --quiet -e ".[metrics,test,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vaefix demo --out $(OUT) $(if $(MODEL),--model $(MODEL))

# pytest's exit code is make's: 1 (failures) and 5 (no tests collected) both fail the target.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -m cuda $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo_out outputs .pytest_cache

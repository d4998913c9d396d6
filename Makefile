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
MIN_FREE_GB ?= 9

.PHONY: install lock demo test test-gpu lint bench clean

# Every package at the exact version in constraints.txt, the verified torch/torchaudio pair included
# (torchaudio's compiled ops load only on the torch they were built for). Ranges stay in pyproject.toml.
# --no-cache-dir: pip's cache would hold a second copy of the ~3 GB of torch/CUDA wheels during the
# install; the free-space check turns "No space left on device" halfway through into one line first.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
	sys.exit(f'make install: needs about $(MIN_FREE_GB) GB of free disk for .venv, {free:.1f} GB free here') \
	if free < $(MIN_FREE_GB) else None"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir -c constraints.txt -e ".[metrics,test,dev]"
	touch $(STAMP)

install: $(STAMP)

# Re-resolve constraints.txt from pyproject.toml's ranges with uv (universal: one file for every
# platform and Python >= 3.10). Then run `make test` from a clean clone before committing it.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra metrics --extra test --extra dev \
		--python-version 3.10 --universal --no-header --annotation-style line -o constraints.txt

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

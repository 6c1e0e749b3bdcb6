# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: torch==2.13.0 (this project's machines serve the CPU build from a local wheel).
# Elsewhere pick your build, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for CPU-only,
# or the default PyPI build for CUDA GPUs.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow lint lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

lock: setup
	{ head -n 2 constraints.txt; $(PY) -m pip freeze --exclude-editable \
	  | grep -v -i -E "^(torch|nvidia|triton|pip|setuptools)[=_ -]"; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: setup
	$(VENV)/bin/xqg-ray demo

test: setup
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(VENV)/bin/pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf runs .pytest_cache

# Two commands for a fresh machine: `make demo` and `make test`. Each creates what it needs on
# first use: a virtual environment in .venv, torch, the test tools, and this package built with its
# compiled extension (pip install -e . --no-build-isolation, against the torch in .venv).
#
# TORCH_SPEC picks the torch to install. The default, torch==2.13.0, is a CPU build on machines
# that keep it on local disk (this project's CI); on a CUDA machine use e.g. `make test TORCH_SPEC=torch`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.8.0
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS ?=

RUNTIME_STAMP := $(VENV)/.stmodels-runtime
DEPS_STAMP := $(VENV)/.stmodels-deps
BUILD_STAMP := $(VENV)/.stmodels-build
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)

.PHONY: demo kernel-demo test docs bench build clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime and build requirements, then per target what it needs on top: `make demo` the [viz]
# extra (its loss plot), `make test` the test/docs tools and every extra (requirements-dev.txt).
$(RUNTIME_STAMP): requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

DEMO_STAMP := $(VENV)/.stmodels-demo
$(DEMO_STAMP): requirements-demo.txt $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-demo.txt
	touch $@

$(DEPS_STAMP): requirements-dev.txt $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(BUILD_STAMP): $(RUNTIME_STAMP) setup.py pyproject.toml $(CSRC)
	MAX_JOBS=$(MAX_JOBS) $(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILD_STAMP)

test: $(BUILD_STAMP) $(DEPS_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The main job: DIFFUMA vs its Mamba-only ablation vs copy-last-frame on synthetic dicing-lane video
# (about 10 minutes on a 2-core CPU; outputs in outputs/diffuma_chdl; rerunning resumes).
demo: $(BUILD_STAMP) $(DEMO_STAMP)
	$(BIN)/python examples/diffuma_chdl.py --out outputs/diffuma_chdl

# A quick side-by-side timing of the kernels against their references and peers.
kernel-demo: $(BUILD_STAMP) $(DEPS_STAMP)
	$(BIN)/python -m stmodels.info
	$(BIN)/python benchmarks/demo.py

docs: $(BUILD_STAMP) $(DEPS_STAMP)
	$(BIN)/python -m sphinx -n -W --keep-going -q -b html docs docs/_build/html

bench: $(BUILD_STAMP) $(DEPS_STAMP)
	$(BIN)/python -m pytest benchmarks -q --benchmark-only --benchmark-columns=median,iqr,rounds --benchmark-sort=name

clean:
	rm -rf build docs/_build stmodels/_C*.so stmodels/_C_build_info.json *.egg-info $(BUILD_STAMP)

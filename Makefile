# Set-up is part of every target: a fresh machine needs only Python 3.10+ and make.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch must be installed first: an unpinned torch pulls gigabytes of CUDA wheels.
TORCH ?= torch==2.13.0
# The transformers release vLLM 0.33 pins (>=5.16.1,<5.21): the second test leg runs the suite on it.
TF_PINNED ?= transformers==5.20.2

.PHONY: setup run test test-latest test-pinned clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/harness sweep --methods all --workers 2
	$(VENV)/bin/harness report --experiment default

# Both legs: the latest transformers, then the one vLLM 0.33 pins (installed over it in .tf-pinned, first on the path).
test: test-latest test-pinned

test-latest: setup
	$(VENV)/bin/pytest -q

test-pinned: setup
	$(PY) -m pip install -q --no-deps --upgrade --target .tf-pinned "$(TF_PINNED)"
	PYTHONPATH=$(CURDIR)/.tf-pinned HARNESS_EXPECT_TRANSFORMERS=$(subst transformers==,,$(TF_PINNED)) $(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .tf-pinned

# Set-up is part of every target: a fresh machine needs only Python 3.10+ and make.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch must be installed first: an unpinned torch pulls gigabytes of CUDA wheels.
TORCH ?= torch==2.13.0

.PHONY: setup run test clean
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

test: setup
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV)

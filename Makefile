# make setup   one virtual environment (.venv): requirements.txt, the workshop package, and
#              DeepSpeed's CPU ops built once (on a machine without a GPU: the demo and the tests)
# make demo    all four stages on CPU with a tiny BLOOM (no GPU, no download), then the tables
# make test    the test suite (CPU, offline; the SLURM tests need root and Debian's slurm packages)
PYTHON ?= python3
VENV := .venv
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# every long step says every 10 s that it is still running (pip installs and op builds are quiet)
SAY := 2>&1 | bash tools/heartbeat.sh

setup: $(VENV)/installed $(VENV)/ops-built
$(VENV)/installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip $(SAY)
	$(VENV)/bin/pip install --progress-bar off -r requirements.txt $(SAY)
	$(VENV)/bin/pip install --quiet --no-build-isolation --no-deps -e . $(SAY)
	touch $@
$(VENV)/ops-built: $(VENV)/installed workshop/build_ops.py
	$(VENV)/bin/python -m workshop.build_ops $(SAY)
	touch $@

demo: setup
	$(VENV)/bin/python tools/make_tiny.py tiny $(SAY)
	bash tools/demo.sh tiny

test: setup
	$(VENV)/bin/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=15 tests

.PHONY: setup demo test

# make setup   one virtual environment (.venv): requirements.txt, the workshop package, and
#              DeepSpeed's CPU ops built once (on a machine without a GPU: the demo and the tests)
# make demo    all four stages on CPU with a tiny BLOOM (no GPU, no download), then the tables
# make test    the test suite (CPU, offline; the SLURM tests need root and Debian's slurm packages)
PYTHON ?= python3
VENV := .venv

setup: $(VENV)/installed
$(VENV)/installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --progress-bar off -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-build-isolation --no-deps -e .
	$(VENV)/bin/python -m workshop.build_ops
	touch $@

demo: setup
	$(VENV)/bin/python tools/make_tiny.py tiny
	bash tools/demo.sh tiny

test: setup
	$(VENV)/bin/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=15 tests

.PHONY: setup demo test
